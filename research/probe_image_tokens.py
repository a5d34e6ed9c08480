"""Can a linear probe read each shape's colour and shape off the image tokens a model's language side receives?

The learning benchmark's harder tasks name a shape ("the pink diamond directly left of the blue star"), and a
base that cannot find the named shape picks between look-alikes by chance (the seventh try,
research/results/earlier-tries.md). This tells where that fails. It runs the model's vision tower and patch
merger on generated scenes and fits a linear softmax probe, on the image tokens of half the scenes, for the
colour and for the shape of the object whose centre lies in each token's square. It then scores the probe on
the other half. A third probe reads the token's own place in the grid: a box is written from it. Qwen2/2.5-VL's
towers have only relative (rotary) positions, so there a token's features hold its place only if the model has
learnt to put it there; Qwen3-VL's adds a learnt absolute position to each patch.
- High accuracy: the names are in the tokens, and the failure is on the language side (matching words to tokens).
- Chance: the vision side never encodes them.

    .venv/bin/python research/probe_image_tokens.py /tmp/exp/e6/models/e6 --rows 2000 --image-size 56 \\
        --plain-background --shape-scale 0.3 0.45 --min-objects 4 --max-objects 4 --decoy other_anchor

Tokens whose square holds no object's centre, or two, are left out. Prints the accuracies and the majority
class's share, the accuracy of always guessing the most common label.

`--name-rows N` also asks the model to name the colour and shape of a lone shape (the classification task, the
same scene options) in N held-out images, greedy, and counts the colour, the shape and both right. The probe
says whether the image tokens hold a name; this says whether the language side reads it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import synthetic  # noqa: E402
from grader.templates import make_sample  # noqa: E402
from research import scenes  # noqa: E402
from research.learning import add_scene_arguments, generate_answers, task_grader, task_options  # noqa: E402
from synthetic import decode_data_url  # noqa: E402


def image_tokens(folder: Path, rows: list[dict], batch: int = 64):
    """[n, tokens, dim] merged image-token features (what the language model receives) and the token grid (h, w)."""
    import torch

    from trainer.model import load_model, load_processor

    processor = load_processor(str(folder), True)
    model = load_model(str(folder), True, torch.float32).eval()
    merge = model.config.vision_config.spatial_merge_size
    feats, grid = [], None
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            images = [decode_data_url(r["messages"][-1]["content"][0]["image_url"]["url"]) for r in rows[i:i + batch]]
            enc = processor.image_processor(images=images, return_tensors="pt")
            per_image = model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output
            _, h, w = enc["image_grid_thw"][0].tolist()
            grid = (h // merge, w // merge)
            feats.append(torch.stack(per_image))
    return torch.cat(feats), grid


def labels(rows: list[dict], grid: tuple[int, int]) -> list[list[dict | None]]:
    """Per row, per token (row-major over the grid): the object whose centre lies in the token's square, or None."""
    out = []
    for r in rows:
        sx, sy = r["width"] / grid[1], r["height"] / grid[0]  # pixels one merged token covers
        cells: list[list[dict]] = [[] for _ in range(grid[0] * grid[1])]
        for o in r["objects"]:
            x0, y0, x1, y1 = o["box"]
            col, row = min(int((x0 + x1) / 2 / sx), grid[1] - 1), min(int((y0 + y1) / 2 / sy), grid[0] - 1)
            cells[row * grid[1] + col].append(o)
        out.append([c[0] if len(c) == 1 else None for c in cells])
    return out


def labelled(feats, cells: list[list[dict | None]], label: Callable[[int, dict], int]):
    """(x [k, dim], y [k]) over the tokens that hold one object: its features, and `label(token index, object)`
    (e.g. the index of the object's colour). `feats` and `cells` cover the same rows."""
    import torch

    pairs = [(feats[i, j], label(j, o)) for i, row in enumerate(cells) for j, o in enumerate(row) if o]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


def probe(train_x, train_y, test_x, test_y, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of a linear softmax classifier (standardised inputs, weight decay, Adam)."""
    import torch

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    layer = torch.nn.Linear(train_x.shape[1], classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (layer(test_x).argmax(1) == test_y).float().mean().item()


def naming(rows: list[dict], answers: list[str]) -> dict[str, float]:
    """Share of classification `rows` whose answer names the right colour, shape and both."""
    said = [make_sample(a)["answer"].rsplit(" ", 1) for a in answers]  # what the classification grader reads
    said = [w if len(w) == 2 else ["", w[0]] for w in said]
    n = len(rows)
    return {"colour": sum(w[0] == r["colour"] for w, r in zip(said, rows)) / n,
            "shape": sum(w[1] == r["shape"] for w, r in zip(said, rows)) / n,
            "both": sum(w == [r["colour"], r["shape"]] for w, r in zip(said, rows)) / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model folder")
    ap.add_argument("--rows", type=int, default=2000, help="scenes (half to fit the probe, half to score it)")
    ap.add_argument("--seed", type=int, default=40_000)
    ap.add_argument("--name-rows", type=int, default=0, metavar="N", help="also ask the model to name N lone shapes")
    add_scene_arguments(ap)
    args = ap.parse_args(argv)
    rows = scenes.generate("grounding", args.rows, seed=args.seed, split="valid", **task_options(args))
    feats, grid = image_tokens(Path(args.model), rows)
    cells = labels(rows, grid)
    half = args.rows // 2
    print(f"{args.model}: {feats.shape[1]} image tokens a scene ({grid[0]}x{grid[1]}), {feats.shape[2]} features")
    # colour and shape: what a name in the prompt must be matched against; the token's place in the grid: what
    # an answer's box must be read from
    colours, shapes = list(synthetic.COLOURS), list(synthetic.SHAPES)
    places = [f"{r},{c}" for r in range(grid[0]) for c in range(grid[1])]
    for attr, names, label in (("colour", colours, lambda j, o: colours.index(o["colour"])),
                               ("shape", shapes, lambda j, o: shapes.index(o["shape"])),
                               ("place in the grid", places, lambda j, o: j)):
        train = labelled(feats[:half], cells[:half], label)
        test = labelled(feats[half:], cells[half:], label)
        acc = probe(*train, *test, len(names))
        test_y = test[1].tolist()
        majority = Counter(test_y).most_common(1)[0][1] / len(test_y)
        print(f"{attr}: probe accuracy {acc:.1%} on {len(test_y)} held-out tokens ({len(names)} classes; "
              f"majority class {majority:.1%})")
    if args.name_rows:
        lone = scenes.generate("classification", args.name_rows, seed=args.seed, split="valid", **task_options(args))
        answers = generate_answers(Path(args.model), lone, task_grader("classification", task_options(args))[1])
        named = naming(lone, answers)
        print(f"naming a lone shape ({args.name_rows} images): colour {named['colour']:.0%} (chance "
              f"{1 / len(synthetic.COLOURS):.0%}), shape {named['shape']:.0%} "
              f"(chance {1 / len(synthetic.SHAPES):.0%}), "
              f"both {named['both']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
