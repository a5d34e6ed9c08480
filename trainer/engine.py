"""DeepSpeed: the config built from the hyperparameters, the engine around the policy, the frozen reference,
and the learning rate (a pure function of the step)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoints import TrainState, load_trainer_state
from trainer.job_spec import TrainerError
from trainer.model import count_parameters, load_model
from trainer.process import seed_everything


def base_learning_rate(method: str, n_params: int, lora: bool) -> float:
    """The rate `learning_rate_multiplier` multiplies: by method and model size (full fine-tuning).

    RFT rates follow Visual-RFT / TRL (1e-6 for 2B-7B models); SFT rates are ten times larger. Tiny test
    models (< 50M parameters) learn nothing at those rates, so they get rates a random-init model needs.
    LoRA trains far fewer weights: ten times the full rate.
    """
    if n_params < 50e6:
        rate = 1e-3 if method == "supervised" else 1e-4
    elif n_params < 4e9:
        rate = 1e-5 if method == "supervised" else 1e-6
    else:
        rate = 5e-6 if method == "supervised" else 5e-7
    return rate * (10.0 if lora else 1.0)


def lr_at(step: int, total_steps: int, peak: float, schedule: str, warmup_steps: int) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warmup, then constant, linear or cosine decay.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if warmup_steps and step <= warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant":
        return peak
    if schedule == "linear":
        span = max(total_steps - warmup_steps, 1)
        return peak * max(0.0, 1.0 - (step - warmup_steps - 1) / span)
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps - 1) / span))
    raise TrainerError("invalid_hyperparameters", f"lr_scheduler must be constant, linear or cosine, not {schedule!r}")


def deepspeed_config(*, micro_batch: int, grad_accum: int, world: int, zero_stage: int, bf16: bool,
                     lr: float, weight_decay: float, max_grad_norm: float, offload_optimizer: bool = False,
                     offload_params: bool = False, cpu: bool = True) -> dict:
    """The DeepSpeed config, built from the hyperparameters (nothing read from a file).

    `torch_adam` uses torch's AdamW instead of DeepSpeed's fused/CPU Adam, which DeepSpeed would JIT-compile
    on first use (a minute on CPU); with optimizer offload on a GPU machine DeepSpeed's CPU Adam is faster.
    """
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer and zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
    if offload_params and zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False, stage3_param_persistence_threshold=1e4)
    torch_adam = cpu or not offload_optimizer
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": max_grad_norm,
        "bf16": {"enabled": bf16},
        # torch's AdamW fused into one kernel over all parameters (same update as its per-parameter loop):
        # 5x faster on the tiny model on CPU, where the loop's overhead is most of the optimizer step.
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                   "weight_decay": weight_decay, "torch_adam": torch_adam,
                                                   **({"fused": True} if torch_adam else {})}},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def make_engine(model, ds_config: dict):
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainerError("invalid_hyperparameters", "no trainable parameters (freeze_vision on a vision-only model?)")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine


@dataclass
class Policy:
    """The model being trained, under DeepSpeed, with what the training loop needs to know about it."""

    engine: Any
    """the DeepSpeed engine (`engine.module` is the HF model)"""
    dtype: torch.dtype
    n_params: int
    peak_lr: float
    micro: int
    """sequences per forward/backward pass"""
    ds_config: dict
    state: TrainState
    """step counters: fresh, or those of the checkpoint the job resumes from"""


def prepare_policy(job, cfg, seqs_per_rank: int, vision: bool, dist, events) -> Policy:
    """Load the job's model as `cfg` (a hparams.TrainingConfig) says, wrap it in DeepSpeed with its optimizer,
    and restore the weights, optimizer and counters of `job.resume_from` when resuming. `seqs_per_rank`: the
    sequences one rank trains on per optimizer step (split into micro-batches of `cfg.micro_batch_size`)."""
    cpu = dist.device.type == "cpu"
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and not cpu and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if bf16 else torch.float32
    seed_everything(job.seed)
    model = load_model(job.model_path, vision, dtype, freeze_vision=cfg.freeze_vision, lora=cfg.lora,
                       gradient_checkpointing=cfg.gradient_checkpointing)
    n_params = count_parameters(model)
    peak_lr = cfg.learning_rate or cfg.learning_rate_multiplier * base_learning_rate(cfg.method, n_params,
                                                                                     cfg.lora is not None)
    micro = cfg.micro_batch_size or seqs_per_rank
    ds_config = deepspeed_config(micro_batch=micro, grad_accum=math.ceil(seqs_per_rank / micro), world=dist.world,
                                 zero_stage=cfg.zero_stage, bf16=bf16, lr=peak_lr, weight_decay=cfg.weight_decay,
                                 max_grad_norm=cfg.max_grad_norm, offload_optimizer=cfg.offload_optimizer,
                                 offload_params=cfg.offload_params, cpu=cpu)
    engine = make_engine(model, ds_config)
    state = TrainState(step=0, total_steps=cfg.total_steps, seed=job.seed)
    if job.resume_from:
        state = load_trainer_state(engine, Path(job.resume_from))
        events.message(f"Resumed from {job.resume_from} at step {state.step}/{state.total_steps}")
    return Policy(engine, dtype, n_params, peak_lr, micro, ds_config, state)


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def make_reference(model_path: str, vision: bool, dtype, device, zero_stage: int, ds_config: dict):
    """The frozen reference policy for the KL term (a separate copy; ZeRO-3 shards it too)."""
    ref = load_model(model_path, vision, dtype).eval()
    ref.requires_grad_(False)
    if zero_stage == 3:
        import deepspeed

        cfg = {k: v for k, v in ds_config.items() if k not in ("optimizer",)}
        cfg["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 1e4}
        return deepspeed.initialize(model=ref, config=cfg)[0].module
    return ref.to(device)
