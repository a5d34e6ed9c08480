"""The memory plan (trainer/memory.py): parameters counted from config.json equal the real models' numel, the
estimate moves the way each setting should move it, and the plan accepts, picks settings, or refuses with
an alternative that fits. The estimate against measured peaks is bench/memory_plan.py (trainer/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from trainer import memory
from trainer.memory import GIB, Job, check_job, count_parameters, estimate, plan

# Qwen/Qwen2.5-VL-3B-Instruct's dimensions, in transformers 5's layout.
QWEN25_VL_3B = {
    "model_type": "qwen2_5_vl", "tie_word_embeddings": True,
    "text_config": {"model_type": "qwen2_5_vl_text", "hidden_size": 2048, "intermediate_size": 11008,
                    "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                    "vocab_size": 151936},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from trainer.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("memory-models")
    return {f: build_tiny_model(root / f, family=f) for f in FAMILIES}


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_equals_the_built_model(tiny_models, family):
    import torch
    from transformers import AutoModelForImageTextToText

    folder = tiny_models[family]
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    real = sum(p.numel() for p in model.parameters())
    n = count_parameters(config)
    assert n.total == real
    # the vision tower and its merger / projector: everything outside the language model and its head
    vision = sum(p.numel() for name, p in model.named_parameters()
                 if ".language_model." not in f".{name}" and not name.startswith("lm_head"))
    assert n.vision == vision
    assert n.lm_head == model.lm_head.weight.numel()  # untied in the tiny builds


def test_parameter_count_of_the_real_qwen25_vl_3b_shape():
    """The full-size 3B architecture on torch's meta device (no memory): 3.75B parameters, tied head."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    cfg = Qwen2_5_VLConfig(text_config=QWEN25_VL_3B["text_config"], vision_config=QWEN25_VL_3B["vision_config"],
                           tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert count_parameters(cfg.to_dict()).total == real
    assert count_parameters(QWEN25_VL_3B).total == real
    assert count_parameters(QWEN25_VL_3B).lm_head == 0


@pytest.mark.parametrize("use_head", [False, None])
def test_parameter_count_of_the_real_llava_onevision_shape(use_head):
    """llava-hf/llava-onevision-qwen2-0.5b-ov-hf's dimensions (Qwen2 text, SigLIP vision), on the meta device;
    with SigLIP's pooling head (built when vision_use_head is not given) and without."""
    import torch
    from transformers import AutoModelForImageTextToText, LlavaOnevisionConfig

    text = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
              "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
    if use_head is not None:
        vision["vision_use_head"] = use_head
    cfg = LlavaOnevisionConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    assert count_parameters(cfg.to_dict()).total == sum(p.numel() for p in model.parameters())


def test_lora_parameter_count_equals_peft(tiny_models):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    folder = tiny_models["qwen2_5_vl"]
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    targets = [n for n, _ in model.named_modules() if ".visual." not in f".{n}."
               and n.rsplit(".", 1)[-1] in memory.DEFAULT_LORA_TARGETS]
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert memory.lora_parameters(config, 8, memory.DEFAULT_LORA_TARGETS) == trainable


