"""Visual graders: IoU (grounding, detection), format, classification, with hand-checked values and edge cases."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

import grader
from grader import boxes as B
from grader.images import item_image_size, size_from_data_url, smart_resize
from grader.visual import classification_reward, format_reward, normalize_label
from tests.grader.visual_rft_port import accuracy_reward_confidence, accuracy_reward_iou, make_detection_samples


def png_url(w: int, h: int, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def row(w: int, h: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_url(w, h)}}, {"type": "text", "text": "find it"}]}], **extra}


def grade1(spec: dict, sample, item) -> grader.SampleResult:
    with grader.compile(spec) as g:
        return g.grade([sample], [item]).results[0]


# ----------------------------------------------------------------------------------------- maths


def test_iou_hand_values():
    assert B.iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)  # inter 1, union 4 + 4 - 1
    assert B.iou([0, 0, 10, 10], [0, 0, 10, 5]) == pytest.approx(0.5)
    assert B.iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # touching edges
    assert B.iou([0, 0, 1, 1], [5, 5, 6, 6]) == 0.0
    assert B.giou([0, 0, 1, 1], [2, 0, 3, 1]) == pytest.approx(-1 / 3)  # hull 3, union 2
    assert B.giou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0


def test_degenerate_boxes_never_nan():
    m = B.iou_matrix(
        np.array([[0, 0, 0, 10], [5, 5, 5, 5.0], [0, 0, 10, 10]]), np.array([[0, 0, 0, 10], [0, 0, 10, 10.0]])
    )
    assert np.isfinite(m).all()
    assert m[0, 0] == 0.0 and m[1, 1] == 0.0 and m[2, 1] == 1.0
    g = B.iou_matrix(np.array([[3, 3, 3, 3.0]]), np.array([[3, 3, 3, 3.0]]), giou=True)
    assert np.isfinite(g).all()
    # reversed corners are put in order
    assert B.to_xyxy(np.array([[10, 10, 0, 0.0]]), "xyxy").tolist() == [[0, 0, 10, 10]]


def test_box_formats():
    assert B.to_xyxy(np.array([[1, 2, 3, 4.0]]), "xywh").tolist() == [[1, 2, 4, 6]]
    assert B.to_xyxy(np.array([[5, 5, 4, 2.0]]), "cxcywh").tolist() == [[3, 4, 7, 6]]


def test_detection_hand_values():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    # one perfect match + one false positive (conf .3) -> iou (1 + 0) / max(2, 2) = .5 ; conf (.9 + (1 - .3)) / 2
    assert B.detection_reward(gt, [([0, 0, 10, 10], 0.9), ([50, 50, 60, 60], 0.3)]) == pytest.approx((0.5, 0.8))
    # IoU must exceed the threshold: [0,0,10,5] has IoU .5 exactly -> no match
    assert B.detection_reward([[0, 0, 10, 10]], [([0, 0, 10, 5], 1.0)]) == (0.0, 0.0)
    assert B.detection_reward([[0, 0, 10, 10]], [([0, 0, 10, 5], 1.0)], iou_threshold=0.4) == (0.5, 1.0)
    # greedy by confidence: the confident box takes the gt even if the other one fits better
    iou_t, _ = B.detection_reward([[0, 0, 10, 10]], [([0, 0, 10, 10], 0.2), ([0, 0, 10, 8], 0.9)])
    assert iou_t == pytest.approx(0.8 / 2)
    # more predictions than gt: divided by #pred; duplicates count (dedupe happens in parsing)
    assert B.detection_reward([[0, 0, 10, 10]], [([0, 0, 10, 10], 1.0)] * 3)[0] == pytest.approx(1 / 3)
    # no gt, no prediction -> full marks; no gt but predictions -> 0 IoU, confidence rewards low confidence
    assert B.detection_reward([], []) == (1.0, 1.0)
    assert B.detection_reward([], [([0, 0, 1, 1], 0.25)]) == (0.0, 0.75)
    assert B.detection_reward([[0, 0, 1, 1]], []) == (0.0, 0.0)


def test_matches_visual_rft_port_exactly():
    contents, sols = make_detection_samples(300, boxes=10, seed=3)
    items = [{"solution": s} for s in sols]
    spec = {"type": "multi", "name": "det", "calculate_output": "iou + conf", "graders": {
        "iou": {"type": "iou", "name": "iou", "reference": "{{item.solution}}"},
        "conf": {"type": "iou", "name": "conf", "reference": "{{item.solution}}", "confidence_weight": 1.0}}}
    with grader.compile(spec) as g:
        res = g.grade(contents, items)
    assert res.sub_rewards["iou"] == pytest.approx(accuracy_reward_iou(contents, sols), abs=1e-12)
    assert res.sub_rewards["conf"] == pytest.approx(accuracy_reward_confidence(contents, sols), abs=1e-12)
    assert not res.errors


# ----------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text,boxes", [
    ("[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}]", [([1, 2, 3, 4], 0.5)]),
    ('[{"Confidence": 0.5, "Position": [1, 2, 3, 4]}]', [([1, 2, 3, 4], 0.5)]),
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]', [([10, 20, 30, 40], None)]),
    ("[1, 2, 3, 4]", [([1, 2, 3, 4], None)]),
    ("[1.5,2.25, 3e2, 4]", [([1.5, 2.25, 300, 4], None)]),
    ("(10,20),(30,40)", [([10, 20, 30, 40], None)]),
    ("<|box_start|>(1,2),(3,4)<|box_end|> and [9, 9, 9, 9]", [([1, 2, 3, 4], None)]),
    ("[{'Position': [1, 2, 3, 4], 'Confidence': 0.9}, {'Position': [5, 6, 7", [([1, 2, 3, 4], 0.9)]),  # truncated
    ("[{'Position': [-5, 2, 3, 4], 'Confidence': 1}]", [([-5, 2, 3, 4], 1.0)]),
])
def test_parse_boxes(text, boxes):
    assert B.parse_boxes(text) == [([float(v) for v in b], c) for b, c in boxes]


def test_vectorised_parser_agrees_with_the_general_one():
    texts = [
        "[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}, {'Position': [10, 20, 30, 40], 'Confidence': 1}]",
        '[ { "Position" : [ 1.25 , 2 , 3 , 4 ] , "Confidence" : 0.75 } ]',
        "[{'Confidence': 0.3, 'Position': [7, 8, 9, 10]}]",
        "[]",
        "No Objects",
        "[{'Position': [1, 2, 3, 4]}]",
        "[{'Position': [1, 2, 3, 4], 'Confidence': 0.5, 'Label': 'x'}]",
        "[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}, {'Position': [5, 6",
        "é [1, 2, 3, 4]",
        "",
        "[{'Position': [1.2.3, 2, 3, 4], 'Confidence': 0.5}]",
        "[{'Position': [0.1, 0.2, 0.30000000000000004, 1e-3], 'Confidence': 0.5}]",
    ]
    vals, counts, ok = B.parse_visual_rft_batch(texts)
    assert ok.tolist() == [True, True, True, True, False, False, False, False, False, False, False, False]
    start = 0
    for t, k, good in zip(texts, counts, ok):
        if good:
            got = vals[start : start + k].tolist()
            start += k
            want = [b + [c] for b, c in (B.parse_boxes(t) or [])]
            assert got == want  # bit-exact, like float(str)


@pytest.mark.parametrize("accel", [False, True])
def test_fast_parsers_reject_the_numbers_json_rejects(accel):
    """`10.` and `.5` are not numbers to JSON or to `parse_boxes`' patterns; the batch parsers (numpy and
    compiled) must not read them either, or a completion would score differently in a small batch (parsed
    by `parse_boxes`) and a large one."""
    texts = [
        "[{'Position': [10., 20, 30, 40], 'Confidence': 0.5}]",
        "[{'Position': [10, 20, 30, 40], 'Confidence': .5}]",
        "[{'Position': [10, 20, 30, 40.], 'Confidence': 0.5}]",
        "[{'Position': [10, 20.5, 30, 40], 'Confidence': 1.}]",
    ] * 40
    _, _, ok = B.parse_visual_rft_batch(texts, accel=accel)
    assert not ok.any()  # so they go to parse_boxes, whatever the batch size
    good = "[{'Position': [10, 20.5, 30, 40], 'Confidence': 1.0}]"
    assert B.parse_visual_rft_batch([good] * 160, accel=accel)[2].all()


def test_a_completion_scores_the_same_alone_and_in_a_large_batch():
    item = {"boxes": [[10, 20, 30, 40]]}
    texts = ["<answer>[{'Position': [10., 20, 30, 40], 'Confidence': 0.9}]</answer>",
             "<answer>[{'Position': [10, 20, 30, 40], 'Confidence': .9}]</answer>",
             "<answer>[{'Position': [10, 20, 30, 40], 'Confidence': 0.9}]</answer>"]
    with grader.compile(DET) as g:
        alone = [g.grade([t], [item]).rewards[0] for t in texts]
        together = g.grade(texts * 100, [item] * 300).rewards
    assert together == alone * 100
    assert alone[0] == 0.0  # `10.` is no number (json.loads in Visual-RFT's reward refuses it too)
    assert alone[2] == 1.0


def test_reference_box_shapes():
    for value in ([[1, 2, 3, 4]], [1, 2, 3, 4], {"bbox": [1, 2, 3, 4]}, [{"Position": [1, 2, 3, 4], "Confidence": 1}],
                  "<answer>[{'Position': [1, 2, 3, 4], 'Confidence': 1}]</answer>", "[[1, 2, 3, 4]]"):
        assert B.boxes_from_value(value)[0][0] == [1.0, 2.0, 3.0, 4.0], value
    assert B.boxes_from_value([]) == [] and B.boxes_from_value("[]") == []
    assert B.boxes_from_value([[1, 2, 3]]) is None


# ----------------------------------------------------------------------------------------- iou grader


DET = {"type": "iou", "name": "det"}


def test_detection_grader_no_objects_both_ways():
    empty = {"boxes": []}
    assert grade1(DET, "<answer>No Objects</answer>", empty).reward == 1.0
    assert grade1(DET, "<answer>no objects</answer>", empty).reward == 1.0
    assert grade1(DET, "<answer>[]</answer>", empty).reward == 1.0
    assert grade1(DET, "<answer>[{'Position': [1, 1, 5, 5], 'Confidence': 0.9}]</answer>", empty).reward == 0.0
    r = grade1(DET, "<answer>No Objects</answer>", {"boxes": [[0, 0, 10, 10]]})
    assert r.reward == 0.0 and not r.errors["sample_parse_error"]


def test_detection_grader_parse_error_and_empty_answer():
    r = grade1(DET, "<think>hmm</think><answer></answer>", {"boxes": [[0, 0, 10, 10]]})
    assert r.reward == 0.0 and r.errors["sample_parse_error"]
    r = grade1(DET, "I think there is a cat", {"boxes": []})
    assert r.reward == 0.0 and r.errors["sample_parse_error"]
    r = grade1(DET, "<answer>[1,2,3,4]</answer>", {"no_boxes_here": 1})
    assert r.reward == 0.0 and r.errors["invalid_variable_error"]


def test_detection_grader_dedupes_and_caps():
    twice = ("<answer>[{'Position': [0, 0, 10, 10], 'Confidence': 1}, "
             "{'Position': [0, 0, 10, 10], 'Confidence': 0.5}]</answer>")
    assert grade1(DET, twice, {"boxes": [[0, 0, 10, 10]]}).reward == 1.0
    spam = "<answer>" + str([{"Position": [i, i, i + 10, i + 10], "Confidence": 0.5} for i in range(300)]) + "</answer>"
    r = grade1({**DET, "max_boxes": 5}, spam, {"boxes": [[0, 0, 10, 10]]})
    assert r.reward == pytest.approx(1 / 5)


def test_grounding_dense_iou_and_giou():
    item = {"boxes": [[0, 0, 10, 10]]}
    g = {"type": "iou", "name": "g", "mode": "grounding"}
    assert grade1(g, "<answer>(0,0),(10,5)</answer>", item).reward == pytest.approx(0.5)
    assert grade1(g, "<answer>[0, 0, 10, 5] and [0, 0, 10, 10]</answer>", item).reward == pytest.approx(
        0.5
    )  # first box
    assert grade1({**g, "iou_type": "giou"}, "<answer>(20,0),(30,10)</answer>", item).reward == pytest.approx(
        (-1 / 3 + 1) / 2
    )
    r = grade1(g, "<answer>nowhere</answer>", item)
    assert r.reward == 0.0 and r.errors["sample_parse_error"]


def test_qwen2_vl_norm1000_vs_pixel_reference():
    # a 200x100 image; the object is pixels (50, 25)-(150, 75): 0-1000 coordinates (250, 250)-(750, 750)
    item = row(200, 100, boxes=[[50, 25, 150, 75]])
    spec = {**DET, "input_format": {"coordinates": "norm1000"}, "reference_format": {"coordinates": "pixel"}}
    assert grade1(
        spec, "<answer>[{'Position': [250, 250, 750, 750], 'Confidence': 1}]</answer>", item
    ).reward == pytest.approx(1.0)
    # the classic bug: reading 0-1000 outputs as pixels scores ~0
    wrong = {**DET, "input_format": {"coordinates": "pixel"}, "reference_format": {"coordinates": "pixel"}}
    assert grade1(wrong, "<answer>[{'Position': [250, 250, 750, 750], 'Confidence': 1}]</answer>", item).reward == 0.0


def test_qwen25_vl_absolute_pixels_of_the_resized_image():
    # 640x480 image -> Qwen2.5-VL sees 644x476 (smart_resize); it answers in those pixels
    assert smart_resize(480, 640) == (476, 644)
    item = row(640, 480, boxes=[[64, 48, 320, 240]])  # original pixels
    sx, sy = 644 / 640, 476 / 480
    pred = [round(64 * sx, 3), round(48 * sy, 3), round(320 * sx, 3), round(240 * sy, 3)]
    g = {"type": "iou", "name": "g", "mode": "grounding", "input_format": {"coordinates": "pixel", "resize": {}},
         "reference_format": {"coordinates": "pixel"}}
    assert grade1(g, f"<answer>{pred}</answer>", item).reward == pytest.approx(1.0, abs=1e-4)
    # with a max_pixels cap the resized image is smaller
    capped = {**g, "input_format": {"coordinates": "pixel", "resize": {"max_pixels": 200 * 28 * 28}}}
    h, w = smart_resize(480, 640, max_pixels=200 * 28 * 28)
    pred = [64 * w / 640, 48 * h / 480, 320 * w / 640, 240 * h / 480]
    assert grade1(capped, f"<answer>{pred}</answer>", item).reward == pytest.approx(1.0, abs=1e-6)
    # explicit image_size wins over decoding the image; no image and no size -> other_error
    assert grade1(g, f"<answer>{[64 * sx, 48 * sy, 320 * sx, 240 * sy]}</answer>",
                  {"image_size": [640, 480], "boxes": [[64, 48, 320, 240]]}).reward == pytest.approx(1.0)
    r = grade1(g, "<answer>[1, 2, 3, 4]</answer>", {"boxes": [[1, 2, 3, 4]]})
    assert r.reward == 0.0 and r.errors["other_error"]


def test_auto_input_format_takes_the_model_familys_convention():
    """input_format "auto": the convention the trainer passes (its model family's), here Qwen2.5-VL's pixels of
    the smart-resized image; references default to xyxy norm1000; without one (graders/run) xyxy norm1000."""
    from grader.reward import Context
    from grader.types.iou import Iou

    qwen25 = {"box_format": "xyxy", "coordinates": "pixel",
              "resize": {"factor": 28, "min_pixels": 3136, "max_pixels": 12845056}}
    item = row(640, 480, boxes=[[100, 100, 500, 500]])  # norm1000: pixels (64, 48)-(320, 240) of the original
    pixels = "<answer>[64.4, 47.6, 322.0, 238.0]</answer>"  # the same box in the 644x476 image the model saw
    norm = "<answer>[100, 100, 500, 500]</answer>"
    g = {"type": "iou", "name": "g", "mode": "grounding", "input_format": "auto"}
    with grader.compile(g, box_convention=qwen25) as c:
        assert c.reward.spec.input_format.resize.factor == 28
        right, wrong = (r.reward for r in c.grade([pixels, norm], [item, item]).results)
        assert right == pytest.approx(1.0) and wrong < 0.5
    wrong, right = (grade1(g, s, item).reward for s in (pixels, norm))  # the default: norm1000
    assert right == pytest.approx(1.0) and wrong < 0.5
    # inside a multi grader, and through the Context a compiled reward is given
    multi = grader.validate_grader({"type": "multi", "name": "m", "calculate_output": "g", "graders": {"g": g}})
    with grader.compile(multi, box_convention=qwen25) as c:
        assert c.grade([pixels], [item]).results[0].reward == pytest.approx(1.0)
    reward = Iou(grader.validate_grader(g), Context(box_convention={"coordinates": "norm1"}))
    assert reward.spec.input_format.coordinates == "norm1" and reward.spec.reference_format.coordinates == "norm1000"
    # an object still validates field by field; any other string is refused
    with pytest.raises(grader.GraderValidationError) as e:
        grader.validate_grader({**g, "input_format": {"coordinates": "norm100"}})
    assert e.value.param == "input_format.coordinates"
    with pytest.raises(grader.GraderValidationError):
        grader.validate_grader({**g, "input_format": "family"})


def test_same_space_needs_no_image():
    # both in pixels, no resize: IoU does not depend on the image size, so no image is needed
    spec = {**DET, "input_format": {"coordinates": "pixel"}}
    assert (
        grade1(
            spec, "<answer>[{'Position': [0, 0, 10, 10], 'Confidence': 1}]</answer>", {"boxes": [[0, 0, 10, 10]]}
        ).reward
        == 1.0
    )


def test_xywh_and_cxcywh_conventions():
    item = {"boxes": [[0, 0, 10, 10]]}
    spec = {
        **DET,
        "mode": "grounding",
        "input_format": {"box_format": "cxcywh"},
        "reference_format": {"box_format": "xyxy"},
    }
    assert grade1(spec, "<answer>[5, 5, 10, 10]</answer>", item).reward == 1.0
    # reference_format defaults to input_format
    assert (
        grade1(
            {**spec, "reference_format": None}, "<answer>[5, 5, 10, 10]</answer>", {"boxes": [[5, 5, 10, 10]]}
        ).reward
        == 1.0
    )
    spec = {**DET, "mode": "grounding", "reference_format": {"box_format": "xywh"}}
    assert grade1(spec, "<answer>[0, 0, 10, 10]</answer>", {"boxes": [[0, 0, 10, 10]]}).reward == 1.0
    assert grade1(spec, "<answer>[0, 0, 10, 10]</answer>", {"boxes": [[0, 0, 5, 10]]}).reward == pytest.approx(0.5)


def test_confidence_weight_mixes_terms():
    item = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]]}
    text = ("<answer>[{'Position': [0, 0, 10, 10], 'Confidence': 0.9}, "
            "{'Position': [50, 50, 60, 60], 'Confidence': 0.3}]</answer>")
    r = grade1({**DET, "confidence_weight": 0.5}, text, item)
    assert r.reward == pytest.approx(0.5 * 0.5 + 0.5 * 0.8)
    assert r.scores == pytest.approx({"iou": 0.5, "confidence": 0.8})


def test_image_size_from_row():
    assert item_image_size(row(33, 17)) == (33, 17)
    assert size_from_data_url(png_url(640, 480, "JPEG")) == (640, 480)
    assert item_image_size({"image_size": {"width": 5, "height": 6}}) == (5, 6)


# ----------------------------------------------------------------------------------------- format, classification


def test_format_reward():
    assert format_reward("<think>a\nb</think>\n<answer>x</answer>") == 1.0
    assert format_reward("  <think>a</think><answer>x</answer>\n") == 1.0  # surrounding whitespace stripped
    assert format_reward("<think>a</think><answer>x</answer> trailing") == 0.0
    assert format_reward("<answer>x</answer>") == 0.0
    assert format_reward("") == 0.0
    r = grade1({"type": "format", "name": "f", "pattern": r"\d+", "flags": []}, "12345", {})
    assert r.reward == 1.0


def test_format_pattern_timeout_is_an_error_not_a_hang():
    spec = {"type": "format", "name": "f", "pattern": r"(a|aa)+$", "flags": [], "strip": False}
    r = grade1(spec, "a" * 60 + "!", {})
    assert r.reward == 0.0 and r.errors["other_error"]


def test_classification():
    assert normalize_label("Great_Horned-Owl!") == "greathornedowl"
    assert classification_reward("great horned owl", "Great_Horned_Owl") == 1.0
    assert classification_reward("", "owl") == 0.0  # Visual-RFT gave this 1.0
    assert classification_reward("owl", "great horned owl") == 0.0  # no substring credit
    assert classification_reward("great horned owl and a sparrow", "great horned owl") == 0.0
    assert classification_reward("A320", ["Airbus A320", "a320"]) == 1.0
    assert classification_reward("Jumbo", "Boeing 747", {"boeing 747": ["jumbo jet", "jumbo"]}) == 1.0
    assert classification_reward("Ünïcode Café", "ünïcode café") == 1.0
    spec = {"type": "classification", "name": "c", "reference": "{{item.label}}"}
    assert grade1(spec, "<think>x</think><answer>Rose</answer>", {"label": "rose"}).reward == 1.0
    assert grade1(spec, "<think>x</think><answer></answer>", {"label": "rose"}).reward == 0.0
    assert grade1(spec, "<answer>rose</answer>", {"label": ["rose", "Rosa"]}).reward == 1.0


def test_compiled_and_numpy_paths_agree(monkeypatch):
    """Large batches may use the numba kernels; small ones and VRFT_GRADER_NUMBA=0 use numpy: same rewards."""
    contents, sols = make_detection_samples(200, boxes=6, seed=5)
    odd = [
        "<think>a</think><answer>No Objects</answer>",
        "<answer>[]</answer>",
        "nothing",
        "<answer></answer>",
        "<answer>[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}]</answer>"
        "<answer>[{'Position': [1, 2, 30, 40], 'Confidence': 0.5}]</answer>",
        "<answer><answer>[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}]</answer>",
        "<answer>[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}]</answer> tail </answer>",
        "<answer>[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}, "
        "{'Position': [1, 2, 3, 4], 'Confidence': 0.9}]</answer>",
        '<answer>\n[ {"Confidence": 0.7, "Position": [10, 20, 30, 40]} ]\n</answer>',
        "<answer>[1.5e2, 2, 3, 4]</answer>",
        "<answer>[{'Position': [-1, 2, 3, 4], 'Confidence': 0.5}]</answer>",
        "<Answer>[1, 2, 3, 4]</Answer>",
        "<answer>[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}, {'Position': [5, 6</answer>",
        "<answer>é [1, 2, 3, 4]</answer>",
    ]
    contents = contents[:100] + odd + contents[100:]
    sols = sols[:100] + [sols[0]] * len(odd) + sols[100:]
    items = [{"solution": s} for s in sols]
    spec = {"type": "iou", "name": "d", "reference": "{{item.solution}}", "confidence_weight": 0.3}
    with grader.compile(spec) as g:
        fast = g.grade(contents, items)
    monkeypatch.setenv("VRFT_GRADER_NUMBA", "0")
    with grader.compile(spec) as g:
        slow = g.grade(contents, items)
    assert fast.rewards == slow.rewards
    assert fast.errors == slow.errors
    assert fast.components == slow.components
    for text in odd:  # and both agree with one-at-a-time grading
        assert g.grade([text], [items[0]]).rewards[0] == fast.rewards[contents.index(text)]


def test_compiled_kernels_agree_with_numpy_on_large_batches(monkeypatch):
    """Dedupe + max_boxes cap, the flat matching kernel (also behind detection_padded) and non-ASCII texts,
    on batches large enough for the numba kernels, against VRFT_GRADER_NUMBA=0."""
    rng = np.random.default_rng(0)
    contents, sols = make_detection_samples(96, boxes=8, seed=9)
    repeated = [{"Position": [i, i, i + 40, i + 40], "Confidence": 0.5} for i in range(0, 60, 3)] * 2
    box = "[{'Position': [1, 2, 30, 40], 'Confidence': 0.5}]"
    contents[5:8] = [
        f"<answer>{repeated}</answer>",
        f"<answer>{box}</answer> é",
        f"<think>é</think><answer>{box}</answer>",
    ]
    items = [{"solution": s} for s in sols]
    spec = {"type": "iou", "name": "d", "reference": "{{item.solution}}", "max_boxes": 7, "confidence_weight": 0.4}
    with grader.compile(spec) as g:
        fast = g.grade(contents, items)

    def boxes(k):  # k random xyxy boxes
        corners = np.sort(rng.integers(0, 50, (k, 2, 2)).astype(float), axis=1)
        return corners.transpose(0, 2, 1).reshape(k, 4)

    gts, preds = [boxes(k) for k in rng.integers(0, 6, 80)], [boxes(k) for k in rng.integers(0, 6, 80)]
    confs = [rng.choice([0.1, 0.5, 0.9], len(p)) for p in preds]  # ties: the stable order decides
    fast_det = [B.detection_batch(gts, preds, confs, 0.3, giou) for giou in (False, True)]
    monkeypatch.setenv("VRFT_GRADER_NUMBA", "0")
    with grader.compile(spec) as g:
        slow = g.grade(contents, items)
    assert fast.rewards == slow.rewards and fast.components == slow.components and fast.errors == slow.errors
    for giou, (it, ct) in zip((False, True), fast_det):
        want = B.detection_batch(gts, preds, confs, 0.3, giou)
        assert it.tolist() == want[0].tolist() and ct.tolist() == want[1].tolist()


def test_parse_kernel_stops_at_the_end_of_its_output():
    """The compiled parser never writes past the rows it is given: a text that does not fit is not ok."""
    from grader import _accel

    k = _accel._load()
    assert k is not None, "numba (installed with the ML stack, a vLLM dependency) is needed for the compiled parser"
    text = b"[{'Position': [1, 2, 3, 4], 'Confidence': 0.5}, {'Position': [5, 6, 7, 8], 'Confidence': 0.5}]"
    b = np.frombuffer(text, dtype=np.uint8)
    for rows, want in ((1, False), (2, True)):
        out, counts, ok = np.zeros((rows, 5)), np.zeros(1, np.int64), np.zeros(1, bool)
        k["parse"](b, np.array([0]), np.array([len(text)]), out, counts, ok, k["kp"], k["kc"], 0, k["ta"], k["tb"])
        assert ok[0] == want


def test_template_resolve_all_matches_resolve():
    from grader.templates import Template, make_sample

    t = Template("{{item.boxes}}", "reference")
    samples = [make_sample("x")] * 4
    assert t.resolve_all(samples, [{"boxes": [1]}, {"boxes": "b"}, {"boxes": 0}, {"boxes": {}}]) == [[1], "b", 0, {}]
    got = t.resolve_all(samples, [{"boxes": [1]}, {"boxes": None}, {}, "not a dict"])
    assert got[0] == [1] and [type(e).__name__ for e in got[1:]] == ["SampleError"] * 3
    assert Template("{{sample.answer}}").resolve_all([make_sample("<answer>a</answer>")], [{}]) == ["a"]


def test_iou_grader_reads_the_text_of_any_sample_form():
    """An `iou` grader that reads only the output text gets the texts; dict samples give the same rewards."""
    text = "<answer>[{'Position': [0, 0, 10, 10], 'Confidence': 0.9}]</answer>"
    item = {"boxes": [[0, 0, 10, 10]], "answer_boxes": text}
    samples = [text, {"output_text": text}, {"choices": [{"message": {"role": "assistant", "content": text}}]}]
    with grader.compile(DET) as g:
        assert g.children["det"].texts_only
        assert g.grade(samples, [item] * 3).rewards == [1.0, 1.0, 1.0]
    both = {**DET, "input": "{{item.answer_boxes}}", "reference": "{{sample.answer}}"}  # needs Sample objects
    with grader.compile(both) as g:
        assert not g.children["det"].texts_only
        assert g.grade(samples, [item] * 3).rewards == [1.0, 1.0, 1.0]


def test_pixel_answers_against_norm1000_references_when_no_answer_has_a_box():
    """A batch in which no sample parses still grades each sample (a parse error), pixel space or not."""
    spec = {"type": "iou", "name": "det", "input": "{{sample.output_text}}", "input_format": {"coordinates": "pixel"},
            "reference_format": {"coordinates": "norm1000"}}
    item = {"boxes": [[0, 0, 500, 500]], "image_size": [200, 100]}
    with grader.compile(spec) as g:
        none = g.grade([{"output_text": "garbage"}, {"output_text": "No Objects"}], [item, item]).results
        assert [r.reward for r in none] == [0.0, 0.0]
        assert none[0].errors["sample_parse_error"] and not none[0].errors["other_error"]
        assert not any(none[1].errors.values())
        hit = g.grade([{"output_text": "[[0, 0, 100, 50]]"}, {"output_text": "garbage"}], [item, item]).results
        assert hit[0].reward == 1.0 and hit[1].errors["sample_parse_error"]
