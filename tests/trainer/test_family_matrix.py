"""The family matrix (issue 21): every model family the trainer knows (trainer/families.py), each from its tiny
random build, through the same cells: SFT; GRPO with both rollout engines; LoRA; freeze_vision; exact resume;
the trained checkpoint served by vLLM answering a chat with an image.

Cells other tests already cover are not run again here:

==============  =================  ===================  =================  ==================================
cell            qwen2_vl           qwen2_5_vl           qwen3_vl           llava_onevision
==============  =================  ===================  =================  ==================================
SFT             test_trainer       here                 test_family_jobs   test_family_jobs
GRPO, hf        here (LoRA)        here                 test_family_jobs   test_family_jobs
GRPO, vLLM      test_trainer       here (LoRA)          test_family_jobs   test_family_jobs
LoRA            tests/jobs (SFT);  here (GRPO)          here (GRPO, vLLM)  here (GRPO, vLLM)
                here (GRPO, hf)
freeze_vision   tests/jobs (SFT)   here (SFT)           here (SFT)         here (SFT)
exact resume    test_trainer       here (LoRA, vLLM)    here (LoRA, vLLM)  here (LoRA, vLLM)
vLLM chat       here               here                 here               here
==============  =================  ===================  =================  ==================================

Cheaply, per family: one SFT job with freeze_vision (the start of the GRPO jobs: GRPO from a random model
rarely has rewards that differ within a group, so nothing would train); one GRPO job with LoRA from it (the
"straight" run); the same job paused after step 1 (SIGUSR1, as the job runner pauses) and resumed, which must
end where the straight run ended; vLLM's offline engine (one per family, in a subprocess) on the straight run's
merged checkpoint, whose greedy tokens on a chat with an image must equal transformers'. The jobs of a family
are built once (module-scoped, on first use) and shared by its tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import (
    assert_same_weights,
    load_safetensors,
    pause_then_resume,
    run_trainer,
    write_job,
)
from tests.trainer.synth import MULTI_GRADER

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
# The vision tower and projector in each build's safetensors (the checkpoint's names), written out here
# independently of trainer/families.py.
VISION = {
    "qwen2_vl": ("visual.",), "qwen2_5_vl": ("visual.",), "qwen3_vl": ("model.visual.",),
    "llava_onevision": ("vision_tower.", "multi_modal_projector.", "image_newline"),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The rollout engine of each family's LoRA job: the cell that family's other tests leave open (qwen2_vl: a
# finished GRPO job on the transformers engine; the others: LoRA's merged weights synced into vLLM).
LORA_ENGINE = {"qwen2_vl": "hf", "qwen2_5_vl": "vllm", "qwen3_vl": "vllm", "llava_onevision": "vllm"}
LORA = {"r": 4, "alpha": 8}


def _is_vision(family: str, key: str) -> bool:
    return key.startswith(VISION[family])


def _is_lora_target(family: str, key: str) -> bool:
    parts = key.split(".")
    return not _is_vision(family, key) and len(parts) >= 2 and parts[-2] in LORA_TARGETS and parts[-1] == "weight"


def _out(job: Path) -> Path:
    return Path(json.loads(job.read_text())["output_dir"])


def _metrics(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "metrics"]


class Jobs:
    """Each family's builds and jobs, made on first use and kept for the module."""

    def __init__(self, factory: pytest.TempPathFactory, dataset: dict):
        self.factory, self.dataset, self.cache = factory, dataset, {}
        self.durations: dict[str, float] = {}

    def _once(self, key: str, make):
        if key not in self.cache:
            start = time.monotonic()
            self.cache[key] = make()
            self.durations[key] = time.monotonic() - start
        return self.cache[key]

    def build(self, family: str) -> Path:
        from trainer.tiny_model import build_tiny_model

        return self._once(f"build-{family}", lambda: build_tiny_model(
            self.factory.mktemp(f"{family}-model") / f"tiny-{family}", seed=0, family=family))

    def sft(self, family: str) -> tuple[Path, list[dict]]:
        """SFT with freeze_vision: 8 rows, batch 4, 2 epochs -> 4 steps. (job, events)"""
        def make():
            tmp = self.factory.mktemp(f"{family}-sft")
            job = write_job(tmp, self.build(family), self.dataset, "supervised",
                            hyperparameters={"n_epochs": 2, "batch_size": 4, "freeze_vision": True})
            rc, events, log = run_trainer(job, tmp)
            assert rc == 0, log[-5000:]
            return job, events
        return self._once(f"sft-{family}", make)

    def lora(self, family: str) -> tuple[Path, list[dict]]:
        """GRPO with LoRA from the SFT model: 8 prompts, batch 4 -> 2 steps. (job, events)"""
        def make():
            tmp = self.factory.mktemp(f"{family}-lora")
            job = write_job(tmp, _out(self.sft(family)[0]) / "final", self.dataset,
                            rollout_engine=LORA_ENGINE[family], grader=MULTI_GRADER,
                            hyperparameters={"n_epochs": 1, "batch_size": 4, "lora": LORA})
            rc, events, log = run_trainer(job, tmp)
            assert rc == 0, log[-5000:]
            return job, events
        return self._once(f"lora-{family}", make)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, dataset):
    jobs = Jobs(tmp_path_factory, dataset)
    yield jobs
    print("\nfamily matrix, time to make each build/job:",
          ", ".join(f"{k} {v:.1f} s" for k, v in jobs.durations.items()))


