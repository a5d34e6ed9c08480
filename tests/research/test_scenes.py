"""The studies' scene options (research/scenes.py): what each changes, what it keeps, and that a row is byte for
byte what the generator made before the options left it (the pinned digests were computed then)."""

from __future__ import annotations

import numpy as np
import pytest

from grader import compile as grader_compile
from research.scenes import RELATION_WORDS, StudyOptions, generate, holds_in_line
from synthetic import COLOURS, RELATIONS, beyond, holds, referents, to_jsonl
from synthetic import generate as product_generate
from synthetic import grader_spec as synthetic_grader
from synthetic.shapes import mask_box, opposite_side
from tests.synthetic.test_generator import digest, image_of, shape_pixels


@pytest.mark.parametrize("task", ["detection", "grounding", "classification"])
def test_default_study_options_are_the_products_rows(task):
    for sft, short in ((True, False), (False, True)):
        assert to_jsonl(generate(task, 12, seed=4, sft=sft, short=short)) == \
            to_jsonl(product_generate(task, 12, seed=4, sft=sft, short=short))


SCENE = dict(sizes=((56, 56),), noise_prob=0.0, shape_scale=(0.3, 0.45))


@pytest.mark.parametrize("options, want", [
    (dict(short=True, min_objects=3, max_objects=3, relation_words="compass", **SCENE),
     "2c7bde434e1869d89f1d845a672d22cc"),  # the headline's scenes (learning.vocabulary.md)
    (dict(short=True, min_objects=4, max_objects=4, decoy="other_anchor", **SCENE), "d08d96c2e21f00ffab2b1b741fbace74"),
    (dict(min_objects=4, max_objects=4, decoy="other_anchor", think_anchor=True, **SCENE),
     "b939fd164e08a97a0ee53d17ec7c67f9"),
    (dict(short=True, max_objects=2, gradient=96, sizes=((56, 56),)), "101c0464e868e8c8de239334d633dc5b"),
], ids=["compass", "other_anchor", "think_anchor", "gradient"])
def test_study_scenes_are_pinned(options, want):
    """The digests of these rows were taken from `synthetic` before the options moved here: the studies' results
    (research/results/) stay reproducible from their seeds."""
    assert digest(generate("grounding", 16, seed=0, sft=True, **options)) == want


def test_options_come_from_lists_and_are_checked():
    opts = StudyOptions(shape_scale=[0.3, 0.45])  # as argparse and JSON give them
    assert opts.shape_scale == (0.3, 0.45) and opts.check() is opts
    with pytest.raises(ValueError, match="need 1 <= min_objects"):  # the product's checks run first
        StudyOptions(min_objects=0).check()
    with pytest.raises(TypeError, match="unknown options"):
        generate("grounding", 1, scale=(0.3, 0.4))


def test_grounding_with_three_big_shapes_keeps_three_and_mostly_needs_the_relation():
    """The learning benchmark's relational scenes: 3 shapes of a third of a 56-pixel side. They seldom fit in
    a row, so a decoy stands on the anchor's far side by centre, not strictly beyond it; and a full image is
    drawn again rather than given 2 shapes."""
    rows = generate("grounding", 80, seed=3, sizes=((56, 56),), noise_prob=0.0, min_objects=3, max_objects=3,
                    shape_scale=(0.3, 0.45))
    name = lambda o: f"{o['colour']} {o['shape']}"  # noqa: E731
    with_decoy = 0
    for row in rows:
        objects, t, a, rel = row["objects"], row["target"], row["anchor"], row["relation"]
        assert len(objects) == 3, row["id"]
        assert referents(objects, name(objects[t]), rel, name(objects[a])) == [t], row["id"]
        for i, o in enumerate(objects):
            if i != t and name(o) == name(objects[t]):
                with_decoy += 1
                assert opposite_side(rel, o["box"], objects[a]["box"]), row["id"]
    assert with_decoy >= 0.6 * len(rows)  # the generator aims at 75%


