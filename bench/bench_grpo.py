"""Time per GRPO step: this project's trainer against TRL's GRPOTrainer, same run, same settings.

Both train the tiny Qwen2-VL on the same synthetic image prompts with the same reward (the grader library's
string_check on the colour, called as a TRL reward function for TRL), the same G, completion length,
learning rate, beta 0, loss "dapo", fp32, and the same fixed number of torch threads. Each runs in its own
subprocess; the first `--warmup` steps are dropped and the median step time of the rest is compared.

    python bench/bench_grpo.py [--steps 30] [--warmup 5] [--threads 1] [--engine hf hf-compile vllm] [--rounds 1]

Ours: `python -m trainer JOB.json`; a step's time is the `timing.step.full_iteration` of its metrics event
(sampling, grading, loss, optimizer step, weight sync). TRL: wall time between `on_step_end` callbacks
(generation, reward, loss, optimizer step). Setup (model load, vLLM start) is excluded for both, and so
are the first `--warmup` steps (with `hf-compile`, the first step holds torch.compile's one-off compile of
the decode step: printed as "first step"). TRL runs on its defaults (transformers' `generate`, no compile).

On a shared machine the load drifts between the runs; `--rounds R` alternates TRL and ours R times (each
round in its own folder) and reports, per trainer, the median over rounds of its median step time, and the
median over rounds of each round's ratio to TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLOURS = {"red": (220, 20, 20), "green": (20, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
GRADER = {"type": "string_check", "name": "colour", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
          "operation": "ilike"}
QUESTION = "What colour is the shape? Answer with one word."


def make_data(folder: Path, n: int) -> list[dict]:
    """n rows with a 56x56 image of one coloured square and the colour as `label`."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        img = Image.new("RGB", (56, 56), (245, 245, 245))
        x, y = rng.randrange(2, 20), rng.randrange(2, 20)
        ImageDraw.Draw(img).rectangle([x, y, x + 24, y + 24], fill=COLOURS[colour])
        path = folder / f"{i}.png"
        img.save(path)
        rows.append({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": path.as_uri()}}, {"type": "text", "text": QUESTION}]}],
            "label": colour, "image_path": str(path)})
    return rows


def bench_env(work: Path, threads: int) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu",
                "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1", "VLLM_CACHE_ROOT": str(work / "vllm-cache"), "PYTHONPATH": str(REPO),
                "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "1"})
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_ours(model: Path, train: Path, work: Path, args, engine: str) -> list[float]:
    from trainer.job_spec import JobSpec

    out = work / f"ours-{engine}"
    job = JobSpec(job_id="bench", method="reinforcement", model_path=str(model), train_file=str(train),
                  output_dir=str(out), grader=GRADER, seed=0, rollout_engine=engine.removesuffix("-compile"),
                  rollout_compile=engine.endswith("-compile"), hyperparameters={
                      "batch_size": args.prompts, "num_generations": args.generations,
                      "max_completion_length": args.tokens, "n_epochs": 1000, "beta": 0.0, "loss_type": "dapo",
                      "learning_rate": args.lr, "lr_scheduler": "constant", "eval_interval": 10 ** 6,
                      "temperature": 1.0})
    # n_epochs large, then stop the run with SIGTERM once enough steps are logged.
    work.mkdir(parents=True, exist_ok=True)
    job.write(work / f"job-{engine}.json")
    log = open(work / f"ours-{engine}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "trainer", str(work / f"job-{engine}.json")], cwd=REPO,
                            env=bench_env(work, args.threads), stdout=log, stderr=subprocess.STDOUT)
    events = out / "events.jsonl"
    times: list[float] = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if events.exists():
            times = [json.loads(line)["data"]["timing"]["step"]["full_iteration"]
                     for line in events.read_text().splitlines() if '"type": "metrics"' in line]
            if len(times) >= args.steps:
                break
    proc.terminate()
    proc.wait(60)
    if len(times) < args.steps:
        raise RuntimeError(f"our trainer logged {len(times)} steps; see {work}/ours-{engine}.log")
    return times[:args.steps]


def trl_peer_pieces(rows: list[dict], cuda: bool = False):
    """What TRL's GRPOTrainer needs to run our task, for the peers measured beside our trainer (this script and
    bench/gpu_check.py): the dataset of `rows` (`make_data`'s), the colour reward through our grader, the list
    of step times and the callback that fills it (synchronising CUDA around a step when `cuda`)."""
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback

    import grader

    ds = Dataset.from_list([{
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        "image": Image.open(r["image_path"]).convert("RGB"), "label": r["label"]} for r in rows])
    compiled = grader.compile(GRADER)

    def colour_reward(prompts, completions, label, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return compiled.grade(texts, [{"label": x} for x in label]).rewards

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    return ds, colour_reward, times, StepTimer


def trl_worker(model: str, rows_file: str, out_file: str, steps: int, prompts: int, generations: int,
               tokens: int, lr: float, threads: int) -> None:
    """Run in a subprocess: TRL's GRPOTrainer on the same data and reward; write the step times."""
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    ds, colour_reward, times, StepTimer = trl_peer_pieces(json.loads(Path(rows_file).read_text()))

    config = GRPOConfig(
        output_dir=str(Path(out_file).parent / "trl-out"), per_device_train_batch_size=prompts * generations,
        num_generations=generations, max_completion_length=tokens, learning_rate=lr, lr_scheduler_type="constant",
        beta=0.0, loss_type="dapo", temperature=1.0, num_iterations=1, max_steps=steps, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False, seed=0, dataloader_num_workers=0,
        gradient_accumulation_steps=1, disable_tqdm=True)
    model_obj = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model_obj, reward_funcs=colour_reward, args=config, train_dataset=ds,
                          processing_class=AutoProcessor.from_pretrained(model), callbacks=[StepTimer()])
    trainer.train()
    Path(out_file).write_text(json.dumps(times))


