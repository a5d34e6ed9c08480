"""Grader throughput, printed as a table.

    python bench/bench_graders.py [--samples 4096] [--python-samples 20000] [--quick]

1. `iou` detection grader (10 boxes per sample, Visual-RFT's `[{'Position': [...], 'Confidence': c}]` answers
   in 0-1000 coordinates) against a straight port of Visual-RFT's Python reward loop
   (tests/grader/visual_rft_port.py: extract_bbox, remove_duplicates, sort_and_calculate_iou,
   compute_reward_iou_v2, the confidence reward; without its math_verify call, which only makes the port
   slower), in this process, on the same samples; the rewards are checked equal first. Rows: a GRPO-shaped
   batch (8 completions per prompt share their row) and one with a distinct row per sample; the IoU term
   alone, and IoU + confidence terms (the port runs its two reward functions, the grader computes both in one pass).
   Timed as CPU time of this process (both sides are single-threaded), best of --repeats. The grader uses
   numba kernels for batches of 64+ when numba is installed (it comes with vLLM), numpy otherwise
   (VRFT_GRADER_NUMBA=0 forces numpy; the row label says which ran).
2. python grader: a trivial grade() through the warm sandbox pool against one sandboxed process per
   sample (same grader, same sandbox, as many at once as there are cores), wall-clock time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grader  # noqa: E402
from tests.grader.visual_rft_port import (  # noqa: E402
    accuracy_reward_confidence,
    accuracy_reward_iou,
    make_detection_samples,
)


def best_of(fn, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def bench_iou(n: int, repeats: int) -> list[tuple]:
    contents, sols = make_detection_samples(n, boxes=10, seed=0)
    rows = []
    for layout, group in (("8 per prompt", 8), ("1 per prompt", 1)):
        items_unique = [{"solution": s} for s in sols]
        items = [items_unique[i // group * group] for i in range(n)]
        solutions = [it["solution"] for it in items]
        for terms, weight, port in (
            ("IoU", None, lambda: accuracy_reward_iou(contents, solutions)),
            ("IoU + confidence", 0.5, lambda: (accuracy_reward_iou(contents, solutions),
                                               accuracy_reward_confidence(contents, solutions))),
        ):
            spec = {"type": "iou", "name": "det", "reference": "{{item.solution}}"}
            if weight is not None:
                spec["confidence_weight"] = weight
            g = grader.compile(spec)
            res = g.grade(contents, items)
            want_iou = accuracy_reward_iou(contents, solutions)
            got_iou = [s["iou"] for s in res.scores]
            assert max(abs(a - b) for a, b in zip(got_iou, want_iou)) < 1e-12, "rewards differ from the port"
            if weight is not None:
                want_conf = accuracy_reward_confidence(contents, solutions)
                assert max(abs(s["confidence"] - b) for s, b in zip(res.scores, want_conf)) < 1e-12
            # both run in this one process, one after the other: CPU time of the process, so that other
            # work on the machine does not decide the ratio
            t_port = best_of(port, max(2, repeats // 2), time.process_time)
            t_ours = best_of(lambda: g.grade(contents, items), repeats, time.process_time)
            engine = grader.box_engine(n)
            rows.append((f"iou detection ({engine}), {terms}, {layout}", n / t_port, n / t_ours, t_port / t_ours, 20))
    return rows


def bench_python(n: int, per_process: int, repeats: int) -> list[tuple]:
    from grader.sandbox import PythonGraderPool, SandboxConfig, grade_once

    source = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['reference'] else 0.0\n"
    samples = [{"output_text": str(i % 3)} for i in range(n)]
    items = [{"reference": "1"}] * n
    cfg = SandboxConfig()
    cores = os.cpu_count() or 1
    with PythonGraderPool(source, cfg) as pool:
        pool.warm()
        assert sum(r.score for r in pool.grade(samples, items)) == sum(1 for s in samples if s["output_text"] == "1")
        t_pool = best_of(lambda: pool.grade(samples, items), repeats)
    few = samples[:per_process]

    def one_each():
        with ThreadPoolExecutor(cores) as ex:
            out = list(ex.map(lambda s: grade_once(source, s, items[0], cfg), few))
        assert all(r.score is not None for r in out)

    t_each = best_of(one_each, 1)
    return [(f"python grader, trivial, {cores} workers ({pool.mode})", per_process / t_each, n / t_pool,
             (n / t_pool) / (per_process / t_each), 50)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4096, help="iou samples per batch")
    ap.add_argument("--python-samples", type=int, default=20000)
    ap.add_argument(
        "--per-process-samples", type=int, default=64, help="samples for the one-process-per-sample baseline"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--skip-python", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.samples, a.python_samples, a.per_process_samples, a.repeats = 512, 2000, 8, 2
    rows = bench_iou(a.samples, a.repeats)
    if not a.skip_python:
        rows += bench_python(a.python_samples, a.per_process_samples, a.repeats)
    head = ("benchmark", "baseline samples/s", "grader samples/s", "speed-up", "target")
    table = [head] + [(r[0], f"{r[1]:,.0f}", f"{r[2]:,.0f}", f"{r[3]:.1f}x", f">= {r[4]}x") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    print(f"cpu cores: {os.cpu_count()}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for j, row in enumerate(table):
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
