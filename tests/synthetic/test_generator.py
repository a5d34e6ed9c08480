"""The synthetic shapes generator: exact pixel boxes, unique grounding referents, determinism, options."""

from __future__ import annotations

import numpy as np
import pytest

from grader import compile as grader_compile
from synthetic import COLOURS, generate, make_row, referents, to_jsonl
from synthetic import grader_spec as synthetic_grader
from synthetic.shapes import (RELATION_WORDS, RELATIONS, SIZES, Options, beyond, decode_data_url, holds, holds_in_line, mask_box,
                              opposite_side, to_space)

TASKS = ("detection", "grounding", "classification")


def image_of(row: dict) -> np.ndarray:
    url = row["messages"][-1 if row["messages"][-1]["role"] == "user" else -2]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return np.asarray(decode_data_url(url))


def shape_pixels(img: np.ndarray, obj: dict) -> np.ndarray:
    """The pixels of `obj`'s colour inside its box (a boolean mask of the image); its box must enclose them exactly."""
    same = np.all(img == COLOURS[obj["colour"]], axis=-1)
    inside = np.zeros_like(same)
    x1, y1, x2, y2 = obj["box"]
    inside[y1:y2, x1:x2] = same[y1:y2, x1:x2]
    assert mask_box(inside) == obj["box"]
    return inside


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[dict]]:
    return {task: generate(task, 40, seed=11) for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_boxes_enclose_exactly_the_shape_pixels(scenes, task):
    checked_unique = 0
    for row in scenes[task]:
        img = image_of(row)
        h, w = img.shape[:2]
        assert (w, h) == (row["width"], row["height"]) and row["image_size"] == [w, h]
        objects = row["objects"]
        colours = [o["colour"] for o in objects]
        painted = np.zeros((h, w), dtype=bool)
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, o
            assert x2 - x1 >= 10 and y2 - y1 >= 10, o  # big enough to see
            same = np.all(img == COLOURS[o["colour"]], axis=-1)
            inside = np.zeros_like(same)
            inside[y1:y2, x1:x2] = same[y1:y2, x1:x2]
            # the box is the tight box of the shape's pixels (exclusive ends), not a pixel more or less
            assert mask_box(inside) == [x1, y1, x2, y2], (row["id"], o)
            painted |= inside
            if colours.count(o["colour"]) == 1:  # a colour of its own: nothing of it outside the box
                assert mask_box(same) == [x1, y1, x2, y2], (row["id"], o)
                assert same.sum() == inside.sum()
                checked_unique += 1
        # everything else is background: grey (R == G == B), never a shape colour
        bg = img[~painted]
        assert np.all(bg[:, 0] == bg[:, 1]) and np.all(bg[:, 1] == bg[:, 2]), row["id"]
    assert checked_unique >= 40


def test_reference_boxes_match_the_scene(scenes):
    for row in scenes["detection"]:
        want = sorted((o["box"] for o in row["objects"] if f"{o['colour']} {o['shape']}" == row["category"]),
                      key=lambda b: (b[1], b[0]))
        assert row["boxes"] == want
        assert len(want) <= 2
        assert row["solution"] == ("No Objects" if not want else
                                   "[" + ", ".join(f"{{'Position': {b}, 'Confidence': 1}}" for b in want) + "]")
    for row in scenes["grounding"]:
        assert row["boxes"] == [row["objects"][row["target"]]["box"]]
        assert row["solution"] == str(row["boxes"][0])
    for row in scenes["classification"]:
        (obj,) = row["objects"]
        assert row["label"] == f"{obj['colour']} {obj['shape']}" == row["solution"]
        assert row["boxes"] == [obj["box"]]


def test_detection_mixes_counts_and_hard_negatives():
    rows = generate("detection", 120, seed=3)
    counts = {len(r["boxes"]) for r in rows}
    assert counts == {0, 1, 2}
    hard = 0
    for r in rows:
        colour, shape = r["category"].rsplit(" ", 1)
        others = [o for o in r["objects"] if f"{o['colour']} {o['shape']}" != r["category"]]
        hard += any(o["colour"] == colour or o["shape"] == shape for o in others)
        assert 1 <= len(r["objects"]) <= 5
        plural = shape + ("es" if shape == "cross" else "s")
        assert r["messages"][-1]["content"][1]["text"].startswith(f"Detect all {colour} {plural} in the image.")
    assert hard > 30


def test_grounding_referent_is_unique_and_needs_the_relation(scenes):
    needs_relation = 0
    for row in scenes["grounding"]:
        objects, t, a, rel = row["objects"], row["target"], row["anchor"], row["relation"]
        name = lambda o: f"{o['colour']} {o['shape']}"  # noqa: E731
        assert row["expression"] == f"the {name(objects[t])} {RELATIONS[rel]} the {name(objects[a])}"
        assert sum(name(o) == name(objects[a]) for o in objects) == 1, row["id"]  # the anchor is unique
        assert referents(objects, name(objects[t]), rel, name(objects[a])) == [t], row["id"]
        assert holds(rel, objects[t]["box"], objects[a]["box"])
        same_class = [i for i, o in enumerate(objects) if name(o) == name(objects[t])]
        needs_relation += len(same_class) > 1
        assert row["expression"] in row["messages"][-1]["content"][1]["text"]
    assert needs_relation >= 15  # decoys of the target's class exist, on the other side of the anchor


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


def test_opposite_side_is_beyond_the_centre_and_not_in_the_relation():
    anchor = [20, 20, 36, 36]
    assert opposite_side("left", [30, 0, 46, 16], anchor)  # overlaps the anchor's columns, centre to its right
    assert not opposite_side("left", [10, 0, 26, 16], anchor)  # centre to its left
    assert not opposite_side("left", [0, 0, 16, 16], anchor)  # left of it
    assert opposite_side("above", [0, 30, 16, 46], anchor) and not opposite_side("below", [0, 30, 16, 46], anchor)


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
        assert referents(objects, target, rel, anchor, in_line=True) == [t], row["id"]
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
    assert holds("left", [0, 40, 16, 56], anchor) and not holds_in_line("left", [0, 40, 16, 56], anchor)  # below its rows
    assert holds_in_line("below", [25, 40, 41, 56], anchor) and not holds_in_line("below", [0, 40, 16, 56], anchor)
    assert beyond("left", [0, 0, 10, 10], [5, 0, 15, 10]) and not beyond("right", [0, 0, 10, 10], [5, 0, 15, 10])


def test_classification_is_fine_grained():
    rows = generate("classification", 150, seed=5)
    labels = {r["label"] for r in rows}
    colours = {r["colour"] for r in rows}
    assert {"red", "dark red", "blue", "light blue", "green", "dark green"} <= colours
    assert len(labels) > 40
    for r in rows:
        assert len(r["objects"]) == 1
        text = r["messages"][-1]["content"][1]["text"]
        assert "dark red" in text and "hexagon" in text  # the classes are listed


def test_image_sizes_survive_smart_resize():
    from grader.images import smart_resize

    rows = generate("detection", 60, seed=9)
    seen = {(r["width"], r["height"]) for r in rows}
    assert len(seen) >= 5 and seen <= set(SIZES)
    for w, h in SIZES:  # the tiny model's 28*28*4 .. 28*28*64 pixels: the model sees the image as given
        assert smart_resize(h, w, 28, 28 * 28 * 4, 28 * 28 * 64) == (h, w)
        assert smart_resize(h, w) == (h, w)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = to_jsonl(generate("detection", 8, seed=0))
    assert a == to_jsonl(generate("detection", 8, seed=0))
    assert a != to_jsonl(generate("detection", 8, seed=1))
    assert a != to_jsonl(generate("detection", 8, seed=0, split="valid"))
    # row i does not depend on how many rows are generated
    assert to_jsonl(generate("detection", 3, seed=0)) == b"".join(a.splitlines(keepends=True)[:3])
    for task in ("grounding", "classification"):
        assert to_jsonl(generate(task, 5, seed=2, sft=True)) == to_jsonl(generate(task, 5, seed=2, sft=True))
        assert to_jsonl(generate(task, 5, seed=2)) != to_jsonl(generate(task, 5, seed=3))


def test_sft_rows_are_rft_rows_plus_the_answer():
    for task in TASKS:
        rl, sft = make_row(task, 4, 7), make_row(task, 4, 7, sft=True)
        assert sft["messages"][:-1] == rl["messages"]
        assert {k: v for k, v in sft.items() if k != "messages"} == {k: v for k, v in rl.items() if k != "messages"}
        last = sft["messages"][-1]
        assert last["role"] == "assistant" and isinstance(last["content"], str)
        assert last["content"].startswith("<think>") and last["content"].endswith(f"<answer>{rl['solution']}</answer>")
        short = make_row(task, 4, 7, sft=True, short=True)
        assert short["messages"][-1]["content"] == f"<answer>{rl['solution']}</answer>"
        assert "<think>" not in short["messages"][-2]["content"][1]["text"]


def test_coordinates_option_changes_prompt_and_solution_not_boxes():
    px = make_row("grounding", 1, 0)
    k = make_row("grounding", 1, 0, opts=Options(coordinates="norm1000"))
    f = make_row("grounding", 1, 0, opts=Options(coordinates="norm1"))
    assert px["boxes"] == k["boxes"] == f["boxes"]  # references stay in pixels
    w, h = px["width"], px["height"]
    assert f"{w}x{h} image" in px["messages"][-1]["content"][1]["text"]
    assert "0 to 1000" in k["messages"][-1]["content"][1]["text"]
    assert (px["coordinates"], k["coordinates"], f["coordinates"]) == ("pixel", "norm1000", "norm1")
    assert k["solution"] == str(to_space(px["boxes"][0], w, h, "norm1000"))
    back = [v / 1000 * s for v, s in zip(eval(k["solution"]), (w, h, w, h))]
    assert max(abs(a - b) for a, b in zip(back, px["boxes"][0])) <= 0.5 + 1e-9


def test_prompts_and_answers_stay_short():
    """Character caps standing in for tokens: with the tiny model's tokenizer these rows measured at most
    145 prompt tokens (system + text) and 60 tokens for a short-style answer (about 3 characters a token)."""
    for task in TASKS:
        for short in (False, True):
            for row in generate(task, 30, seed=1, sft=True, short=short, coordinates="norm1000"):
                prompt = row["messages"][0]["content"] + row["messages"][1]["content"][1]["text"]
                assert len(prompt) <= 450, (task, short, len(prompt))
                assert len(row["messages"][-1]["content"]) <= (130 if short else 180)


def test_options_overlap_system_and_errors():
    rows = generate("detection", 20, seed=4, overlap=0.15, max_objects=5, system=None, noise_prob=0.0, empty_prob=0.0)
    assert all(r["messages"][0]["role"] == "user" for r in rows)
    assert all(r["boxes"] and "noise" not in r["background"] for r in rows)
    for bad in (dict(coordinates="norm100"), dict(max_objects=0), dict(colours=["red", "teal"]), dict(overlap=1.0)):
        with pytest.raises(ValueError):
            generate("detection", 1, **bad)
    with pytest.raises(ValueError):
        generate("segmentation", 1)


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
        assert c["expression"] == p["expression"].replace(f" {RELATIONS[p['relation']]} ", f" {words} ", 1) != p["expression"]
        assert words in c["messages"][-1]["content"][1]["text"]
    with pytest.raises(ValueError, match="relation_words must be one of"):
        Options(relation_words="nautical").check()
