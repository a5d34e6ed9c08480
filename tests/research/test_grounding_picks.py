"""research/grounding_picks.py's pure parts: which shape an answer picks, and the summary of a set of answers."""

from __future__ import annotations

import pytest

from research import grounding_picks as gp
from research import scenes

SCENE = dict(short=True, sizes=((56, 56),), noise_prob=0.0, min_objects=3, max_objects=3, shape_scale=(0.3, 0.45))


@pytest.fixture(scope="module")
def decoy_row() -> dict:
    """A generated 3-shape row with a decoy of the target's class."""
    return next(r for r in scenes.generate("grounding", 20, seed=3, **SCENE) if gp.has_decoy(r))


def box_text(box) -> str:
    return "<answer>[{}, {}, {}, {}]</answer>".format(*box)


def test_each_shape_of_a_decoy_row_is_classified_by_what_it_is(decoy_row) -> None:
    objects, target = decoy_row["objects"], decoy_row["target"]
    decoy = next(i for i, o in enumerate(objects) if i != target and gp.class_of(o) == gp.class_of(objects[target]))
    anchor = decoy_row["anchor"]
    assert {target, decoy, anchor} == {0, 1, 2}
    assert gp.classify(gp.answer_box(box_text(objects[target]["box"])), decoy_row) == "target"
    assert gp.classify(gp.answer_box(box_text(objects[decoy]["box"])), decoy_row) == "decoy"
    assert gp.classify(gp.answer_box(box_text(objects[anchor]["box"])), decoy_row) == "other"
    # a box off every shape, and no box at all
    assert gp.classify([0, 0, 1, 1], decoy_row) == "none"
    assert gp.classify(gp.answer_box("<answer>the red one</answer>"), decoy_row) == "none"


def test_a_box_slightly_off_the_target_still_picks_it(decoy_row) -> None:
    x0, y0, x1, y1 = decoy_row["objects"][decoy_row["target"]]["box"]
    assert gp.classify([x0 + 2, y0 + 2, x1 + 2, y1 + 2], decoy_row) == "target"


def test_analyse_counts_picks_iou_when_right_and_samples(decoy_row) -> None:
    objects, target = decoy_row["objects"], decoy_row["target"]
    decoy = next(i for i, o in enumerate(objects) if i != target and gp.class_of(o) == gp.class_of(objects[target]))
    rows = [decoy_row] * 3
    greedy = [box_text(objects[target]["box"]), box_text(objects[decoy]["box"]), "no box"]
    sampled = [[box_text(objects[target]["box"]), "no box"]] * 3
    stats = gp.analyse(rows, greedy, sampled)
    assert stats["picks"] == {"target": 1, "decoy": 1, "other": 0, "none": 1}
    assert stats["decoy_rows"] == 3 and stats["decoy_rows_right"] == pytest.approx(1 / 3)
    assert stats["iou_when_right"] == pytest.approx(1.0)
    assert stats["mean_iou"] == pytest.approx(1 / 3)  # the decoy is another shape: IoU 0 with the target
    assert stats["sample_mean_iou"] == pytest.approx(0.5)
    assert stats["best_of_g_iou"] == pytest.approx(1.0)
    assert stats["within_group_std"] == pytest.approx(0.5)
    assert "decoy 1" in gp.report(stats) and "best of G 1.000" in gp.report(stats)


def test_position_rule_and_sampled_target_share_on_second_anchor_rows() -> None:
    """decoy='other_anchor' rows: the farthest shape of the target's class is the target in about half of them;
    answers that always take the farthest follow the position rule 100% and are right only where it is."""
    rows = scenes.generate("grounding", 40, seed=5, **{**SCENE, "min_objects": 4, "max_objects": 4},
                              decoy="other_anchor")
    farthest = [gp.farthest_of_class(r) for r in rows]
    assert all(gp.has_decoy(r) for r in rows)
    assert 0.3 < sum(f == r["target"] for f, r in zip(farthest, rows)) / len(rows) < 0.7
    greedy = [box_text(r["objects"][f]["box"]) for f, r in zip(farthest, rows)]
    sampled = [[box_text(r["objects"][r["target"]]["box"]), box_text(r["objects"][f]["box"])]
               for f, r in zip(farthest, rows)]
    stats = gp.analyse(rows, greedy, sampled)
    assert stats["farthest_picked"] == 1.0
    assert stats["decoy_rows_right"] == pytest.approx(stats["farthest_is_target"])
    # one sample of two on the target: half the samples where the farthest is the decoy, all where it is the target
    assert stats["decoy_rows_sample_target"] == pytest.approx(0.5 + stats["farthest_is_target"] / 2)
    assert stats["decoy_rows_some_sample_target"] == 1.0
    assert "position rule: " in gp.report(stats) and "have a sample that does" in gp.report(stats)


def test_think_anchor_answers_are_read_from_their_tags() -> None:
    """A --think-anchor answer holds two boxes: the pick is the <answer> one, and the report says whether the
    <think> one found the anchor and whether the answer then picked the target."""
    rows = scenes.generate("grounding", 4, seed=2, sft=True, think_anchor=True, sizes=((56, 56),), noise_prob=0.0,
                              min_objects=4, max_objects=4, shape_scale=(0.3, 0.45), decoy="other_anchor")
    reference = [r["messages"][-1]["content"] for r in rows]
    assert [gp.classify(gp.answer_box(t), r) for t, r in zip(reference, rows)] == ["target"] * 4
    stats = gp.analyse(rows, reference)
    assert stats["anchor_found"] == 1.0 and stats["target_when_anchor_found"] == 1.0 and stats["mean_iou"] == 1.0
    assert stats["think_on_anchor_colour"] == 1.0
    share = [sum(o["colour"] == r["objects"][r["anchor"]]["colour"] for o in r["objects"]) / 4 for r in rows]
    assert stats["think_on_anchor_colour_chance"] == pytest.approx(sum(share) / 4) and max(share) < 1
    decoy = [next(i for i, o in enumerate(r["objects"]) if i != r["target"]
                  and gp.class_of(o) == gp.class_of(r["objects"][r["target"]])) for r in rows]
    wrong = [f"<think>The x is at {r['objects'][r['target']]['box']}.</think>" + box_text(r["objects"][d]["box"])
             for r, d in zip(rows, decoy)]  # the think box on the target (not the anchor), the answer on the decoy
    stats = gp.analyse(rows, reference[:2] + wrong[2:])
    assert stats["anchor_found"] == 0.5 and stats["target_when_anchor_found"] == 1.0
    same_colour = [r["objects"][r["target"]]["colour"] == r["objects"][r["anchor"]]["colour"] for r in rows[2:]]
    assert stats["think_on_anchor_colour"] == pytest.approx((2 + sum(same_colour)) / 4)
    assert "a shape of the anchor's colour in" in gp.report(stats)
    assert stats["picks"]["target"] == 2 and stats["picks"]["decoy"] == 2
    assert "the <think> box lands on the anchor in 50% of rows" in gp.report(stats)
    assert "anchor_found" not in gp.analyse(rows, [box_text(r["boxes"][0]) for r in rows])  # short answers
