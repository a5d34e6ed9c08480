"""One measured run of the trainer on a GPU: GRPO and SFT steps of our trainer, then TRL's GRPOTrainer on the same
model, data, G, lengths and reward, and the ratio of their GRPO step times. Sized for 8 minutes on one H100/H200.

    python bench/gpu_check.py                                  # CUDA, random-init Qwen2.5-VL-3B at full depth
    python bench/gpu_check.py --device cpu --like tiny --steps 3 --warmup 1 --tokens 8    # the CPU smoke run

The model is built by `python -m trainer.tiny_model --like qwen2.5-vl-3b` (real shapes, random weights; `--like
tiny`: the tiny test model), or taken from `--model DIR`. The data and reward are bench/bench_grpo.py's: one
coloured square per image, "what colour?", the string_check grader on the colour. Our trainer runs as the service
runs it (`python -m trainer JOB.json`) with the transformers rollout engine (vLLM's CUDA wheel waits for a user's
host); TRL runs on its defaults (transformers' `generate`). Both: beta 0, loss "dapo", temperature 1, bf16 on a
GPU (fp32 on the CPU), one process. The first `--warmup` steps are dropped; figures are medians of the rest.

Printed, per run: step time, sampled tokens/s (completion tokens / sampling time), trained tokens/s (prompt and
completion tokens of the step / training time; SFT: the examples' tokens / step time), peak memory (GPU: torch's
peak allocation; CPU: the process's peak RSS) and MFU: model FLOPs / (step time x the GPU's peak bf16 FLOP/s),
where model FLOPs count 6 N per trained token and 2 N per sampled token, N the language model's parameters (the
vision tower's FLOPs and attention's are left out). On the CPU MFU is n/a (no stated peak). Results also go
to WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_grpo import GRADER, make_data, trl_peer_pieces  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks from NVIDIA's data sheets (SXM parts), by a substring of the device's name."""


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])) if k in device_name), None)


