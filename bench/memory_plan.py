"""The memory plan (trainer/memory.py) against measured peaks: real trainer runs on the CPU.

    nice python bench/memory_plan.py [--only NAME ...] [--work /tmp/vrft-memory-plan] [--out FILE.json]

Builds the tiny Qwen2-VL and the real-width, depth-cut Qwen2.5-VL-3B (`python -m trainer.tiny_model --like
qwen2.5-vl-3b --layers 1`: hidden 2048, intermediate 11008, 16 heads, 2 KV heads, vocabulary 151936, tied
embeddings; vision width 1280, 16 heads, intermediate 3420; 1 text layer and 1 vision block: 0.45B parameters,
most of them the embedding; bf16 on disk, trained in fp32), writes a few image prompts (224x224 images: 64
image tokens each), and runs one optimizer step of SFT and GRPO (transformers rollouts), with LoRA and full
fine-tuning, ZeRO-0 and (SFT) ZeRO-3 with optimizer and parameter offload, through `python -m trainer JOB.json`, one
run at a time. Measured: the largest `memory.rss_peak_mb` of the run's metrics events (the trainer process's
peak RSS up to the end of its step: loading, rollouts, forward, backward, optimizer step; not the final save),
minus the peak RSS of a process that only imports what the trainer imports (torch, transformers, DeepSpeed,
peft, the grader). On the CPU "per device" is the process, and offloaded state stays in it, so the estimate
compared is `Estimate.total` with device="cpu" (offloaded bytes included, no CUDA context). fp32, 1 rank.

A run is skipped (and said so) when the machine's available memory is under 1.3x its estimate + 2 GiB (GRPO with
full fine-tuning under ZeRO-3 and offload, ~18 GiB with its reference on one CPU rank, did not fit beside the
other work of a 24 GiB machine). About 4 minutes on 2 cores with the models built (half a minute more to build
them); 12 minutes while other jobs shared the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1 << 30
GRADER = {"type": "string_check", "name": "colour", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
          "operation": "ilike"}
COLOURS = {"red": (220, 20, 20), "green": (20, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
IMAGE = (224, 224)  # 8 x 8 tokens of 28 x 28 pixels: 64 image tokens, 256 patches

# (name, model, method, hyperparameters beyond the common ones)
RUNS = [
    ("tiny-sft-full-z0", "tiny", "supervised", {}),
    ("tiny-grpo-full-z0", "tiny", "reinforcement", {}),
    ("3b-L1-sft-lora-z0", "3b-L1", "supervised", {"lora": {"r": 16}}),
    ("3b-L1-sft-lora-z0-b8", "3b-L1", "supervised", {"lora": {"r": 16}, "batch_size": 8}),  # activations x4
    ("3b-L1-grpo-lora-z0", "3b-L1", "reinforcement", {"lora": {"r": 16}}),
    ("3b-L1-sft-full-z0", "3b-L1", "supervised", {}),
    ("3b-L1-sft-full-z3-offload", "3b-L1", "supervised",
     {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}),
    ("3b-L1-grpo-full-z0", "3b-L1", "reinforcement", {}),
    ("3b-L2-sft-lora-gc", "3b-L2", "supervised", {"lora": {"r": 16}, "gradient_checkpointing": True}),
]
COMMON = {"n_epochs": 1, "batch_size": 2, "eval_interval": 1}
RFT = {"num_generations": 4, "max_completion_length": 16, "max_eval_prompts": 1}


def trainer_env(work: Path) -> dict:
    env = dict(os.environ)
    env.update({"DS_ACCELERATOR": "cpu", "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2", "HF_HOME": str(work / "hf"),
                "PYTHONPATH": str(REPO), "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")})
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "VRFT_ZERO_STAGE"):
        env.pop(k, None)
    return env


def baseline_mb(work: Path) -> float:
    """Peak RSS of a process that imports what the trainer imports before it loads a model."""
    code = ("import resource, torch, transformers, deepspeed, peft, grader, trainer.grpo, trainer.sft\n"
            "from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration, "
            "Qwen2_5_VLForConditionalGeneration\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], env=trainer_env(work), capture_output=True, text=True,
                         cwd=REPO, check=True)
    return float(out.stdout.split()[-1])


def write_data(folder: Path) -> dict:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    out = {}
    for split, n in (("train", 2), ("valid", 1)):
        for sft in (False, True):
            rows = []
            for i in range(n):
                colour = rng.choice(sorted(COLOURS))
                img = Image.new("RGB", IMAGE, (245, 245, 245))
                x, y = rng.randrange(10, 100), rng.randrange(10, 100)
                ImageDraw.Draw(img).ellipse([x, y, x + 90, y + 90], fill=COLOURS[colour])
                path = folder / f"{split}-{i}.png"
                img.save(path)
                row = {"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": path.absolute().as_uri()}},
                    {"type": "text", "text": "What colour is the circle? Think, then answer in <answer> tags."}]}],
                    "label": colour}
                if sft:
                    row["messages"].append({"role": "assistant", "content":
                                            f"<think>The circle is {colour}.</think><answer>{colour}</answer>"})
                rows.append(row)
            path = folder / f"{split}{'-sft' if sft else ''}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            out[(split, sft)] = path
    return out


def shape_of(model: Path, data: Path, method: str) -> dict:
    """Text tokens and image tokens of the first training row as the trainer renders it."""
    from trainer.data import ChatData, read_jsonl
    from trainer.model import load_processor

    processor = load_processor(str(model), True)
    rows, lines = read_jsonl(data)
    d = ChatData(rows, lines, processor, True, "training file")
    image_id = json.loads((model / "config.json").read_text())["image_token_id"]
    ids = d.prompt(0).input_ids if method == "reinforcement" else d.sft_example(0)[0]
    n_image = sum(1 for t in ids if t == image_id)
    return {"prompt_tokens": len(ids) - n_image, "image_tokens": n_image}


def run(name: str, model: Path, method: str, hp: dict, data: dict, work: Path, base_mb: float) -> dict:
    from trainer import memory
    from trainer.job_spec import JobSpec

    sft = method == "supervised"
    hp = {**COMMON, **({} if sft else RFT), **hp}
    config = json.loads((model / "config.json").read_text())
    shape = shape_of(model, data[("train", sft)], method)
    job = memory.job_from_hyperparameters(config, method, hp, 1, rows=2, device="cpu", images=1,
                                          prompt_tokens=shape["prompt_tokens"], rollout_engine="hf",
                                          image_size=IMAGE)
    est = memory.estimate(config, job)
    row = {"name": name, "model": model.name, "method": method, "hyperparameters": hp,
           "parameters": est.parameters, "trainable": est.trainable, "estimate": est.gib(), **shape,
           "estimate_gib": est.total / GIB}
    avail = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable"))) * 1024
    if avail < 1.3 * est.total + 2 * GIB:
        row["skipped"] = f"{avail / GIB:.1f} GiB available"
        return row
    folder = work / "runs" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = JobSpec(job_id=f"ftjob-{name}", method=method, model_path=str(model), train_file=str(data[("train", sft)]),
                   validation_file=str(data[("valid", sft)]), output_dir=str(folder / "out"), hyperparameters=hp,
                   grader=None if sft else GRADER, seed=0, rollout_engine="hf")
    spec.write(folder / "job.json")
    t0 = time.monotonic()
    with open(folder / "trainer.log", "wb") as log:
        rc = subprocess.run(["nice", sys.executable, "-m", "trainer", str(folder / "job.json")], cwd=REPO,
                            env=trainer_env(work), stdout=log, stderr=subprocess.STDOUT, timeout=900).returncode
    events = [json.loads(x) for x in (folder / "out" / "events.jsonl").read_text().splitlines()] \
        if (folder / "out" / "events.jsonl").exists() else []
    peaks = [e["data"]["memory"]["rss_peak_mb"] for e in events if e.get("type") == "metrics"
             and (e.get("data") or {}).get("memory")]
    row.update(rc=rc, seconds=round(time.monotonic() - t0, 1))
    if rc != 0 or not peaks:
        row["error"] = (folder / "trainer.log").read_text()[-2000:]
        return row
    row["peak_rss_gib"] = max(peaks) / 1024
    row["measured_gib"] = (max(peaks) - base_mb) / 1024
    row["ratio"] = row["estimate_gib"] / max(row["measured_gib"], 1e-3)
    shutil.rmtree(folder / "out", ignore_errors=True)  # final/ holds the weights again
    return row


def settings_text(r: dict) -> str:
    hp = r["hyperparameters"]
    parts = [f"LoRA r {hp['lora']['r']}" if hp.get("lora") else "full"]
    parts.append(f"ZeRO-{hp.get('zero_stage', 0)}")
    if hp.get("offload_optimizer"):
        parts.append("offload opt+params" if hp.get("offload_params") else "offload opt")
    if hp.get("gradient_checkpointing"):
        parts.append("grad ckpt")
    if r["method"] == "reinforcement":
        parts.append(f"B {hp['batch_size']} x G {hp['num_generations']}, C {hp['max_completion_length']}")
    else:
        parts.append(f"B {hp['batch_size']}")
    parts.append(f"prompt {r['prompt_tokens']} + {r['image_tokens']} image tokens")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="run names (default: all)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vrft-memory-plan")
    ap.add_argument("--out", type=Path, default=None, help="the runs as JSON (default: WORK/memory_plan.json)")
    args = ap.parse_args()
    work = args.work
    (work / "models").mkdir(parents=True, exist_ok=True)
    # each build in its own process: a child inherits its parent's peak RSS (ru_maxrss survives exec)
    models = {}
    for name, folder, like in (("tiny", "tiny-qwen2-vl", []),
                               ("3b-L1", "qwen2.5-vl-3b-L1", ["--like", "qwen2.5-vl-3b", "--layers", "1"]),
                               ("3b-L2", "qwen2.5-vl-3b-L2", ["--like", "qwen2.5-vl-3b", "--layers", "2"])):
        models[name] = work / "models" / folder
        subprocess.run([sys.executable, "-m", "trainer.tiny_model", "--out", str(models[name]), *like],
                       check=True, env=trainer_env(work), cwd=REPO)
    data = write_data(work / "data")
    base = baseline_mb(work)
    print(f"baseline (imports only): {base / 1024:.2f} GiB peak RSS", flush=True)
    rows = []
    for name, model, method, hp in RUNS:
        if args.only and name not in args.only:
            continue
        r = run(name, models[model], method, hp, data, work, base)
        rows.append(r)
        got = (f"measured {r['measured_gib']:.2f} GiB, ratio {r['ratio']:.2f}" if "measured_gib" in r
               else r.get("skipped") or "failed: " + r.get("error", "")[-600:])
        print(f"{name}: estimate {r['estimate_gib']:.2f} GiB {r['estimate']}; {got} ({r.get('seconds', 0)} s)",
              flush=True)
    out = args.out or work / "memory_plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"baseline_mb": base, "runs": rows}, indent=1) + "\n")
    print("\n| model | method | settings | estimate GiB | measured GiB | ratio |\n|---|---|---|---|---|---|")
    for r in rows:
        m = f"{r['measured_gib']:.2f}" if "measured_gib" in r else r.get("skipped", "failed")
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        label = f"{r['model']} ({r['parameters'] / 1e6:.1f}M)"
        meth = "SFT" if r["method"] == "supervised" else "GRPO"
        print(f"| {label} | {meth} | {settings_text(r)} | {r['estimate_gib']:.2f} | {m} | {ratio} |")


if __name__ == "__main__":
    main()
