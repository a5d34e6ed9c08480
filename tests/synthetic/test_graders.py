"""Each task's grader (from `synthetic.grader_spec`) through the real grader library: the reference answer
scores 1 (or within rounding of it), wrong boxes, wrong classes, broken formats and empty answers less."""

from __future__ import annotations

import copy
import json

import pytest

import grader
from synthetic import answer_of, generate, grader_spec

TASKS = ("detection", "grounding", "classification")
STYLES = [(short, coords) for short in (False, True) for coords in ("pixel", "norm1000", "norm1")]


def wrap(answer: str, short: bool) -> str:
    return f"<answer>{answer}</answer>" if short else f"<think>I looked.</think><answer>{answer}</answer>"


def grade(spec: dict, samples: list[str], rows: list[dict]) -> list[float]:
    g = grader.compile(spec)
    try:
        return g.grade(samples, rows).rewards
    finally:
        g.close()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("short,coords", STYLES)
def test_spec_validates_and_reference_scores_one(task, short, coords):
    spec = grader_spec(task, short=short, coordinates=coords)
    typed = grader.validate_grader(spec)
    assert typed.type == "multi" and set(typed.graders) == {"task", "format"}
    assert json.loads(json.dumps(spec)) == spec
    rows = generate(task, 24, seed=21, sft=True, short=short, coordinates=coords)
    g = grader.compile(spec)
    batch = g.grade([r["messages"][-1]["content"] for r in rows], rows)
    g.close()
    floor = 1.0 if coords == "pixel" or task == "classification" else 0.98  # rounding of normalised coordinates
    assert min(batch.rewards) >= floor, batch.rewards
    assert not any(batch.error_counts.values()), batch.error_counts
    assert batch.sub_rewards["format"] == [1.0] * len(rows)