def child_env(device: str, threads: int) -> dict:
    """A trainer or TRL process: no hub; on the CPU, DeepSpeed's and vLLM's CPU platforms and `threads` threads."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
    if device == "cpu":
        env.update({"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "VLLM_TARGET_DEVICE": "cpu",
                    "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def build_model(args, work: Path) -> Path:
    if args.model is not None:
        return args.model
    if args.like == "tiny":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from trainer.tiny_model import build_tiny_model

        return build_tiny_model(work / "tiny-qwen2-vl", seed=0)
    out = work / args.like
    cmd = [sys.executable, "-m", "trainer.tiny_model", "--like", args.like, "--out", str(out)]
    subprocess.run(cmd + (["--layers", str(args.layers)] if args.layers else []), cwd=REPO, check=True,
                   env=child_env("cpu", os.cpu_count() or 1))  # the weights are drawn on the host
    return out


def lm_parameters(model: Path) -> int:
    """The language model's parameters (the FLOPs per token of text), from config.json (trainer/memory.py's count)."""
    from trainer.memory import count_parameters

    n = count_parameters(json.loads((model / "config.json").read_text()))
    return n.total - n.vision


# ------------------------------------------------------------------------------------------------ our trainer

def run_ours(method: str, model: Path, rows: list[dict], work: Path, args) -> dict:
    """`python -m trainer` for exactly args.steps steps of `method`; its metrics events and its final event."""
    from trainer.job_spec import JobSpec

    folder = work / f"ours-{method}"
    folder.mkdir(parents=True, exist_ok=True)
    rl = method == "reinforcement"
    batch = args.prompts if rl else args.sft_batch
    train = folder / "train.jsonl"
    with open(train, "w") as f:  # steps x batch rows, one epoch: the run is exactly args.steps steps
        for i in range(args.steps * batch):
            r = rows[i % len(rows)]
            messages = r["messages"] + ([] if rl else [{"role": "assistant", "content": r["label"]}])
            f.write(json.dumps({"messages": messages, "label": r["label"]}) + "\n")
    hp = {"n_epochs": 1, "batch_size": batch, "learning_rate": args.lr, "lr_scheduler": "constant",
          "eval_interval": 10 ** 6, "gradient_checkpointing": args.gradient_checkpointing}
    if rl:
        hp.update(num_generations=args.generations, max_completion_length=args.tokens, beta=0.0, loss_type="dapo",
                  temperature=1.0)
    job = JobSpec(job_id=f"gpu-check-{method}", method=method, model_path=str(model), train_file=str(train),
                  output_dir=str(folder / "out"), grader=GRADER if rl else None, seed=0, rollout_engine="hf",
                  hyperparameters=hp)
    job.write(folder / "job.json")
    with open(folder / "trainer.log", "wb") as log:
        rc = subprocess.run([sys.executable, "-m", "trainer", str(folder / "job.json")], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env=child_env(args.device, args.threads), timeout=1800).returncode
    events = [json.loads(line) for line in (folder / "out" / "events.jsonl").read_text().splitlines()]
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    final = next((e for e in events if e["type"] == "final"), None)
    if rc != 0 or final is None or len(metrics) != args.steps:
        raise RuntimeError(f"our {method} run failed (exit {rc}, {len(metrics)} steps); see {folder}/trainer.log")
    # GRPO's count is every prompt and completion token trained on; SFT's counts only the supervised (assistant)
    # tokens, so its forward/backward tokens are counted here, from the examples as the trainer encodes them.
    trained = final["trained_tokens"] if rl else example_tokens(model, train)
    return {"metrics": metrics, "trained_tokens": trained}


def example_tokens(model: Path, train: Path) -> int:
    """The tokens (image tokens included) of every SFT example of `train`, encoded as trainer/sft.py encodes them."""
    from trainer.data import ChatData, read_jsonl
    from trainer.model import is_vision_model, load_processor

    vision = is_vision_model(str(model))
    rows, lines = read_jsonl(train)
    data = ChatData(rows, lines, load_processor(str(model), vision), vision, "training file")
    return sum(len(data.sft_example(i)[0]) for i in range(len(data)))


def summarise_ours(method: str, run: dict, args, n_lm: int, peak: float | None) -> dict:
    kept = run["metrics"][args.warmup:]
    step = statistics.median(m["timing"]["step"]["full_iteration"] for m in kept)
    per_step_trained = run["trained_tokens"] / args.steps
    memory = max(m["memory"].get("gpu_peak_mb", m["memory"]["rss_peak_mb"]) for m in run["metrics"])
    out = {"name": f"ours {'GRPO' if method == 'reinforcement' else 'SFT'}", "step_s": step, "peak_memory_mb": memory}
    if method == "reinforcement":
        sampled = [m["usage"]["samples"]["train_completion_tokens_count"] for m in run["metrics"]]
        # Trained tokens of a step: its prompts (the same length every step: same question and image size) and
        # its completions; the prompts' share is what the final count holds beyond all completions.
        prompt_per_step = (run["trained_tokens"] - sum(sampled)) / args.steps
        out["sampled_tokens_per_s"] = statistics.median(
            s / m["timing"]["step"]["sampling"] for s, m in zip(sampled[args.warmup:], kept))
        out["trained_tokens_per_s"] = statistics.median(
            (prompt_per_step + s) / m["timing"]["step"]["training"] for s, m in zip(sampled[args.warmup:], kept))
        flops = 6 * n_lm * per_step_trained + 2 * n_lm * statistics.fmean(sampled)
    else:
        out["sampled_tokens_per_s"] = None
        out["trained_tokens_per_s"] = per_step_trained / step
        flops = 6 * n_lm * per_step_trained
    out["mfu"] = flops / (step * peak) if peak else None
    return out


# ------------------------------------------------------------------------------------------------ TRL

def trl_worker(spec_file: str) -> None:
    """In its own process: TRL's GRPOTrainer on the same model, data and reward; writes step times and peak memory."""
    spec = json.loads(Path(spec_file).read_text())
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from trainer.process import memory_stats

    cuda = spec["device"] == "cuda"
    if not cuda:
        torch.set_num_threads(spec["threads"])
    ds, colour_reward, times, StepTimer = trl_peer_pieces(spec["rows"], cuda=cuda)

    g = spec["generations"]
    config = GRPOConfig(
        output_dir=str(Path(spec_file).parent / "trl-out"), per_device_train_batch_size=spec["prompts"] * g,
        num_generations=g, max_completion_length=spec["tokens"], learning_rate=spec["lr"],
        lr_scheduler_type="constant", beta=0.0, loss_type="dapo", temperature=1.0, num_iterations=1,
        max_steps=spec["steps"], logging_steps=1, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda,
        fp16=False, seed=0, dataloader_num_workers=0, gradient_accumulation_steps=1, disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"])
    model = AutoModelForImageTextToText.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=colour_reward, args=config, train_dataset=ds,
                          processing_class=AutoProcessor.from_pretrained(spec["model"]), callbacks=[StepTimer()])
    trainer.train()
    mem = memory_stats()
    Path(spec["out"]).write_text(json.dumps({"times": times, "peak_memory_mb": mem.get("gpu_peak_mb",
                                                                                          mem["rss_peak_mb"])}))


