"""The CUDA-only decisions of trainer/accelerator.py, checked on the CPU: each is a pure function of what the
caller observed, so every branch runs here."""

from __future__ import annotations

import doctest

import pytest
import torch

from tests.trainer.test_memory import QWEN25_VL_3B
from trainer import accelerator
from trainer.accelerator import (
    attn_implementation,
    planned_bytes,
    sleeps_between_phases,
    vllm_engine_kwargs,
    vllm_memory_share,
)

GIB = 1 << 30


def test_doctests():
    assert doctest.testmod(accelerator).failed == 0


@pytest.mark.parametrize("device, dtype, flash, expected", [
    ("cuda", torch.bfloat16, True, "flash_attention_2"),
    ("cuda", torch.float16, True, "flash_attention_2"),
    ("cuda", torch.float32, True, "sdpa"),  # FlashAttention-2 has no fp32 kernels
    ("cuda", torch.bfloat16, False, "sdpa"),  # flash-attn not installed (the pinned CUDA set has none)
    ("cpu", torch.float32, True, None),  # transformers' default, as before
    ("cpu", torch.bfloat16, False, None),
])
def test_attention_kernel(device, dtype, flash, expected):
    assert attn_implementation(device, dtype, flash) == expected


def test_the_cpu_model_loads_with_transformers_default(tiny_model):
    """On this machine load_model keeps transformers' own choice (SDPA for Qwen2-VL), as before the GPU branch."""
    from trainer.model import load_model

    model = load_model(str(tiny_model), True, torch.float32)
    assert model.config._attn_implementation == "sdpa"


def test_vllm_share_is_the_plans_rest_between_its_floor_and_the_cap():
    weights = 7 * GIB
    # Training small beside an 80 GiB GPU: the cap.
    assert vllm_memory_share(20 * GIB, weights, 80 * GIB, cap=0.3) == 0.3
    # The rest, less the margin, when it is under the cap; it shrinks as training grows.
    shares = [vllm_memory_share(t * GIB, weights, 80 * GIB, cap=0.3) for t in (55, 58, 61)]
    assert shares == sorted(shares, reverse=True) and shares[0] < 0.3
    assert shares[1] == pytest.approx(1 - 58 / 80 - accelerator.VLLM_SHARE_MARGIN)
    # Never below vLLM's weights and a small KV cache (the API's plan refuses such a job before it runs).
    assert vllm_memory_share(79 * GIB, weights, 80 * GIB, cap=0.3) == pytest.approx(
        7 / 80 + accelerator.VLLM_MIN_KV_SHARE)
    # A larger cap is honoured when the plan leaves room.
    assert vllm_memory_share(20 * GIB, weights, 141 * GIB, cap=0.6) == 0.6


def test_planned_bytes_follow_the_memory_plan():
    """Qwen2.5-VL-3B's real shape: vLLM's weights are the bf16 parameters; training needs less per GPU on 8
    GPUs (ZeRO shards nothing at stage 0, but a rank's share of the batch is an eighth) and with checkpointing."""
    hp = {"micro_batch_size": 4, "gradient_checkpointing": True}
    training_1, weights = planned_bytes(QWEN25_VL_3B, hp, ranks=1)
    training_8, _ = planned_bytes(QWEN25_VL_3B, hp, ranks=8)
    no_ckpt, _ = planned_bytes(QWEN25_VL_3B, {**hp, "gradient_checkpointing": False}, ranks=1)
    assert weights == pytest.approx(3.75e9 * 2, rel=0.01)
    assert weights < training_8 < training_1 < no_ckpt
    # On 8 H100s the plan leaves vLLM its default cap; on one H200 as well; on one H100 only its floor.
    assert vllm_memory_share(training_8, weights, 80 * GIB, cap=0.3) == 0.3
    assert vllm_memory_share(training_1, weights, 141 * GIB, cap=0.3) == 0.3
    assert vllm_memory_share(training_1, weights, 80 * GIB, cap=0.3) < 0.15


def test_vllm_sleeps_and_takes_a_gpu_share_only_on_cuda():
    assert sleeps_between_phases("cuda") and not sleeps_between_phases("cpu")
    cuda = vllm_engine_kwargs("cuda", gpu_share=0.25, kv_cache_bytes=123)
    assert cuda == {"gpu_memory_utilization": 0.25, "enforce_eager": False, "enable_sleep_mode": True}
    cpu = vllm_engine_kwargs("cpu", gpu_share=0.25, kv_cache_bytes=123 << 20)
    assert cpu == {"kv_cache_memory_bytes": 123 << 20, "enforce_eager": True}
    assert "enable_sleep_mode" not in cpu and "gpu_memory_utilization" not in cpu
