"""Where a grounding model's boxes land: which shape each answer picks, and how well it frames it.

The learning benchmark gives one number a stage (mean IoU). This splits it, on the same kind of rows:

- **picks** of the greedy answers: the box lands on the target, on a *decoy* (a shape of the target's class,
  which only the relation in the prompt rules out), on another shape (the anchor, or a third one), or on no
  shape (best IoU with any shape under 0.2, or no box);
- **IoU when right**: the mean IoU of the answers that picked the target, which is the framing precision;
- with `--samples G`, the mean and best-of-G IoU of G answers at temperature 1. That is what GRPO samples and
  optimises, beside the greedy answer the benchmark scores.

    VRFT_HOME=/tmp/exp/h .venv/bin/python research/grounding_picks.py ft:e6:default:learn-grounding-rft:FUZmOmBX \\
        --rows 128 --samples 8 --image-size 56 --plain-background --shape-scale 0.3 0.45 --min-objects 3 --max-objects 3

In decoy rows it also gives the share of answers on the target's class that land on the farthest such shape in
the relation's direction (a position rule that needs no anchor), and with samples the share that pick the target.
For `--think-anchor` answers, whose `<think>` gives the anchor's box first, it also gives how often that box
lands on the anchor, and how often the answer is right when it does.

MODEL is a model folder, or a model id that the service in VRFT_HOME serves (a fine-tuned id is fetched from its
storage, as the chat endpoint does). The rows are the held-out split with seed 10000, which is the benchmark's
seed 0 held-out rows and more. `--split train --seed S` gives the benchmark's training rows of seed S.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grader.boxes import boxes_from_value, iou, parse_boxes  # noqa: E402
from research import scenes  # noqa: E402
from research.learning import add_scene_arguments, model_folder, sample_answers, task_grader, task_options  # noqa: E402
from synthetic import beyond  # noqa: E402

PICKS = ("target", "decoy", "other", "none")
ON_A_SHAPE = 0.2
"""An answer whose best IoU with every shape is under this lands on no shape."""


def class_of(obj: dict) -> str:
    return f"{obj['colour']} {obj['shape']}"


def answer_box(text: str) -> list[float] | None:
    """The first box inside an answer's <answer> tags (the whole text when there are none), or None (the
    grader's own parser)."""
    try:
        boxes = boxes_from_value(text)
    except ValueError:
        return None
    return list(boxes[0][0]) if boxes else None


def think_box(text: str) -> list[float] | None:
    """The first box inside an answer's <think> tags, or None."""
    m = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    boxes = parse_boxes(m.group(1)) if m else []
    return list(boxes[0][0]) if boxes else None


def picked(box: list[float] | None, row: dict) -> int | None:
    """Index of the shape of `row` that the box lands on (best IoU), or None for no box or no shape."""
    if box is None:
        return None
    overlaps = [iou(box, o["box"]) for o in row["objects"]]
    best = max(range(len(overlaps)), key=overlaps.__getitem__)
    return best if overlaps[best] >= ON_A_SHAPE else None


def classify(box: list[float] | None, row: dict) -> str:
    """Which shape of `row` (a synthetic grounding row) the box picks: one of PICKS."""
    best = picked(box, row)
    if best is None:
        return "none"
    if best == row["target"]:
        return "target"
    objects = row["objects"]
    return "decoy" if class_of(objects[best]) == class_of(objects[row["target"]]) else "other"