# ---------------------------------------------------------------------------------------- SFT, freeze_vision

@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_sft_with_frozen_vision_trains_only_the_language_model(jobs, family):
    job, events = jobs.sft(family)
    metrics = _metrics(events)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["data"]["train_loss"] < metrics[0]["data"]["train_loss"]  # it learns
    assert events[-1]["type"] == "final"
    final = _out(job) / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == family
    base, tuned = load_safetensors(jobs.build(family)), load_safetensors(final)
    assert base.keys() == tuned.keys()  # saved under the checkpoint's names, as loaded
    vision = [k for k in base if _is_vision(family, k)]
    assert vision
    for k in vision:
        assert torch.equal(base[k], tuned[k]), k
    assert any(not torch.equal(base[k], tuned[k]) for k in base if not _is_vision(family, k))


# ---------------------------------------------------------------------------------------------- GRPO, LoRA

@pytest.mark.parametrize("family", FAMILIES)
def test_grpo_with_lora_trains_the_adapters_only(jobs, family):
    """LoRA adapts the language model's projections; the checkpoint holds them merged: those weights change,
    every other weight (vision tower, projector, embeddings, norms, head) comes back as it went in."""
    job, events = jobs.lora(family)
    metrics = _metrics(events)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 <= m["data"]["scores"]["train_reward_mean"] <= 1 for m in metrics)
    assert all(1 <= m["data"]["train"]["completion_length_mean"] <= 12 for m in metrics)
    assert events[-1]["type"] == "final"
    start, final = _out(jobs.sft(family)[0]) / "final", _out(job) / "final"
    before, after = load_safetensors(start), load_safetensors(final)
    assert before.keys() == after.keys()
    targets = [k for k in before if _is_lora_target(family, k)]
    assert len(targets) == 7 * 2  # 7 projections x 2 layers
    assert all(not torch.equal(before[k], after[k]) for k in targets)
    for k in before.keys() - set(targets):
        assert torch.equal(before[k], after[k]), k
    assert not (final / "adapter_config.json").exists()  # a plain model folder, adapters merged


def test_grpo_on_the_transformers_engine(jobs, tmp_path):
    """Qwen2.5-VL's full-weight GRPO with the transformers rollout engine (its LoRA job uses vLLM)."""
    start = _out(jobs.sft("qwen2_5_vl")[0]) / "final"
    job = write_job(tmp_path, start, jobs.dataset, rollout_engine="hf", grader=MULTI_GRADER,
                    hyperparameters={"n_epochs": 1, "batch_size": 4})
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-5000:]
    assert [m["step"] for m in _metrics(events)] == [1, 2]
    before, after = load_safetensors(start), load_safetensors(_out(job) / "final")
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)  # it trained


# -------------------------------------------------------------------------------------------- exact resume

@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_pause_after_step_1_then_resume_equals_the_straight_run(jobs, family, tmp_path):
    """The LoRA job again, paused (SIGUSR1) at the end of step 1, then resumed from its checkpoint: the same
    rewards at each step and the same final weights as the uninterrupted run."""
    job, events = jobs.lora(family)
    paused, resumed_events, out = pause_then_resume(job, tmp_path)
    assert paused["step"] == 1, paused
    assert [m["step"] for m in _metrics(resumed_events)] == [1, 2]  # no step lost or repeated
    straight_r = [m["data"]["scores"]["train_reward_mean"] for m in _metrics(events)]
    resumed_r = [m["data"]["scores"]["train_reward_mean"] for m in _metrics(resumed_events)]
    assert resumed_r == pytest.approx(straight_r, abs=1e-6)
    assert_same_weights(_out(job) / "final", out / "final")


# ------------------------------------------------------------------------------------------------ serving

@pytest.mark.parametrize("family", FAMILIES)
def test_the_trained_checkpoint_is_served_by_vllm(jobs, family, shared_caches):
    """vLLM's offline engine (one per family, `LLM.chat` with an image data URL, in a subprocess) on the LoRA
    job's merged checkpoint: the same prompt tokens, greedy tokens and first-token log-prob as transformers."""
    from tests.test_tiny_model import _check_vllm_matches, _hf_reference

    final = _out(jobs.lora(family)[0]) / "final"
    reference = _hf_reference(final)
    assert reference["tokens"]  # a non-empty completion
    work = shared_caches / "vllm-chat"  # vLLM's caches shared by the families' engines
    work.mkdir(exist_ok=True)
    _check_vllm_matches(final, reference, work)