def test_grounding_with_a_second_anchor_needs_the_anchors_name():
    """decoy="other_anchor": the decoy (the target's class) stands directly in the same relation to another
    anchor, so neither the target's class nor a position rule finds the target; only the anchor does."""
    rows = generate("grounding", 120, seed=3, sizes=((56, 56),), noise_prob=0.0, min_objects=4, max_objects=4,
                    shape_scale=(0.3, 0.45), decoy="other_anchor")
    name = lambda o: f"{o['colour']} {o['shape']}"  # noqa: E731
    farthest_is_target = 0
    for row in rows:
        objects, t, a, rel = row["objects"], row["target"], row["anchor"], row["relation"]
        target, anchor = name(objects[t]), name(objects[a])
        assert len(objects) == 4 and row["expression"] == f"the {target} directly {RELATIONS[rel]} the {anchor}"
        assert referents(objects, target, rel, anchor, holds_in_line) == [t], row["id"]
        assert holds_in_line(rel, objects[t]["box"], objects[a]["box"])
        (d,) = [i for i, o in enumerate(objects) if i != t and name(o) == target]  # exactly one decoy
        assert not holds_in_line(rel, objects[d]["box"], objects[a]["box"])
        assert any(holds_in_line(rel, objects[d]["box"], o["box"]) and name(o) not in (target, anchor)
                   for o in objects), row["id"]  # ... directly `rel` of a second anchor of another class
        farthest_is_target += beyond(rel, objects[t]["box"], objects[d]["box"])
    assert 0.35 * len(rows) <= farthest_is_target <= 0.65 * len(rows)  # a fair coin: no position rule works
    with pytest.raises(ValueError, match="max_objects >= 4"):
        generate("grounding", 1, max_objects=3, decoy="other_anchor")
    with pytest.raises(ValueError, match="decoy must be one of"):
        generate("grounding", 1, decoy="beside")


def test_think_anchor_reasons_with_the_anchors_box_and_answers_the_targets():
    """think_anchor: the <think> part names the anchor and gives its exact box, the <answer> the target's; the
    rows are otherwise the default rows (same scenes, same expressions) and the grader scores only the answer."""
    scene = dict(sizes=((56, 56),), noise_prob=0.0, min_objects=4, max_objects=4, shape_scale=(0.3, 0.45),
                 decoy="other_anchor")
    rows = generate("grounding", 20, seed=5, sft=True, think_anchor=True, **scene)
    plain = generate("grounding", 20, seed=5, sft=True, **scene)
    for row, other in zip(rows, plain):
        anchor = row["objects"][row["anchor"]]
        think = f"The {anchor['colour']} {anchor['shape']} is at {anchor['box']}."
        assert row["messages"][-1]["content"] == f"<think>{think}</think><answer>{row['boxes'][0]}</answer>"
        assert row["objects"] == other["objects"] and row["expression"] == other["expression"]
        assert anchor["box"] != row["boxes"][0]
    spec = synthetic_grader("grounding")
    scores = grader_compile(spec).grade([r["messages"][-1]["content"] for r in rows], rows).rewards
    assert scores == [1.0] * len(rows)
    swapped = [f"<think>The target is at {r['boxes'][0]}.</think><answer>{r['objects'][r['anchor']]['box']}</answer>"
               for r in rows]  # the anchor's box as the answer scores as the wrong shape
    assert max(grader_compile(spec).grade(swapped, rows).sub_rewards["task"]) < 0.5
    with pytest.raises(ValueError, match="think_anchor needs short=False"):
        generate("grounding", 1, short=True, think_anchor=True)


def test_in_line_relations_overlap_along_the_other_axis():
    anchor = [20, 20, 36, 36]
    assert holds_in_line("left", [0, 25, 16, 41], anchor)  # left of it, in its rows
    assert holds("left", [0, 40, 16, 56], anchor) and not holds_in_line("left", [0, 40, 16, 56], anchor)  # below
    assert holds_in_line("below", [25, 40, 41, 56], anchor) and not holds_in_line("below", [0, 40, 16, 56], anchor)


