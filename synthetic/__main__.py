"""Write a synthetic Visual-RFT task as OpenAI fine-tuning JSONL plus its grader.

    python -m synthetic --task detection --n 64 --seed 0 --out DIR [--sft | --dpo [other|space]] [--short]
                        [--coordinates pixel|norm1000|norm1] [--split train] [--valid N]

Writes DIR/{stem}.{split}[.sft|.dpo].jsonl and DIR/{stem}.grader.json (stem: task [+ _short] [+ _coordinates]);
with --valid N also DIR/{stem}.valid[.sft|.dpo].jsonl (an independent stream of N rows). Prints one JSON
object with the paths and row counts.
"""

from __future__ import annotations

import argparse
import json
import sys

from synthetic.shapes import COORDINATES, TASKS, WRONG_ANSWERS, write_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--n", type=int, default=64, help="rows (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--sft", action="store_true", help="add the reference answer as an assistant message")
    p.add_argument("--dpo", nargs="?", const="other", choices=WRONG_ANSWERS, metavar="WRONG",
                   help="DPO preference rows: the reference answer preferred to a wrong box, of another object "
                        "(other, the default) or in another coordinate space (space); classification: another class")
    p.add_argument("--short", action="store_true", help="answers without the <think> part (small models)")
    p.add_argument("--coordinates", default="pixel", choices=COORDINATES,
                   help="coordinate space the prompt asks boxes in (default: pixels of the image)")
    p.add_argument("--split", default="train", help="name of the row stream (default train)")
    p.add_argument("--valid", type=int, default=0, metavar="N", help="also write N rows of the 'valid' split")
    p.add_argument("--max-objects", type=int, default=None)
    p.add_argument("--max-targets", type=int, default=None)
    p.add_argument("--empty-prob", type=float, default=None)
    p.add_argument("--noise-prob", type=float, default=None)
    p.add_argument("--overlap", type=float, default=None)
    p.add_argument("--no-system", action="store_true", help="no system message")
    a = p.parse_args(argv)
    if a.n < 1 or a.valid < 0:
        p.error("--n must be at least 1 and --valid at least 0")
    if a.sft and a.dpo:
        p.error("--sft and --dpo exclude each other")
    options = dict(short=a.short, coordinates=a.coordinates, max_objects=a.max_objects, max_targets=a.max_targets,
                   empty_prob=a.empty_prob, noise_prob=a.noise_prob, overlap=a.overlap)
    if a.no_system:
        options["system"] = None
    try:
        out = {"task": a.task}
        kinds = dict(sft=a.sft, dpo=bool(a.dpo), wrong=a.dpo or "other")
        paths = write_task(a.out, a.task, a.n, a.seed, split=a.split, **kinds, **options)
        out.update({a.split: str(paths["data"]), "grader": str(paths["grader"]), "rows": a.n})
        if a.valid:
            v = write_task(a.out, a.task, a.valid, a.seed, split="valid", **kinds, **options)
            out.update({"valid": str(v["data"]), "valid_rows": a.valid})
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