def farthest_of_class(row: dict) -> int:
    """The shape of the target's class farthest in the relation's direction (by centre): what a position rule
    ("of the shapes named X, the one farthest left") picks without reading the anchor."""
    target = class_of(row["objects"][row["target"]])
    boxes = {i: o["box"] for i, o in enumerate(row["objects"]) if class_of(o) == target}
    return next(i for i, box in boxes.items() if not any(beyond(row["relation"], b, box) for b in boxes.values()))


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
    # in decoy rows, of the answers on a shape of the target's class: the share on the farthest one
    on_class = [picked(b, r) == farthest_of_class(r) for b, p, r in zip(boxes, picks, rows)
                if has_decoy(r) and p in ("target", "decoy")]
    out = {"rows": len(rows), "mean_iou": statistics.fmean(ious), "picks": {k: Counter(picks)[k] for k in PICKS},
           "decoy_rows": len(decoy_rows),
           "decoy_rows_right": decoy_rows.count("target") / len(decoy_rows) if decoy_rows else None,
           "farthest_picked": statistics.fmean(on_class) if on_class else None,
           "farthest_is_target": statistics.fmean(farthest_of_class(r) == r["target"] for r in rows if has_decoy(r))
           if decoy_rows else None,
           "iou_when_right": statistics.fmean(right) if right else None}
    thinks = [think_box(t) for t in greedy]
    if any(thinks):  # --think-anchor answers: did the reasoning find the anchor, and did the answer follow it?
        at = [picked(b, r) for b, r in zip(thinks, rows)]
        found = [i == r["anchor"] for i, r in zip(at, rows)]
        after = [p == "target" for p, f in zip(picks, found) if f]
        # of the <think> boxes on a shape: how many are on one of the anchor's colour (what reading its name finds)
        colour = [r["objects"][r["anchor"]]["colour"] for r in rows]
        landed = [(r["objects"][i]["colour"] == c, statistics.fmean(o["colour"] == c for o in r["objects"]))
                  for i, r, c in zip(at, rows, colour) if i is not None]
        out.update(anchor_found=statistics.fmean(found),
                   target_when_anchor_found=statistics.fmean(after) if after else None,
                   think_on_anchor_colour=statistics.fmean(on for on, _ in landed) if landed else None,
                   think_on_anchor_colour_chance=statistics.fmean(share for _, share in landed) if landed else None)
    if sampled:
        per_row = [[iou(b, r["boxes"][0]) if b else 0.0 for b in map(answer_box, texts)]
                   for texts, r in zip(sampled, rows)]
        target_share = [statistics.fmean(classify(answer_box(t), r) == "target" for t in texts)
                        for texts, r in zip(sampled, rows) if has_decoy(r)]
        out.update(sample_mean_iou=statistics.fmean(statistics.fmean(s) for s in per_row),
                   best_of_g_iou=statistics.fmean(max(s) for s in per_row),
                   within_group_std=statistics.fmean(statistics.pstdev(s) for s in per_row),
                   decoy_rows_sample_target=statistics.fmean(target_share) if target_share else None,
                   decoy_rows_some_sample_target=(statistics.fmean(v > 0 for v in target_share)
                                                  if target_share else None))
    return out


def report(stats: dict) -> str:
    right = stats["decoy_rows_right"]
    lines = [f"mean IoU {stats['mean_iou']:.3f} over {stats['rows']} rows; picks "
             + ", ".join(f"{k} {v}" for k, v in stats["picks"].items()),
             f"decoy rows {stats['decoy_rows']}, target picked in "
             + (f"{right:.0%}" if right is not None else "-")
             + f"; IoU when right {stats['iou_when_right'] or 0:.3f}"]
    if stats["farthest_picked"] is not None:
        lines.append(f"position rule: of the decoy-row answers on the target's class, {stats['farthest_picked']:.0%} "
                     f"on the one farthest in the relation's direction (the target is that one in "
                     f"{stats['farthest_is_target']:.0%} of decoy rows)")
    if "anchor_found" in stats:
        after = stats["target_when_anchor_found"]
        lines.append(f"reasoning: the <think> box lands on the anchor in {stats['anchor_found']:.0%} of rows; "
                     "the answer picks the target in " + (f"{after:.0%}" if after is not None else "-") + " of those")
        if stats["think_on_anchor_colour"] is not None:
            lines.append("the <think> box is on a shape of the anchor's colour in "
                         f"{stats['think_on_anchor_colour']:.0%} "
                         f"of the rows where it is on a shape (a shape drawn at random: "
                         f"{stats['think_on_anchor_colour_chance']:.0%})")
    if "sample_mean_iou" in stats:
        lines.append(f"samples at temperature 1: mean IoU {stats['sample_mean_iou']:.3f}, best of G "
                     f"{stats['best_of_g_iou']:.3f}, within-group std {stats['within_group_std']:.3f}")
    if stats.get("decoy_rows_sample_target") is not None:
        lines.append(f"decoy rows: {stats['decoy_rows_sample_target']:.0%} of samples pick the target; "
                     f"{stats['decoy_rows_some_sample_target']:.0%} of rows have a sample that does")
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
    rows = scenes.generate("grounding", args.rows, seed=seed, split=args.split, **task_options(args))
    folder = Path(args.model) if Path(args.model).is_dir() else model_folder(args.model)
    _, max_tokens = task_grader("grounding", task_options(args))
    greedy = [g[0] for g in sample_answers(folder, rows, max_tokens)]
    sampled = sample_answers(folder, rows, max_tokens, args.samples, 1.0) if args.samples else None
    print(report(analyse(rows, greedy, sampled)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