def run_trl(model: Path, rows: list[dict], work: Path, args) -> list[float]:
    rows_file = work / "rows.json"
    rows_file.write_text(json.dumps(rows))
    out = work / "trl-times.json"
    cmd = [sys.executable, __file__, "--trl-worker", str(model), str(rows_file), str(out), str(args.steps),
           str(args.prompts), str(args.generations), str(args.tokens), str(args.lr), str(args.threads)]
    with open(work / "trl.log", "wb") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=bench_env(work, args.threads), stdout=log, stderr=subprocess.STDOUT,
                            timeout=1800).returncode
    if rc != 0:
        raise RuntimeError(f"TRL run failed ({rc}); see {work}/trl.log")
    return json.loads(out.read_text())


def summary(name: str, times: list[float], warmup: int, samples_per_step: int) -> dict:
    kept = times[warmup:]
    med = statistics.median(kept)
    return {"name": name, "steps": len(kept), "median_s": med, "mean_s": statistics.fmean(kept), "first_s": times[0],
            "p90_s": sorted(kept)[int(0.9 * (len(kept) - 1))], "samples_per_s": samples_per_step / med}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--trl-worker":
        a = sys.argv[2:]
        trl_worker(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]), float(a[7]), int(a[8]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (G)")
    p.add_argument("--tokens", type=int, default=32, help="max completion length")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--engine", nargs="+", choices=["hf", "hf-compile", "vllm"], default=["hf", "hf-compile", "vllm"],
                   help="our rollout engines to time (hf-compile: hf with torch.compile'd decode steps)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: build the tiny model)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--rounds", type=int, default=1, help="alternate TRL and ours this many times")
    args = p.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.model is None:
        from trainer.tiny_model import build_tiny_model

        args.model = build_tiny_model(work / "tiny-qwen2-vl", seed=0)
    rows = make_data(work / "images", 64)
    train = work / "train.jsonl"
    train.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "image_path"}) + "\n" for r in rows))
    per_step = args.prompts * args.generations
    rounds = []  # per round: [trl, ours-...] summaries
    for k in range(args.rounds):
        folder = work if args.rounds == 1 else work / f"round-{k + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        res = [summary("trl", run_trl(args.model, rows, folder, args), args.warmup, per_step)]
        for engine in args.engine:
            res.append(summary(f"ours-{engine}", run_ours(args.model, train, folder, args, engine), args.warmup,
                               per_step))
        for r in res:
            r["x_trl"] = r["median_s"] / res[0]["median_s"]
        rounds.append(res)
        if args.rounds > 1:
            print(f"round {k + 1}: " + ", ".join(f"{r['name']} {r['median_s']:.4f} s ({r['x_trl']:.2f}x)" for r in res),
                  flush=True)
    results = [{key: (statistics.median(rnd[i][key] for rnd in rounds) if key != "name" else r[key]) for key in r}
               for i, r in enumerate(rounds[0])]  # one round: its numbers as they are
    print(
        f"\nGRPO step time, tiny Qwen2-VL, {args.prompts} prompts x {args.generations} samples, "
        f"{args.tokens} tokens, {args.threads} thread(s), fp32, beta 0, dapo; "
        f"median of {args.steps - args.warmup} steps"
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    print(f"{'trainer':<16} {'median s/step':>14} {'mean':>8} {'p90':>8} {'samples/s':>10} {'x TRL time':>11} "
          f"{'first step s':>13}")
    for r in results:
        print(f"{r['name']:<16} {r['median_s']:>14.4f} {r['mean_s']:>8.4f} {r['p90_s']:>8.4f} "
              f"{r['samples_per_s']:>10.1f} {r['x_trl']:>11.2f} {r['first_s']:>13.2f}")
    print("first step: not in the median; it holds one-off costs (hf-compile: torch.compile of the decode step, "
          "shorter once its kernels are cached)")
    (work / "results.json").write_text(
        json.dumps({"summary": results, "rounds": rounds} if args.rounds > 1 else results, indent=2)
    )
    print(f"(details in {work})")


if __name__ == "__main__":
    main()
