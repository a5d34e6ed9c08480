"""The trainer on the families beyond Qwen2-VL, as the job runner starts it: SFT, then GRPO from the SFT model
with each rollout engine (transformers and vLLM). Nothing in the trainer loop names a family
(trainer/families.py holds what differs); this shows it holds for
- Qwen3-VL (`trainer.tiny_model --family qwen3_vl`): a vision tower with absolute position embeddings and
  DeepStack features into the first text layers;
- LLaVA-OneVision (`--family llava_onevision`): a SigLIP tower, a projector and a Qwen2 LM; "anyres" image tiles,
  pixel_values [images, tiles, 3, H, W] with image_sizes, 1-D rotary positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import load_safetensors, run_trainer, write_job


@pytest.fixture(scope="module", params=["qwen3_vl", "llava_onevision"])
def sft_model(request, dataset, tmp_path_factory) -> tuple[str, Path]:
    """(family, the final folder of an SFT job on its tiny build): 8 rows, batch 4, 2 epochs -> 4 steps."""
    from trainer.tiny_model import build_tiny_model

    family = request.param
    tmp = tmp_path_factory.mktemp(f"{family}-sft")
    model = build_tiny_model(tmp / f"tiny-{family}", seed=0, family=family)
    job = write_job(tmp, model, dataset, "supervised", hyperparameters={"n_epochs": 2, "batch_size": 4})
    rc, events, log = run_trainer(job, tmp)
    assert rc == 0, log[-5000:]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["data"]["train_loss"] < metrics[0]["data"]["train_loss"]  # it learns
    final = Path(json.loads(job.read_text())["output_dir"]) / "final"
    assert load_safetensors(model).keys() == load_safetensors(final).keys()  # the layout it was loaded from
    assert json.loads((final / "config.json").read_text())["model_type"] == family
    return family, final


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_grpo_from_the_sft_model(sft_model, dataset, tmp_path, engine):
    family, sft = sft_model
    job = write_job(tmp_path, sft, dataset, rollout_engine=engine, hyperparameters={"n_epochs": 1, "batch_size": 4})
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-5000:]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 <= m["data"]["scores"]["train_reward_mean"] <= 1 for m in metrics)
    assert all(1 <= m["data"]["train"]["completion_length_mean"] <= 12 for m in metrics)
    final = Path(json.loads(job.read_text())["output_dir"]) / "final"
    before, after = load_safetensors(sft), load_safetensors(final)
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)  # it trained
    assert json.loads((final / "config.json").read_text())["model_type"] == family
