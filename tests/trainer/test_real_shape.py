"""A real shape on the CPU (issue 21): the full-width, depth-cut Qwen2.5-VL-3B build (`python -m trainer.tiny_model
--like qwen2.5-vl-3b --layers 1`: hidden 2048, a 152k vocabulary, vision width 1280; one text layer and one vision
block, 0.45B parameters) through an SFT step and a GRPO step, both under ZeRO-3 with the optimizer and the
parameters offloaded to CPU memory. The SFT checkpoint, gathered from ZeRO-3's shards, is whole and trained, and
vLLM serves it with the tokens transformers gives; each run's peak memory stays within the memory plan's
estimate (trainer/memory.py) plus what importing the stack costs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.test_tiny_model import _check_vllm_matches, _hf_reference
from tests.trainer.conftest import load_safetensors, run_trainer, write_job
from tests.trainer.synth import make_rows, write_jsonl

ZERO3_OFFLOAD = {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}
# What the trainer's imports (torch, transformers, DeepSpeed, peft, vLLM's modules) hold before a model loads:
# 1.6-2.1 GiB measured here (bench/memory_plan.py's baseline); the estimate leaves it out.
IMPORTS_GIB = 2.5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two training rows and one validation row with answers: one optimizer step at batch size 2."""
    d = tmp_path_factory.mktemp("real-shape-data")
    return {"train": write_jsonl(d / "train.jsonl", make_rows(d / "img", 2, seed=0, assistant=True)),
            "valid": write_jsonl(d / "valid.jsonl", make_rows(d / "img", 1, seed=1, assistant=True))}


def _peak_gib(events: list[dict]) -> float:
    peaks = [e["data"]["memory"]["rss_peak_mb"] for e in events if e["type"] == "metrics" and "memory" in e["data"]]
    assert peaks, "no memory in the metrics events"
    return max(peaks) / 1024


def _estimate_gib(model: Path, method: str, job: Path, data: Path) -> float:
    """The memory plan's estimate for this job, from the model's config and the job's own hyperparameters."""
    from trainer import memory

    config = json.loads((model / "config.json").read_text())
    hp = json.loads(job.read_text())["hyperparameters"]
    plan = memory.check_job(config, method, hp, device_gib=1e6, rows=2, device="cpu", images=1,
                            rollout_engine="hf", image_size=(64, 64))
    return plan.estimate.total / memory.GIB


def test_sft_and_grpo_under_zero3_offload_and_the_checkpoint_served(qwen25_3b_l1, data, tmp_path: Path) -> None:
    base = qwen25_3b_l1[0]

    # SFT: every parameter trained, the optimizer state and the weights' shards in CPU memory
    sft_job = write_job(tmp_path / "sft", base, data, "supervised",
                        hyperparameters={"batch_size": 2, "eval_interval": 1, **ZERO3_OFFLOAD})
    rc, events, log = run_trainer(sft_job, tmp_path, timeout=900)
    assert rc == 0, log[-5000:]
    config = next(e for e in events if e["type"] == "config" or "config" in (e.get("data") or {}))
    hp = config["data"]["config"]
    assert (hp["zero_stage"], hp["offload_optimizer"], hp["offload_params"]) == (3, True, True), hp
    steps = [e for e in events if e["type"] == "metrics"]
    assert {e["step"] for e in steps} == {1} and math.isfinite(steps[0]["data"]["train_loss"]), steps
    sft_peak, sft_estimate = _peak_gib(events), _estimate_gib(base, "supervised", sft_job, data["train"])
    assert sft_peak <= sft_estimate * 1.25 + IMPORTS_GIB, (sft_peak, sft_estimate)

    # the checkpoint holds every tensor whole (gathered from the shards, not a rank's empty placeholders),
    # and the step changed the trained ones
    final = Path(json.loads(sft_job.read_text())["output_dir"]) / "final"
    before, after = load_safetensors(base), load_safetensors(final)
    assert before.keys() == after.keys()
    assert all(after[k].shape == before[k].shape for k in before)
    changed = [k for k in before if not before[k].float().equal(after[k].float())]
    assert any(k.startswith("visual.") for k in changed) and any(".layers.0.mlp." in k for k in changed), changed

    # GRPO from it: LoRA under ZeRO-3 offload, its reference the adapters switched off, rollouts by transformers
    grpo_job = write_job(tmp_path / "grpo", final, data, hyperparameters={
        "batch_size": 2, "num_generations": 2, "max_completion_length": 8, "eval_interval": 1,
        "lora": {"r": 8, "alpha": 16}, **ZERO3_OFFLOAD})
    rc, events, log = run_trainer(grpo_job, tmp_path, timeout=900)
    assert rc == 0, log[-5000:]
    steps = [e for e in events if e["type"] == "metrics"]
    assert {e["step"] for e in steps} == {1}, steps
    assert math.isfinite(steps[0]["data"]["scores"]["train_reward_mean"]), steps[0]["data"]
    grpo_peak = _peak_gib(events)
    grpo_estimate = _estimate_gib(final, "reinforcement", grpo_job, data["train"])
    assert grpo_peak <= grpo_estimate * 1.25 + IMPORTS_GIB, (grpo_peak, grpo_estimate)
    print(f"peak RSS / estimate: SFT {sft_peak:.2f} / {sft_estimate:.2f} GiB, "
          f"GRPO {grpo_peak:.2f} / {grpo_estimate:.2f} GiB")

    # vLLM's CPU engine serves the ZeRO-3 checkpoint: same prompt tokens and greedy tokens as transformers
    _check_vllm_matches(final, _hf_reference(final), tmp_path)