def test_module_is_torch_free():
    """The API imports it and calls check_job at job creation: neither may pull in torch or transformers."""
    code = ("import sys, trainer.memory as m\n"
            f"m.check_job({QWEN25_VL_3B!r}, 'reinforcement', {{'batch_size': 2}}, device_gib=80, ranks=1)\n"
            "print(sorted(x for x in ('torch', 'transformers') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def gib(job: Job) -> float:
    return estimate(QWEN25_VL_3B, job).total / GIB


BASE = Job(method="reinforcement", micro_batch=8, num_generations=8, prompt_tokens=256, completion_tokens=256,
           images=1, image_tokens=256, device_bytes=80 * GIB)


def test_full_fine_tuning_terms_follow_the_zero_paper():
    e = estimate(QWEN25_VL_3B, replace(BASE, zero_stage=0))
    p = e.parameters
    assert e.weights == 2 * p and e.gradients == 2 * p  # bf16
    assert e.optimizer == 16 * p  # fp32 master + 2 moments + fp32 gradients for the step
    assert e.reference == 2 * p  # beta 0.04
    assert e.total == (e.weights + e.gradients + e.optimizer + e.reference + e.rollout + e.kv_cache + e.overhead
                       + max(e.activations, e.detail["rollout_transient"]))


def test_relations():
    full = gib(BASE)
    assert gib(replace(BASE, lora_r=16)) < full
    assert gib(replace(BASE, lora_r=16, freeze_vision=True)) <= gib(replace(BASE, lora_r=16))
    assert gib(replace(BASE, freeze_vision=True)) < full
    z0, z3 = replace(BASE, ranks=4, zero_stage=0), replace(BASE, ranks=4, zero_stage=3)
    assert gib(z3) < gib(replace(BASE, ranks=4, zero_stage=2)) < gib(replace(BASE, ranks=4, zero_stage=1)) < gib(z0)
    assert gib(replace(z3, offload_optimizer=True)) < gib(z3)
    assert gib(replace(z3, offload_optimizer=True, offload_params=True)) < gib(replace(z3, offload_optimizer=True))
    off = estimate(QWEN25_VL_3B, replace(z3, offload_optimizer=True))
    assert off.optimizer == 0 and off.offloaded > 0
    # on the CPU the "offloaded" state is in the same memory: offload saves nothing there
    cpu = replace(z3, device="cpu")
    assert gib(replace(cpu, offload_optimizer=True)) == pytest.approx(gib(cpu), rel=1e-6)
    assert gib(replace(BASE, beta=0.0)) < full
    assert gib(replace(BASE, gradient_checkpointing=True)) < full
    assert gib(replace(BASE, dtype_bytes=4)) > full


def test_more_generations_and_longer_sequences_need_more():
    def acts(**kw):
        return estimate(QWEN25_VL_3B, replace(BASE, **kw)).activations

    assert acts(num_generations=16, micro_batch=16) > acts(num_generations=8, micro_batch=8)
    assert acts(completion_tokens=1024) > acts(completion_tokens=256)
    assert acts(image_tokens=1024) > acts(image_tokens=256)
    # the G completions share one prompt pass: 8 completions of one prompt cost less than 8 prompts' worth
    shared = estimate(QWEN25_VL_3B, BASE).detail["activations"]["tokens"]
    assert shared == (256 + 256) + 8 * 256
    hf = replace(BASE, rollout_engine="hf", device="cpu")
    kv = estimate(QWEN25_VL_3B, hf).detail["rollout_transient"]
    assert estimate(QWEN25_VL_3B, replace(hf, rollout_seqs=16)).detail["rollout_transient"] == 2 * kv
    assert kv == 8 * (256 + 256 + 256) * memory.kv_bytes_per_token(QWEN25_VL_3B, 2)


def test_kv_bytes_per_token():
    # 2 (K and V) x 36 layers x 2 KV heads x 128 head dim x 2 bytes
    assert memory.kv_bytes_per_token(QWEN25_VL_3B, 2) == 2 * 36 * 2 * 128 * 2


def test_image_tokens():
    assert memory.image_tokens(QWEN25_VL_3B, 448, 448) == 256  # one token per 28 x 28 pixels
    # Qwen3-VL: 16-pixel patches, 2x2 merge -> one token per 32 x 32 pixels
    qwen3 = {"model_type": "qwen3_vl", "vision_config": {"patch_size": 16, "spatial_merge_size": 2}}
    assert memory.image_tokens(qwen3, 448, 448) == 14 * 14
    # LLaVA-OneVision: anyres tiles of image_size, a token per patch of each, a base tile plus the grid (2 x 2)
    llava = {"model_type": "llava_onevision", "vision_config": {"image_size": 384, "patch_size": 14}}
    assert memory.image_tokens(llava, 700, 700) == (1 + 4) * (384 // 14) ** 2
    # a model_type no family knows: counted by what its vision config says
    assert memory.image_tokens({"model_type": "nope", "vision_config": {"image_size": 384}}, 384, 384) == 2 * 27 ** 2


def test_plan_accepts_what_fits():
    p = plan(QWEN25_VL_3B, replace(BASE, lora_r=16, freeze_vision=True), 80)
    assert p.fits and p.changes == {}
    assert "GiB" in p.message


def test_plan_refuses_and_names_a_fitting_alternative():
    p = plan(QWEN25_VL_3B, BASE, 80, free=())  # full fine-tuning of a 3.75B model on one 80 GiB GPU
    assert not p.fits and p.estimate.total > 80 * GIB
    # vLLM takes 30% of the GPU: the rest must fit in the other 70%
    needed = (p.estimate.total - p.estimate.rollout) / 0.7 / GIB
    assert p.message.startswith(f"needs about {needed:.1f} GiB per GPU, 80.0 GiB available; use LoRA (about ")
    lora = replace(BASE, lora_r=16, freeze_vision=True, device_bytes=80 * GIB)
    assert f"LoRA (about {memory.needed_gib(estimate(QWEN25_VL_3B, lora), lora):.1f} GiB)" in p.message
    assert gib(lora) <= 80
    # four 24 GiB GPUs: ZeRO-3 with offload is what fits
    four = plan(QWEN25_VL_3B, replace(BASE, ranks=4), 24, free=())
    assert not four.fits and "use ZeRO-3 with optimizer offload" in four.message
    assert "nothing tried fits" not in four.message
    # nothing fits one 8 GiB GPU: the closest is named, and said not to fit
    tiny_gpu = plan(QWEN25_VL_3B, BASE, 8, free=())
    assert not tiny_gpu.fits and "nothing tried fits" in tiny_gpu.message


def test_plan_picks_zero3_and_offload_when_allowed():
    four = replace(BASE, ranks=4, zero_stage=0)
    assert gib(four) > 40
    p = plan(QWEN25_VL_3B, four, 40)
    assert p.fits
    assert p.changes.get("zero_stage") == 3
    assert p.estimate.total <= 40 * GIB
    # one GPU: only optimizer offload (after ZeRO-3) brings it under
    one = plan(QWEN25_VL_3B, replace(BASE, rollout_engine="hf"), 30)
    assert one.fits and one.changes["offload_optimizer"] is True
    assert list(one.changes)[:1] == ["gradient_checkpointing"]  # tried first
    # the same job with every knob pinned by the user is refused
    assert not plan(QWEN25_VL_3B, replace(BASE, rollout_engine="hf"), 30, free=()).fits


def test_check_job_from_hyperparameters():
    hp = {"batch_size": 4, "num_generations": 8, "max_completion_length": 256}
    job = memory.job_from_hyperparameters(QWEN25_VL_3B, "reinforcement", hp, 1)
    assert job.micro_batch == 32 and job.zero_stage == 0 and job.dtype_bytes == 2  # bf16 on a GPU
    assert job.beta == 0.04 and job.completion_tokens == 256 and job.lora_r is None
    assert job.image_tokens == 256  # a 448 x 448 image by default
    p = check_job(QWEN25_VL_3B, "reinforcement", hp, device_gib=80, ranks=1, device="gpu")
    assert p.fits and p.changes["gradient_checkpointing"] is True and p.job.gradient_checkpointing
    assert all(getattr(p.job, k) == v for k, v in p.changes.items())
    # pinned knobs are not changed: refused with an alternative
    pinned = {**hp, "gradient_checkpointing": False, "zero_stage": 0, "offload_optimizer": False,
              "offload_params": False}
    refused = check_job(QWEN25_VL_3B, "reinforcement", pinned, device_gib=24, ranks=1, device="gpu")
    assert not refused.fits and refused.changes == {} and "use " in refused.message
    chosen = check_job(QWEN25_VL_3B, "reinforcement", {**hp, "micro_batch_size": 4}, device_gib=40, ranks=4,
                       device="gpu")
    assert chosen.fits and chosen.changes
    assert chosen.estimate.total <= 40 * GIB
    lora = check_job(QWEN25_VL_3B, "supervised", {"lora": {"r": 16}, "batch_size": 8}, device_gib=40, ranks=1,
                     device="gpu")
    assert lora.fits and lora.changes == {} and lora.estimate.trainable < lora.estimate.parameters / 100


def test_dpo_plans_two_answers_per_pair_and_a_reference_without_lora():
    full = memory.job_from_hyperparameters(QWEN25_VL_3B, "dpo", {"batch_size": 4, "beta": 0.2}, 1)
    assert full.micro_batch == 8 and full.beta == 0.2  # chosen + rejected per pair; a frozen copy
    lora = memory.job_from_hyperparameters(QWEN25_VL_3B, "dpo", {"batch_size": 4, "lora": {}}, 1)
    assert lora.beta == 0.0  # the reference is the base weights under the adapters: no copy
    sft = memory.job_from_hyperparameters(QWEN25_VL_3B, "supervised", {"batch_size": 8}, 1)
    assert estimate(QWEN25_VL_3B, full).total > estimate(QWEN25_VL_3B, replace(full, beta=0.0)).total
    assert estimate(QWEN25_VL_3B, replace(full, beta=0.0)).total == estimate(QWEN25_VL_3B, replace(
        sft, method="dpo")).total  # 4 pairs = 8 sequences, as 8 SFT examples
    assert check_job(QWEN25_VL_3B, "dpo", {"batch_size": 4}, device_gib=80, ranks=1, device="gpu").fits


def test_a_trainer_started_from_a_large_parent_reports_its_own_peak(tmp_path):
    """memory_stats (the metrics events' rss_peak_mb, which the memory plan is checked against) is the trainer's
    own peak: a 1 GiB parent that starts it (as a test runner holding a model does) does not leak into it."""
    parent = ("import subprocess, sys\n"
              "ballast = bytearray(1 << 30)\n"  # 1 GiB, touched: resident
              "print(subprocess.run([sys.executable, '-c', 'from trainer.process import memory_stats; "
              "print(memory_stats()[\"rss_peak_mb\"])'], capture_output=True, text=True, check=True).stdout)\n")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    child_peak_mb = float(out.stdout.split()[-1])
    assert 50 < child_peak_mb < 800, child_peak_mb  # torch's import alone, not the parent's 1024 MB and more
