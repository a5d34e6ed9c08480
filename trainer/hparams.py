"""OpenAI's fine-tuning hyperparameters -> the trainer's settings ("auto" resolved from the data).

`method.<type>.hyperparameters` arrives as the API stored it: OpenAI's fields plus our extras, each a value
or "auto". The table (also in trainer/README.md):

| field                      | meaning here                                                              | auto |
|----------------------------|---------------------------------------------------------------------------|------|
| n_epochs                   | passes over the training file                                             | SFT: clamp(ceil(100 / rows), 1, 25)... see `auto_epochs`; RFT: clamp(ceil(200 * batch / rows), 1, 10) |
| batch_size                 | prompts (RFT) or examples (SFT) per optimizer step, all ranks together    | SFT: clamp(0.2% of rows, 1, 256); RFT: clamp(rows // 4, 1, 8); then a multiple of the rank count |
| learning_rate_multiplier   | peak LR = multiplier x base rate of the model size (`base_learning_rate`) | 1.0 |
| compute_multiplier (RFT)   | scales samples per prompt: G = round(num_generations x multiplier), >= 2  | 1.0 |
| eval_interval (RFT)        | optimizer steps between evaluations on the validation file                | max(1, total_steps // 10) |
| eval_samples (RFT)         | samples per validation prompt at each evaluation                          | 1 |
| reasoning_effort (RFT)     | completion budget: low 128, medium/default 256, high 1024 tokens          | medium |
| num_generations (RFT)      | G before compute_multiplier                                               | 8 |
| max_completion_length (RFT)| overrides reasoning_effort                                                | from reasoning_effort |
| beta, temperature, loss_type, scale_rewards, num_iterations, epsilon, ... | see GRPOConfig in trainer/grpo.py | |
| freeze_vision, lora {r, alpha, dropout, target_modules}, zero_stage, ... | see the config dataclasses     | |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trainer.runtime import LoraSpec, TrainerError, default_zero_stage, is_auto


def get(hp: dict, name: str, default: Any, kind: type | None = None, choices: tuple | None = None) -> Any:
    """`hp[name]` converted to `kind`, or `default` when absent/"auto"; a wrong value is the user's error."""
    v = hp.get(name)
    if is_auto(v):
        return default
    try:
        if kind is bool:
            if isinstance(v, str):
                if v.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(v)
                v = v.lower() in ("true", "1")
            v = bool(v)
        elif kind is not None:
            v = kind(v)
    except (TypeError, ValueError):
        raise TrainerError("invalid_hyperparameters", f"hyperparameter {name}={v!r} is not a {kind.__name__}") from None
    if choices is not None and v not in choices:
        raise TrainerError("invalid_hyperparameters", f"hyperparameter {name}={v!r} must be one of {list(choices)}")
    return v