@pytest.mark.parametrize("noise_prob", [0.0, 1.0])
def test_gradient_background_encodes_position_and_keeps_boxes(noise_prob):
    """Options.gradient: the same scenes (objects, boxes, answers), only the background changes; its red channel
    ramps along x and its blue channel along y (so a pixel's colour tells where it is), G stays the grey level,
    and no background pixel takes a shape colour (the boxes stay exact, see the first test)."""
    amp = 60
    plain = generate("grounding", 12, seed=5, noise_prob=noise_prob, max_objects=3)
    ramped = generate("grounding", 12, seed=5, noise_prob=noise_prob, max_objects=3, gradient=amp)
    for p, r in zip(plain, ramped):
        assert (p["objects"], p["boxes"], p["solution"], p["messages"][-1]["content"][1]) == \
               (r["objects"], r["boxes"], r["solution"], r["messages"][-1]["content"][1])
        assert r["background"] == p["background"] + " gradient"
        a, b = image_of(p).astype(int), image_of(r).astype(int)
        h, w = a.shape[:2]
        painted = np.zeros((h, w), dtype=bool)
        for o in r["objects"]:
            inside = shape_pixels(b, o)
            if [q["colour"] for q in r["objects"]].count(o["colour"]) == 1:
                assert mask_box(np.all(b == COLOURS[o["colour"]], axis=-1)) == o["box"]  # no background pixel has it
            painted |= inside
        assert np.array_equal(a[painted], b[painted])  # shapes untouched
        bg, grey = b[~painted], a[~painted]
        assert np.array_equal(bg[:, 1], grey[:, 1])  # green: the grey itself
        assert np.all(bg.max(axis=1) - bg.min(axis=1) <= amp)  # faint: never a saturated (shape) colour
        if noise_prob == 0.0:  # plain grey: the ramp is exactly readable, monotone in x (red) and y (blue)
            level = int(grey[0, 0])
            dx, dy = b[:, :, 0] - level, b[:, :, 2] - level
            sign = 1 if level < 128 else -1
            ys, xs = np.nonzero(~painted)
            want_x = np.rint(np.linspace(0, amp, w)).astype(int)[xs] * sign
            want_y = np.rint(np.linspace(0, amp, h)).astype(int)[ys] * sign
            assert np.array_equal(dx[ys, xs], want_x) and np.array_equal(dy[ys, xs], want_y)
            assert abs(int(dx[ys, xs].max() - dx[ys, xs].min())) >= amp - 2  # spans the image
    with pytest.raises(ValueError):
        generate("grounding", 1, gradient=100)  # could reach a shape colour's channel spread
    assert generate("grounding", 3, seed=5) == generate("grounding", 3, seed=5, gradient=0)  # default: unchanged


def test_shape_scale_sets_the_shape_sizes_and_keeps_boxes_exact():
    """Options.shape_scale: each shape's square is that fraction of the image side (boxes still exact, shapes
    apart); None keeps the task's default; bad ranges are refused."""
    rows = generate("grounding", 20, seed=3, sizes=((56, 56),), max_objects=2, shape_scale=(0.3, 0.45))
    sides = [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for r in rows for o in r["objects"]]
    assert min(sides) >= round(0.3 * 56) - 2 and max(sides) <= round(0.45 * 56)
    default = generate("grounding", 20, seed=3, sizes=((56, 56),), max_objects=2)
    assert max(max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for r in default for o in r["objects"]) <= 17
    for r in rows:
        for o in r["objects"]:
            shape_pixels(image_of(r), o)
    assert generate("grounding", 3, seed=5) == generate("grounding", 3, seed=5, shape_scale=None)
    for bad in ((0.5, 0.3), (0.0, 0.2), (0.5, 0.95)):
        with pytest.raises(ValueError, match="shape_scale"):
            generate("grounding", 1, shape_scale=bad)


def test_compass_relation_words_change_only_the_words():
    """relation_words='compass' draws the very same scenes and boxes; only the relation's words differ, and the
    prompt carries them."""
    opts = dict(sizes=((56, 56),), shape_scale=(0.3, 0.45), min_objects=3, max_objects=3, noise_prob=0.0)
    plain = generate("grounding", 40, seed=3, **opts)
    compass = generate("grounding", 40, seed=3, relation_words="compass", **opts)
    assert {r["relation"] for r in compass} == {"left", "right", "above", "below"}
    for p, c in zip(plain, compass):
        assert c["solution"] == p["solution"] and c["objects"] == p["objects"] and c["relation"] == p["relation"]
        words = RELATION_WORDS["compass"][c["relation"]]
        plain_words = RELATIONS[p["relation"]]
        assert c["expression"] == p["expression"].replace(f" {plain_words} ", f" {words} ", 1) != p["expression"]
        assert words in c["messages"][-1]["content"][1]["text"]
    with pytest.raises(ValueError, match="relation_words must be one of"):
        StudyOptions(relation_words="nautical").check()