@pytest.mark.parametrize("short", [False, True])
def test_detection_wrong_answers_score_less(short):
    rows = [r for r in generate("detection", 40, seed=22, sft=True, short=short) if r["boxes"]]
    spec = grader_spec("detection", short=short)
    ref = grade(spec, [answer_of(r) for r in rows], rows)
    assert ref == [1.0] * len(rows)

    def det(boxes, conf=1):
        return "[" + ", ".join(f"{{'Position': {b}, 'Confidence': {conf}}}" for b in boxes) + "]"

    far = [[[0, 0, 6, 6]] for _ in rows]  # a box where no object is
    shifted = [
        [[b[0] + (b[2] - b[0]) // 2 + 1, b[1], b[2] + (b[2] - b[0]) // 2 + 1, b[3]] for b in r["boxes"]] for r in rows
    ]
    others = [[o["box"] for o in r["objects"] if o["box"] not in r["boxes"]] or [[0, 0, 6, 6]] for r in rows]
    cases = {
        "far box": [wrap(det(b), short) for b in far],
        "shifted by half a box": [wrap(det(b), short) for b in shifted],
        "the other objects": [wrap(det(b), short) for b in others],
        "missing a box or an extra box": [
            wrap(det(r["boxes"][:-1] if len(r["boxes"]) > 1 else r["boxes"] + [[0, 0, 6, 6]]), short) for r in rows
        ],
        "right boxes, low confidence": [wrap(det(r["boxes"], 0.2), short) for r in rows],
        "No Objects": [wrap("No Objects", short) for _ in rows],
        "broken format": [r["solution"] for r in rows],  # no tags at all
        "half-closed tags": [f"<answer>{r['solution']}" for r in rows],
        "empty answer": [wrap("", short) for _ in rows],
        "empty output": ["" for _ in rows],
    }
    for name, samples in cases.items():
        got = grade(spec, samples, rows)
        assert max(got) < 1.0 and sum(got) / len(got) < 0.9, (name, got)
    # nothing in tags at all scores nothing
    assert grade(spec, [""] * len(rows), rows) == [0.0] * len(rows)
    assert grade(spec, cases["far box"], rows) == [pytest.approx(1 / 3)] * len(rows)  # the format alone


def test_detection_no_objects_rows():
    rows = [r for r in generate("detection", 80, seed=23, sft=True, short=True) if not r["boxes"]]
    assert rows
    spec = grader_spec("detection", short=True)
    assert grade(spec, [answer_of(r) for r in rows], rows) == [1.0] * len(rows)
    assert all(r["solution"] == "No Objects" for r in rows)
    hallucinated = grade(
        spec, [wrap(f"[{{'Position': {r['objects'][0]['box']}, 'Confidence': 0.9}}]", True) for r in rows], rows
    )
    assert max(hallucinated) < 0.5


@pytest.mark.parametrize("short", [False, True])
def test_grounding_wrong_answers_score_less(short):
    rows = generate("grounding", 30, seed=24, sft=True, short=short)
    spec = grader_spec("grounding", short=short)
    assert grade(spec, [answer_of(r) for r in rows], rows) == [1.0] * len(rows)
    anchor = [wrap(str(r["objects"][r["anchor"]]["box"]), short) for r in rows]
    got = grade(spec, anchor, rows)
    assert max(got) <= 0.5 + 1e-9  # the anchor's box does not overlap the target: format only
    decoy_rows = [
        r
        for r in rows
        if sum(
            o["colour"] == r["objects"][r["target"]]["colour"] and o["shape"] == r["objects"][r["target"]]["shape"]
            for o in r["objects"]
        )
        > 1
    ]
    assert decoy_rows
    decoys = []
    for r in decoy_rows:
        t = r["objects"][r["target"]]
        d = next(
            o
            for i, o in enumerate(r["objects"])
            if i != r["target"] and (o["colour"], o["shape"]) == (t["colour"], t["shape"])
        )
        decoys.append(wrap(str(d["box"]), short))
    assert max(grade(spec, decoys, decoy_rows)) <= 0.5 + 1e-9
    # partly right boxes get partial credit (dense IoU reward)
    grown = [wrap(str([b[0], b[1], b[2] + (b[2] - b[0]), b[3]]), short) for r in rows for b in r["boxes"]]
    got = grade(spec, grown, rows)
    assert all(0.6 < x < 0.9 for x in got), got  # IoU 1/2 -> (0.5 + 1) / 2
    for bad in (
        [r["solution"] for r in rows],
        [wrap("", short)] * len(rows),
        [""] * len(rows),
        [wrap("the red circle", short)] * len(rows),
    ):
        assert max(grade(spec, bad, rows)) <= 0.5


@pytest.mark.parametrize("short", [False, True])
def test_classification_wrong_answers_score_less(short):
    rows = generate("classification", 40, seed=25, sft=True, short=short)
    spec = grader_spec("classification", short=short)
    assert grade(spec, [answer_of(r) for r in rows], rows) == [1.0] * len(rows)
    # spelling variants of the right label still count
    assert grade(spec, [wrap(r["label"].upper().replace(" ", "_"), short) for r in rows], rows) == [1.0] * len(rows)
    shade = {"red": "dark red", "dark red": "red", "green": "dark green", "dark green": "green",
             "blue": "light blue", "light blue": "blue"}
    fine = [r for r in rows if r["colour"] in shade]
    assert fine
    wrong_shade = [wrap(f"{shade[r['colour']]} {r['shape']}", short) for r in fine]
    assert grade(spec, wrong_shade, fine) == [0.5] * len(fine)  # the fine-grained miss: format only
    wrong_shape = [wrap(f"{r['colour']} {'square' if r['shape'] != 'square' else 'circle'}", short) for r in rows]
    assert grade(spec, wrong_shape, rows) == [0.5] * len(rows)
    only_shape = [wrap(r["shape"], short) for r in rows]  # a substring of the label is not the label
    assert grade(spec, only_shape, rows) == [0.5] * len(rows)
    for bad in ([r["label"] for r in rows], [wrap("", short)] * len(rows), [""] * len(rows)):
        assert grade(spec, bad, rows) == [0.0] * len(rows)


def test_run_returns_openai_response_and_reads_size_from_the_image():
    row = generate("grounding", 1, seed=26, sft=True, coordinates="norm1000")[0]
    spec = grader_spec("grounding", coordinates="norm1000")
    out = grader.run(spec, row["messages"][-1]["content"], row)
    assert out["reward"] >= 0.98 and set(out["sub_rewards"]) == {"task", "format"}
    assert out["metadata"]["type"] == "multi" and not any(out["metadata"]["errors"].values())
    # without image_size / width / height the grader reads the size from the PNG in the row
    bare = copy.deepcopy(row)
    for key in ("image_size", "width", "height"):
        bare.pop(key)
    assert grader.run(spec, row["messages"][-1]["content"], bare)["reward"] == out["reward"]


def test_format_weight_and_zero_weight():
    spec = grader_spec("classification", format_weight=0.2, short=True)
    grader.validate_grader(spec)
    rows = generate("classification", 4, seed=27, short=True)
    assert grade(spec, [wrap("nonsense", True)] * 4, rows) == [pytest.approx(0.2)] * 4
    bare = grader_spec("classification", format_weight=0)
    assert set(bare["graders"]) == {"task"} and bare["calculate_output"] == "task"
    grader.validate_grader(bare)
    with pytest.raises(ValueError):
        grader_spec("classification", format_weight=1.5)