def positive(name: str, v: float, allow_zero: bool = False) -> None:
    if v < 0 or (v == 0 and not allow_zero):
        raise TrainerError("invalid_hyperparameters", f"hyperparameter {name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def round_to_world(n: int, world: int) -> int:
    return max(world, int(math.ceil(n / world)) * world)


def auto_batch_size(method: str, rows: int, world: int) -> int:
    if method == "supervised":
        b = min(256, max(1, round(0.002 * rows)))
    else:
        b = min(8, max(1, rows // 4))
    return round_to_world(b, world)


def auto_epochs(method: str, rows: int, batch_size: int) -> int:
    if method == "supervised":
        return min(25, max(1, math.ceil(100 / rows))) if rows < 100 else 3
    return min(10, max(1, math.ceil(200 * batch_size / rows)))


def total_steps(rows: int, batch_size: int, n_epochs: int) -> int:
    """Optimizer steps: the rows of n_epochs shuffled epochs, one after another, batch_size at a time."""
    return max(1, math.ceil(rows * n_epochs / batch_size))


def lora_spec(hp: dict) -> LoraSpec | None:
    v = hp.get("lora")
    if v is None or v is False or v == "auto":
        return None
    if v is True:
        return LoraSpec()
    if not isinstance(v, dict):
        raise TrainerError("invalid_hyperparameters", "lora must be an object {r, alpha, dropout, target_modules}")
    unknown = set(v) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise TrainerError("invalid_hyperparameters", f"lora has unknown fields {sorted(unknown)}")
    spec = LoraSpec()
    spec.r = int(v.get("r", spec.r))
    spec.alpha = int(v.get("alpha", spec.alpha))
    spec.dropout = float(v.get("dropout", spec.dropout))
    if v.get("target_modules"):
        spec.target_modules = list(v["target_modules"])
    return spec


@dataclass
class TrainingConfig:
    """The settings SFT and GRPO share; `SFTConfig` (trainer/sft.py) and `GRPOConfig` (trainer/grpo.py) add
    their own. Every field is a hyperparameter of the job's method (OpenAI's or one of our extras)."""

    # ---- OpenAI's hyperparameters, resolved ("auto" -> numbers)
    n_epochs: int = 1
    """passes over the training file"""
    batch_size: int = 1
    """prompts (RFT) or examples (SFT) per optimizer step, all ranks together (a multiple of the rank count)"""
    learning_rate_multiplier: float = 1.0
    """peak learning rate = this x the base rate of the model's size (runtime.base_learning_rate)"""
    learning_rate: float | None = None
    """an absolute peak learning rate; overrides the multiplier when set"""
    eval_interval: int = 0
    """optimizer steps between evaluations on the validation file (auto: total_steps // 10)"""
    # ---- optimisation
    lr_scheduler: str = "linear"
    """constant | linear (decay to 0) | cosine"""
    warmup_ratio: float = 0.0
    """fraction of the steps with a linear warmup"""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """gradient clipping (DeepSpeed's gradient_clipping)"""
    micro_batch_size: int = 0
    """sequences per forward/backward pass; 0 = all of a rank's sequences at once"""
    # ---- model and memory
    freeze_vision: bool = False
    """keep the vision tower fixed (train the language model only)"""
    lora: LoraSpec | None = None
    """train LoRA adapters instead of all weights; checkpoints hold the merged weights"""
    gradient_checkpointing: bool = False
    dtype: str = "auto"
    """float32 | bfloat16 | auto (bfloat16 on GPUs that have it, float32 on CPU)"""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (hyperparameter zero_stage, else $VRFT_ZERO_STAGE, else 0 on one rank, 2 on more)"""
    offload_optimizer: bool = False
    offload_params: bool = False
    # ---- checkpoints
    keep_checkpoints: int = 3
    """checkpoints kept (RFT: the best by valid reward, plus the last; SFT: the last)"""
    # ---- derived
    total_steps: int = field(default=0, repr=False)


def resolve_common(c: TrainingConfig, hp: dict, method: str, rows: int, world: int) -> None:
    """Set the `TrainingConfig` fields of `c` from the job's hyperparameters `hp`: refuse unknown keys, then
    batch_size, n_epochs, the learning rate and the steps, "auto" resolved from the dataset size and the rank
    count, then the optimisation, memory and checkpoint settings."""
    known = set(type(c).__dataclass_fields__) - {"total_steps"} | {"seed"}
    unknown = set(hp) - known
    if unknown:
        raise TrainerError("invalid_hyperparameters", f"unknown {method} hyperparameters {sorted(unknown)}")
    c.batch_size = get(hp, "batch_size", auto_batch_size(method, rows, world), int)
    positive("batch_size", c.batch_size)
    if c.batch_size % world:
        raise TrainerError("invalid_hyperparameters", f"batch_size {c.batch_size} must be a multiple of the {world} ranks")
    c.n_epochs = get(hp, "n_epochs", auto_epochs(method, rows, c.batch_size), int)
    positive("n_epochs", c.n_epochs)
    c.learning_rate_multiplier = get(hp, "learning_rate_multiplier", 1.0, float)
    positive("learning_rate_multiplier", c.learning_rate_multiplier)
    c.learning_rate = get(hp, "learning_rate", None, float)
    if c.learning_rate is not None:
        positive("learning_rate", c.learning_rate)
    c.total_steps = total_steps(rows, c.batch_size, c.n_epochs)
    c.eval_interval = get(hp, "eval_interval", max(1, c.total_steps // 10), int)
    positive("eval_interval", c.eval_interval)
    for name, kind, zero_ok in (("warmup_ratio", float, True), ("weight_decay", float, True), ("max_grad_norm", float, True),
                                ("micro_batch_size", int, True), ("keep_checkpoints", int, False)):
        setattr(c, name, get(hp, name, getattr(c, name), kind))
        positive(name, getattr(c, name), allow_zero=zero_ok)
    c.lr_scheduler = get(hp, "lr_scheduler", c.lr_scheduler, str, ("constant", "linear", "cosine"))
    c.dtype = get(hp, "dtype", c.dtype, str, ("auto", "float32", "bfloat16"))
    for name in ("freeze_vision", "gradient_checkpointing", "offload_optimizer", "offload_params"):
        setattr(c, name, get(hp, name, getattr(c, name), bool))
    c.lora = lora_spec(hp)
    c.zero_stage = default_zero_stage(world, hp)
