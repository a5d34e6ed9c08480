"""The trainer on the tiny Qwen3-VL family (`trainer.tiny_model --family qwen3_vl`): SFT, then GRPO from the SFT
model with each rollout engine (transformers and vLLM), as the job runner starts them. Nothing in the trainer
names a family: this shows that holds for an architecture whose vision tower differs (absolute position
embeddings, DeepStack features into the first text layers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import load_safetensors, run_trainer, write_job


@pytest.fixture(scope="module")
def qwen3_sft(dataset, tmp_path_factory):
    from trainer.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("qwen3-sft")
    model = build_tiny_model(tmp / "tiny-qwen3-vl", seed=0, family="qwen3_vl")
    job = write_job(tmp, model, dataset, "supervised", hyperparameters={"n_epochs": 2, "batch_size": 4})
    rc, events, log = run_trainer(job, tmp)
    assert rc == 0, log[-5000:]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["data"]["train_loss"] < metrics[0]["data"]["train_loss"]  # it learns
    return Path(json.loads(job.read_text())["output_dir"]) / "final"


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_grpo_from_the_sft_model(qwen3_sft, dataset, tmp_path, engine):
    job = write_job(
        tmp_path, qwen3_sft, dataset, rollout_engine=engine, hyperparameters={"n_epochs": 1, "batch_size": 4}
    )
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-5000:]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 <= m["data"]["scores"]["train_reward_mean"] <= 1 for m in metrics)
    assert all(1 <= m["data"]["train"]["completion_length_mean"] <= 12 for m in metrics)
    final = Path(json.loads(job.read_text())["output_dir"]) / "final"
    before, after = load_safetensors(qwen3_sft), load_safetensors(final)
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)  # it trained
    assert json.loads((final / "config.json").read_text())["model_type"] == "qwen3_vl"
