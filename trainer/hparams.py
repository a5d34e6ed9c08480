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
from typing import Any

from trainer.runtime import TrainerError, is_auto


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


def lora_spec(hp: dict):
    from trainer.runtime import LoraSpec

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


def resolve_common(c: Any, hp: dict, method: str, rows: int, world: int) -> None:
    """Set the fields SFT and GRPO share on config `c` (a dataclass): refuse unknown keys, then batch_size,
    n_epochs and the learning rate, "auto" resolved from the dataset size and the rank count."""
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
