"""What the trainer does differently on a CUDA GPU, each decision one small pure function.

The callers pass in what they observed (device type, dtype, whether a package imports, bytes); nothing here
touches a device, so tests/trainer/test_accelerator.py covers every branch on a CPU machine.

    attn_implementation   trainer/model.py load_model      FlashAttention-2 / SDPA / transformers' default
    vllm_memory_share     trainer/rollout.py VLLMRollout   vLLM's gpu_memory_utilization, from the memory plan
    vllm_engine_kwargs    trainer/rollout.py VLLMRollout   GPU share and sleep mode, or the CPU's KV cache size
    sleeps_between_phases trainer/rollout.py VLLMRollout   vLLM sleeps while the policy trains (CUDA only)

Decided elsewhere, and named here so that the list is whole: the training dtype (bf16 where the GPU supports
it, else fp32: trainer/engine.py `prepare_policy`); the process group backend (NCCL on GPUs, gloo on the CPU)
and DeepSpeed's and vLLM's CPU platforms when no GPU is visible (trainer/process.py); gradient checkpointing
(a hyperparameter the memory plan turns on: trainer/memory.py); and the weight sync under ZeRO-3, which gathers
each parameter from all ranks before handing it to vLLM (trainer/export.py `export_weights`).
"""

from __future__ import annotations

import importlib.util

import torch

VLLM_SHARE_MARGIN = 0.05
"""Of the device, left to neither side: allocator fragmentation and what the memory plan's estimate misses."""

VLLM_MIN_KV_SHARE = 0.02
"""Of the device, the least KV cache vLLM is given beside its weights (vLLM refuses to start with none)."""


def flash_attn_available() -> bool:
    """Whether the flash-attn package is installed (not in the pinned CUDA set: no wheel on PyPI; a user adds it)."""
    return importlib.util.find_spec("flash_attn") is not None


def attn_implementation(device_type: str, dtype: torch.dtype, flash_available: bool) -> str | None:
    """The attention kernel the model is loaded with (transformers' `attn_implementation`).

    On CUDA in half precision with flash-attn installed: FlashAttention-2 (its kernels take fp16/bf16 only). Else on
    CUDA: PyTorch's SDPA, which picks its own flash or memory-efficient kernel. On the CPU: None, transformers'
    default (SDPA where the model implements it, else eager), as it always was here.

    >>> attn_implementation("cuda", torch.bfloat16, True), attn_implementation("cuda", torch.float32, True)
    ('flash_attention_2', 'sdpa')
    >>> attn_implementation("cpu", torch.bfloat16, True) is None
    True
    """
    if device_type != "cuda":
        return None
    if flash_available and dtype in (torch.bfloat16, torch.float16):
        return "flash_attention_2"
    return "sdpa"


def vllm_memory_share(training_bytes: int, weights_bytes: int, device_bytes: int, cap: float) -> float:
    """vLLM's `gpu_memory_utilization` beside training on the same GPU (always: vLLM runs in the trainer's process).

    What the memory plan says training needs at its peak (`planned_bytes`) is left to training, with a margin;
    vLLM gets the rest, at most `cap` (the job's vllm_gpu_memory_utilization) and at least what it needs to start
    (its weights and a small KV cache). The API's plan refuses a job that does not fit before it runs, so the
    floor only matters for a trainer started by hand.

    >>> GIB = 1 << 30
    >>> vllm_memory_share(training_bytes=30 * GIB, weights_bytes=7 * GIB, device_bytes=80 * GIB, cap=0.3)
    0.3
    >>> round(vllm_memory_share(training_bytes=60 * GIB, weights_bytes=7 * GIB, device_bytes=80 * GIB, cap=0.3), 3)
    0.2
    >>> round(vllm_memory_share(training_bytes=85 * GIB, weights_bytes=7 * GIB, device_bytes=80 * GIB, cap=0.3), 3)
    0.107
    """
    rest = 1.0 - training_bytes / device_bytes - VLLM_SHARE_MARGIN
    floor = weights_bytes / device_bytes + VLLM_MIN_KV_SHARE
    return max(min(cap, rest), floor)


def planned_bytes(config: dict, hyperparameters: dict, ranks: int) -> tuple[int, int]:
    """From the memory plan on a GPU (the estimate the API checked the job against, trainer/memory.py): the bytes
    training needs per GPU beside vLLM (its estimate less the rollout term), and vLLM's copy of the weights."""
    from trainer.memory import estimate, job_from_hyperparameters

    job = job_from_hyperparameters(config, "reinforcement", hyperparameters, ranks, device="gpu")
    est = estimate(config, job)
    return est.total - est.rollout, est.parameters * job.dtype_bytes


def sleeps_between_phases(device_type: str) -> bool:
    """Whether vLLM sleeps while the policy trains: level 1 moves its weights to host memory and drops its KV
    cache, and it wakes for the weight sync and sampling. CUDA only: vLLM's sleep mode is its CUDA allocator's
    (the CPU engine has none, and on the CPU there is no separate device memory to free)."""
    return device_type == "cuda"


def vllm_engine_kwargs(device_type: str, *, gpu_share: float, kv_cache_bytes: int | None) -> dict:
    """vLLM's memory and compilation arguments. CPU: exactly the KV cache the trainer sized
    (`kv_cache_bytes`, else 256 MiB), eager (compiling costs more than it saves on small CPU runs). CUDA: its share
    of the GPU, CUDA graphs, and sleep mode when it sleeps between phases.

    >>> vllm_engine_kwargs("cpu", gpu_share=0.3, kv_cache_bytes=None)
    {'kv_cache_memory_bytes': 268435456, 'enforce_eager': True}
    >>> vllm_engine_kwargs("cuda", gpu_share=0.3, kv_cache_bytes=1 << 20)
    {'gpu_memory_utilization': 0.3, 'enforce_eager': False, 'enable_sleep_mode': True}
    """
    if device_type != "cuda":
        return {"kv_cache_memory_bytes": kv_cache_bytes or (256 << 20), "enforce_eager": True}
    return {"gpu_memory_utilization": gpu_share, "enforce_eager": False,
            "enable_sleep_mode": sleeps_between_phases(device_type)}