def run_trl(model: Path, rows: list[dict], work: Path, args) -> dict:
    folder = work / "trl"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"model": str(model), "rows": rows, "out": str(folder / "result.json"), "device": args.device,
            "threads": args.threads, "steps": args.steps, "prompts": args.prompts, "generations": args.generations,
            "tokens": args.tokens, "lr": args.lr, "gradient_checkpointing": args.gradient_checkpointing}
    (folder / "spec.json").write_text(json.dumps(spec))
    with open(folder / "trl.log", "wb") as log:
        rc = subprocess.run([sys.executable, __file__, "--trl-worker", str(folder / "spec.json")], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, env=child_env(args.device, args.threads),
                            timeout=1800).returncode
    if rc != 0 or not (folder / "result.json").exists():
        raise RuntimeError(f"the TRL run failed (exit {rc}); see {folder}/trl.log")
    result = json.loads((folder / "result.json").read_text())
    if len(result["times"]) != args.steps:
        raise RuntimeError(f"TRL ran {len(result['times'])} steps, not {args.steps}; see {folder}/trl.log")
    return result


# ------------------------------------------------------------------------------------------------ main

def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--trl-worker":
        trl_worker(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--like", default="qwen2.5-vl-3b", help="a --like preset of trainer/tiny_model.py, or tiny")
    p.add_argument("--layers", type=int, default=None, help="cut the preset's depth (default: full depth)")
    p.add_argument("--model", type=Path, default=None, help="an already built model folder (skips the build)")
    p.add_argument("--steps", type=int, default=8, help="steps per run (GRPO ours, SFT ours, GRPO TRL)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--tokens", type=int, default=64, help="max completion length")
    p.add_argument("--sft-batch", type=int, default=8, help="SFT examples per step")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--gradient-checkpointing", action="store_true", help="in both trainers")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU only: torch threads")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")

    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    device_name = "CPU"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device visible (use --device cpu --like tiny on a CPU machine)")
        device_name = torch.cuda.get_device_name(0)
    peak = peak_flops(device_name) if args.device == "cuda" else None
    t0 = time.perf_counter()
    model = build_model(args, work)
    print(f"model {model} ({time.perf_counter() - t0:.0f} s)", flush=True)
    n_lm = lm_parameters(model)
    rows = make_data(work / "images", 64)

    results = []
    for method in ("reinforcement", "supervised"):
        t = time.perf_counter()
        results.append(summarise_ours(method, run_ours(method, model, rows, work, args), args, n_lm, peak))
        print(f"{results[-1]['name']}: {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    trl = run_trl(model, rows, work, args)
    print(f"TRL GRPO: {time.perf_counter() - t:.0f} s", flush=True)
    results.append({"name": "TRL GRPO", "step_s": statistics.median(trl["times"][args.warmup:]),
                    "sampled_tokens_per_s": None, "trained_tokens_per_s": None,
                    "peak_memory_mb": trl["peak_memory_mb"], "mfu": None})
    ratio = results[0]["step_s"] / results[-1]["step_s"]

    mem_kind = "GPU" if args.device == "cuda" else "RSS"
    print(f"\n{device_name}; model {model.name}, {n_lm / 1e6:,.1f}M language-model parameters; GRPO {args.prompts} "
          f"prompts x G={args.generations}, {args.tokens} tokens; SFT {args.sft_batch} examples; "
          f"median of {args.steps - args.warmup} steps after {args.warmup}; MFU against "
          + (f"{peak / 1e12:.0f} TFLOP/s bf16" if peak else "no stated peak (n/a)"))
    print(f"{'run':<10} {'step s':>9} {'sampled tok/s':>14} {'trained tok/s':>14} {f'peak {mem_kind} MiB':>15} "
          f"{'MFU':>7}")
    for r in results:
        print(f"{r['name']:<10} {r['step_s']:>9.3f} {fmt(r['sampled_tokens_per_s'], '.1f'):>14} "
              f"{fmt(r['trained_tokens_per_s'], '.1f'):>14} {r['peak_memory_mb']:>15.0f} "
              f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f') + ('%' if r['mfu'] else ''):>7}")
    print(f"GRPO step time ours / TRL: {ratio:.3f} ({results[0]['step_s']:.3f} s / {results[-1]['step_s']:.3f} s)")
    assert all(math.isfinite(r["step_s"]) for r in results)
    (work / "results.json").write_text(json.dumps({"device": device_name, "model": str(model), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": results,
        "ratio_ours_to_trl": ratio}, indent=2))
    print(f"(details in {work})")


if __name__ == "__main__":
    main()
