"""research/probe_image_tokens.py: which object each image token is labelled with, and that the probe reads what
the features hold (colour from a random model's tokens, which keep the pixels' colour) and no more (chance on
shuffled labels)."""

from __future__ import annotations

import synthetic
from research import probe_image_tokens as probe
from research import scenes

SCENE = dict(short=True, sizes=((56, 56),), noise_prob=0.0, min_objects=4, max_objects=4, shape_scale=(0.3, 0.45),
             decoy="other_anchor")


def test_each_token_gets_the_object_whose_centre_lies_in_its_square() -> None:
    row = {"width": 56, "height": 56, "objects": [
        {"colour": "red", "shape": "circle", "box": [0, 0, 20, 20]},  # centre (10, 10): token 0
        {"colour": "blue", "shape": "star", "box": [30, 2, 50, 22]},  # centre (40, 12): token 1
        {"colour": "pink", "shape": "cross", "box": [2, 30, 22, 50]},  # centre (12, 40): token 2
        {"colour": "cyan", "shape": "square", "box": [40, 40, 54, 54]},  # centre (47, 47): token 3
    ]}
    assert [o["colour"] for o in probe.labels([row], (2, 2))[0]] == ["red", "blue", "pink", "cyan"]
    row["objects"][3]["box"] = [4, 4, 18, 18]  # a second centre in token 0: ambiguous, and token 3 is empty
    assert probe.labels([row], (2, 2))[0] == [None, row["objects"][1], row["objects"][2], None]


def test_a_random_models_tokens_hold_colour_and_shuffled_labels_stay_at_chance(tmp_path) -> None:
    import torch

    from trainer.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "m", seed=0)
    rows = scenes.generate("grounding", 240, seed=4, **SCENE)
    feats, grid = probe.image_tokens(folder, rows)
    assert grid == (2, 2) and feats.shape[:2] == (240, 4)
    cells = probe.labels(rows, grid)
    names = list(synthetic.COLOURS)
    x, y = probe.labelled(feats, cells, lambda j, o: names.index(o["colour"]))
    _, places = probe.labelled(feats, cells, lambda j, o: j)
    assert places.tolist() == [j for c in cells for j, o in enumerate(c) if o is not None]
    assert len(y) == sum(o is not None for c in cells for o in c) and x.shape == (len(y), feats.shape[2])
    half = len(y) // 2
    assert probe.probe(x[:half], y[:half], x[half:], y[half:], len(names)) > 0.5  # chance is 1/12
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert probe.probe(x[:half], shuffled[:half], x[half:], shuffled[half:], len(names)) < 0.25


def test_naming_counts_colour_and_shape_apart() -> None:
    rows = synthetic.generate("classification", 3, seed=1, short=True, sizes=((56, 56),))
    r0, r1, r2 = rows
    wrong_colour = next(c for c in synthetic.COLOURS if c != r1["colour"] and " " not in c)
    answers = [f"<answer>{r0['colour']} {r0['shape']}</answer>",  # right
               f"<answer>{wrong_colour} {r1['shape']}</answer>",  # the shape only
               "<answer>circle</answer>" if r2["shape"] != "circle" else "<answer>square</answer>"]  # nothing
    assert probe.naming(rows, answers) == {"colour": 1 / 3, "shape": 2 / 3, "both": 1 / 3}
