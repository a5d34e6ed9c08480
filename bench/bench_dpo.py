"""DPO's held-out margin before and after training, printed as trainer/README.md's table.

    python bench/bench_dpo.py [--train 64] [--valid 64] [--epochs 2] [--quick]

For each case: synthetic grounding preference rows (`python -m synthetic --dpo WRONG`: the right box preferred
to a wrong one: `space` the same box in 0-1000 coordinates when the prompt asks pixels, `other` the box of the
object the sentence names beside the target), a DPO job (`python -m trainer JOB.json`, batch 8, beta 0.1, the
method's base learning rate, seed 3) from a tiny random model, then `python -m trainer.dpo` on the held-out rows
(another stream of the generator): the log-prob margin log pi(y_w) - log pi(y_l) and the fraction of pairs where
it is positive, of the starting model and of the trained one, and the trained one's implicit reward margin and
accuracy against the starting model (beta x the change of the log-prob margin; 0 and 0 before training).
Runs on CPU (DS_ACCELERATOR=cpu); the figures are deterministic for a given torch build.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [  # (family, wrong answer, hyperparameters beyond the common ones)
    ("qwen2_vl", "space", {}),
    ("qwen2_vl", "other", {}),
    ("llava_onevision", "space", {"lora": {}, "freeze_vision": True}),
]


def run(cmd: list[str], env: dict) -> str:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=64, help="training pairs (default 64)")
    p.add_argument("--valid", type=int, default=64, help="held-out pairs (default 64)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="16 / 16 pairs, one epoch")
    a = p.parse_args()
    if a.quick:
        a.train, a.valid, a.epochs = 16, 16, 1
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    py = sys.executable
    print("| family | wrong answer | tuning | pairs train / held out | steps | held-out log-prob margin before -> "
          "after | accuracy before -> after | held-out reward margin / accuracy | train time |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family, wrong, hp in CASES:
            model = work / f"tiny-{family}"
            if not model.exists():
                run([py, "-m", "trainer.tiny_model", "--family", family, "--out", str(model)], env)
            data = work / f"pairs-{wrong}"
            if not data.exists():
                run([py, "-m", "synthetic", "--task", "grounding", "--n", str(a.train), "--valid", str(a.valid),
                     "--seed", "0", "--short", "--dpo", wrong, "--out", str(data)], env)
            train, valid = data / "grounding_short.train.dpo.jsonl", data / "grounding_short.valid.dpo.jsonl"
            out = work / f"out-{family}-{wrong}"
            job = {"job_id": "ftjob-bench-dpo", "method": "dpo", "model_path": str(model), "train_file": str(train),
                   "validation_file": str(valid), "output_dir": str(out), "seed": 3,
                   "hyperparameters": {"n_epochs": a.epochs, "batch_size": 8, "beta": 0.1, "eval_interval": 8, **hp}}
            (work / "job.json").write_text(json.dumps(job))
            t = time.perf_counter()
            run([py, "-m", "trainer", str(work / "job.json")], env)
            seconds = time.perf_counter() - t
            steps = max(json.loads(line).get("step", 0) for line in (out / "events.jsonl").read_text().splitlines())
            before = json.loads(run([py, "-m", "trainer.dpo", str(model), str(valid)], env))
            after = json.loads(run([py, "-m", "trainer.dpo", str(out / "final"), str(valid), "--reference",
                                    str(model), "--beta", "0.1"], env))
            tuning = "LoRA, frozen vision" if hp else "full"
            print(f"| {family} | {wrong} | {tuning} | {a.train} / {a.valid} | {steps} | "
                  f"{before['logp_margin']:+.2f} -> {after['logp_margin']:+.2f} | "
                  f"{before['logp_accuracy']:.2f} -> {after['logp_accuracy']:.2f} | "
                  f"{after['reward_margin']:+.3f} / {after['reward_accuracy']:.2f} | {seconds:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
