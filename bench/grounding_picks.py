"""Where a grounding model's boxes land: which shape each answer picks, and how well it frames it.

The learning benchmark gives one number a stage (mean IoU). This splits it, on the same kind of rows:

- **picks** of the greedy answers: the box lands on the target, on a *decoy* (a shape of the target's class,
  which only the relation in the prompt rules out), on another shape (the anchor, or a third one), or on no
  shape (best IoU with any shape under 0.2, or no box);
- **IoU when right**: the mean IoU of the answers that picked the target, which is the framing precision;
- with `--samples G`, the mean and best-of-G IoU of G answers at temperature 1. That is what GRPO samples and
  optimises, beside the greedy answer the benchmark scores.

    VRFT_HOME=/tmp/exp/h .venv/bin/python bench/grounding_picks.py ft:e6:default:learn-grounding-rft:FUZmOmBX \\
        --rows 128 --samples 8 --image-size 56 --plain-background --shape-scale 0.3 0.45 --min-objects 3 --max-objects 3

MODEL is a model folder, or a model id that the service in VRFT_HOME serves (a fine-tuned id is fetched from its
storage, as the chat endpoint does). The rows are the held-out split with seed 10000, which is the benchmark's
seed 0 held-out rows and more. `--split train --seed S` gives the benchmark's training rows of seed S.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import synthetic  # noqa: E402
from bench.bench_learning import add_scene_arguments, model_folder, sample_answers, task_options  # noqa: E402
from grader.boxes import iou, parse_boxes  # noqa: E402

PICKS = ("target", "decoy", "other", "none")
ON_A_SHAPE = 0.2
"""An answer whose best IoU with every shape is under this lands on no shape."""


def class_of(obj: dict) -> str:
    return f"{obj['colour']} {obj['shape']}"


def answer_box(text: str) -> list[float] | None:
    """The first box of an answer, or None (the grader's own parser)."""
    boxes = parse_boxes(text)
    return list(boxes[0][0]) if boxes else None


def classify(box: list[float] | None, row: dict) -> str:
    """Which shape of `row` (a synthetic grounding row) the box picks: one of PICKS."""
    if box is None:
        return "none"
    objects = row["objects"]
    overlaps = [iou(box, o["box"]) for o in objects]
    best = max(range(len(objects)), key=overlaps.__getitem__)
    if overlaps[best] < ON_A_SHAPE:
        return "none"
    if best == row["target"]:
        return "target"
    return "decoy" if class_of(objects[best]) == class_of(objects[row["target"]]) else "other"


def has_decoy(row: dict) -> bool:
    """Whether another shape of the target's class is in the scene: only the relation tells them apart."""
    target = class_of(row["objects"][row["target"]])
    return sum(class_of(o) == target for o in row["objects"]) > 1


def analyse(rows: list[dict], greedy: list[str], sampled: list[list[str]] | None = None) -> dict:
    """Pick counts, mean IoU, IoU when right and decoy-row accuracy of greedy answers; sample stats if given."""
    boxes = [answer_box(t) for t in greedy]
    picks = [classify(b, r) for b, r in zip(boxes, rows)]
    ious = [iou(b, r["boxes"][0]) if b else 0.0 for b, r in zip(boxes, rows)]
    decoy_rows = [p for p, r in zip(picks, rows) if has_decoy(r)]
    right = [v for v, p in zip(ious, picks) if p == "target"]
    out = {"rows": len(rows), "mean_iou": statistics.fmean(ious), "picks": {k: Counter(picks)[k] for k in PICKS},
           "decoy_rows": len(decoy_rows),
           "decoy_rows_right": decoy_rows.count("target") / len(decoy_rows) if decoy_rows else None,
           "iou_when_right": statistics.fmean(right) if right else None}
    if sampled:
        per_row = [[iou(b, r["boxes"][0]) if b else 0.0 for b in map(answer_box, texts)]
                   for texts, r in zip(sampled, rows)]
        out.update(sample_mean_iou=statistics.fmean(statistics.fmean(s) for s in per_row),
                   best_of_g_iou=statistics.fmean(max(s) for s in per_row),
                   within_group_std=statistics.fmean(statistics.pstdev(s) for s in per_row))
    return out


def report(stats: dict) -> str:
    right = stats["decoy_rows_right"]
    lines = [f"mean IoU {stats['mean_iou']:.3f} over {stats['rows']} rows; picks "
             + ", ".join(f"{k} {v}" for k, v in stats["picks"].items()),
             f"decoy rows {stats['decoy_rows']}, target picked in "
             + (f"{right:.0%}" if right is not None else "-")
             + f"; IoU when right {stats['iou_when_right'] or 0:.3f}"]
    if "sample_mean_iou" in stats:
        lines.append(f"samples at temperature 1: mean IoU {stats['sample_mean_iou']:.3f}, best of G "
                     f"{stats['best_of_g_iou']:.3f}, within-group std {stats['within_group_std']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model folder, or a model id the service in VRFT_HOME serves")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--split", default="valid", choices=("valid", "train"))
    ap.add_argument("--seed", type=int, default=None, help="row seed (default: 10000 held-out, 0 train)")
    ap.add_argument("--samples", type=int, default=0, metavar="G", help="also G answers a row at temperature 1")
    add_scene_arguments(ap)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else (10_000 if args.split == "valid" else 0)
    rows = synthetic.generate("grounding", args.rows, seed=seed, split=args.split, **task_options(args))
    folder = Path(args.model) if Path(args.model).is_dir() else model_folder(args.model)
    greedy = [g[0] for g in sample_answers(folder, rows, 24)]
    sampled = sample_answers(folder, rows, 24, args.samples, 1.0) if args.samples else None
    print(report(analyse(rows, greedy, sampled)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
