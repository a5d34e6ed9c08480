"""POST /v1/files/{file_id}/boxes (our extension): the boxes a grader's iou graders compare on rows of a file,
in fractions of the row's image, computed by the grader's own parsing and conversions. The dashboard draws these,
so what it draws is what was scored: checked here against the rewards of /v1/fine_tuning/alpha/graders/run."""

from __future__ import annotations

import json

import pytest

from grader import boxes as B
from tests.helpers import assert_openai_error, jsonl


def _png_url(w: int, h: int) -> str:
    from grader.images import _tiny_png_url

    return _tiny_png_url(w, h)


ROWS = [
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Where is the cat?"},
                                               {"type": "image_url", "image_url": {"url": _png_url(280, 140)}}]}],
     "boxes": [[100, 200, 500, 600]]},
    "",  # a blank line: line numbers count it, as rollout records' `line` do
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "And the dogs?"},
                                               {"type": "image_url", "image_url": {"url": _png_url(560, 280)}}]}],
     "boxes": [{"bbox_2d": [0, 0, 250, 500]}, {"bbox_2d": [500, 500, 1000, 1000]}]},
]
GROUNDING = {"type": "iou", "name": "box", "mode": "grounding", "input_format": "auto"}
MULTI = {"type": "multi", "name": "m", "calculate_output": "0.5 * box + 0.5 * det", "graders": {
    "box": GROUNDING,
    "det": {"type": "iou", "name": "det", "input_format": {"box_format": "xywh", "coordinates": "norm1"},
            "reference_format": {"box_format": "xyxy", "coordinates": "norm1000"}},
    "fmt": {"type": "string_check", "name": "fmt", "input": "{{sample.output_text}}", "reference": "x",
            "operation": "ne"}}}
QWEN25 = {"box_format": "xyxy", "coordinates": "pixel", "resize": {"factor": 28}}


@pytest.fixture(scope="module")
def box_file(deployment) -> str:  # noqa: ANN001
    with deployment.http() as h:
        body = ("\n".join(json.dumps(r) if r else "" for r in ROWS) + "\n").encode()
        r = h.post("/files", files={"file": ("boxes.jsonl", body)}, data={"purpose": "assistants"})
        assert r.status_code == 200, r.text
        return r.json()["id"]


def _boxes(deployment, file_id: str, grader: dict, rows: list[dict], convention: dict | None = None) -> list:  # noqa: ANN001
    with deployment.http() as h:
        r = h.post(f"/files/{file_id}/boxes", json={"grader": grader, "rows": rows, "box_convention": convention})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["line"] for d in body["data"]] == [row["line"] for row in rows]
    return body["data"]


def test_reference_and_predicted_boxes_in_fractions_of_the_image(deployment, box_file: str) -> None:  # noqa: ANN001
    sample = 'I see it. <answer>[{"Position": [56, 28, 140, 112], "Confidence": 0.7}]</answer>'
    [row] = _boxes(deployment, box_file, MULTI, [{"line": 1, "sample": sample}], QWEN25)
    by = {g["grader"]: g for g in row["graders"]}
    assert set(by) == {"box", "det"}  # the iou graders only, by their keys in sub_rewards
    # "auto" is the convention asked for: Qwen2.5-VL pixels of the smart-resized image (280x140 stays 280x140)
    assert by["box"]["reference"] == [[0.1, 0.2, 0.5, 0.6]]
    assert by["box"]["predicted"] == [{"box": [0.2, 0.2, 0.5, 0.8], "confidence": 0.7}]
    assert by["box"]["error"] is None
    # the other grader reads the same numbers as xywh in 0..1: the box goes off the image, as the grader scores it
    assert by["det"]["predicted"] == [{"box": [56.0, 28.0, 196.0, 140.0], "confidence": 0.7}]
    assert by["det"]["reference"] == [[0.1, 0.2, 0.5, 0.6]]


def test_drawn_boxes_are_what_the_grader_scored(deployment, box_file: str) -> None:  # noqa: ANN001
    """The IoU of the drawn boxes is the reward graders/run gives the same sample and row."""
    samples = ["<answer>[100, 150, 400, 700]</answer>", "<answer>[0, 0, 1000, 1000]</answer>",
               "<answer>(500,500),(900,1000)</answer>", "no boxes here"]
    data = _boxes(deployment, box_file, GROUNDING, [{"line": 3, "sample": s} for s in samples])
    with deployment.http() as h:
        for s, row in zip(samples, data):
            run = h.post("/fine_tuning/alpha/graders/run", json={"grader": GROUNDING, "model_sample": s,
                                                                 "item": ROWS[2]}).json()
            [g] = row["graders"]
            assert g["reference"] == [[0.0, 0.0, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0]]
            if not g["predicted"]:
                assert run["reward"] == 0 and run["metadata"]["errors"]["sample_parse_error"]
                assert g["error"] == "no box found in the sample"
                continue
            best = max(B.iou(g["predicted"][0]["box"], ref) for ref in g["reference"])
            assert best == pytest.approx(run["reward"], abs=1e-9), (s, g, run)
    assert data[2]["graders"][0]["predicted"] == [{"box": [0.5, 0.5, 0.9, 1.0], "confidence": 1.0}]


def test_without_a_sample_only_the_references(deployment, box_file: str) -> None:  # noqa: ANN001
    [one, three] = _boxes(deployment, box_file, GROUNDING, [{"line": 1}, {"line": 3, "sample": None}])
    assert one["graders"] == [{"grader": "box", "reference": [[0.1, 0.2, 0.5, 0.6]], "predicted": [], "error": None}]
    assert three["graders"][0]["predicted"] == [] and len(three["graders"][0]["reference"]) == 2


def test_a_grader_without_iou_has_no_boxes_and_a_blank_line_is_refused(deployment, box_file: str) -> None:  # noqa: ANN001
    check = {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "a",
             "operation": "eq"}
    assert _boxes(deployment, box_file, check, [{"line": 1, "sample": "a"}]) == [{"line": 1, "graders": []}]
    with deployment.http() as h:
        r = h.post(f"/files/{box_file}/boxes", json={"grader": GROUNDING, "rows": [{"line": 1}, {"line": 2}]})
    assert_openai_error(r, 400, param="rows[1].line", contains="not a JSON object")


def test_pixel_references_need_the_image_size(deployment) -> None:  # noqa: ANN001
    """A row with pixel references and no image: that row's grader says why, the request still answers."""
    with deployment.http() as h:
        f = h.post("/files", files={"file": ("p.jsonl", jsonl([{"boxes": [[1, 2, 3, 4]]},
                                                                {"boxes": [[1, 2, 3, 4]], "image_size": [10, 20]}]))},
                   data={"purpose": "assistants"}).json()
    pixel = {**GROUNDING, "input_format": {"coordinates": "pixel"}}
    bare, sized = _boxes(deployment, f["id"], pixel, [{"line": 1, "sample": "<answer>[1, 2, 3, 4]</answer>"},
                                                      {"line": 2, "sample": "<answer>[1, 2, 3, 4]</answer>"}])
    assert bare["graders"][0]["predicted"] == [] and "image size" in bare["graders"][0]["error"]
    assert sized["graders"][0]["reference"] == [[0.1, 0.1, 0.3, 0.2]]
    assert sized["graders"][0]["predicted"] == [{"box": [0.1, 0.1, 0.3, 0.2], "confidence": 1.0}]
