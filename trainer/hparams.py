"""The hyperparameters, declared once: the fields of `TrainingConfig` (all methods), `SFTConfig`, `DPOConfig` and
`GRPOConfig`, each with its type, default, bounds and "auto" rule in `setting(...)` and one line of doc in the
docstring under it.
The API's request models (api/schemas.py), the trainer's resolution (`resolve`: what the job gave, checked; "auto"
or nothing resolved from the dataset size and the rank count) and the table of trainer/README.md (`python -m
trainer.hparams --markdown`; tests/trainer/test_hparams.py) come from them. Torch-free: the API imports it."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
import os
import sys
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, ClassVar

from trainer.families import LM_PROJECTIONS
from trainer.job_spec import TrainerError

REASONING_EFFORT_TOKENS = {"low": 128, "medium": 256, "default": 256, "high": 1024}
ALL, RFT, DPO = ("supervised", "dpo", "reinforcement"), ("reinforcement",), ("dpo",)
METHOD_NAMES = {"supervised": "SFT", "dpo": "DPO", "reinforcement": "RFT"}


@dataclass(frozen=True)
class Setting:
    """One hyperparameter, as `settings()` reads it from a config class. A field is declared with
    `setting(default, **fields of this class after doc)`; its name, type and docstring give the rest."""

    name: str
    kind: type
    """int, float, bool, str, list (of strings) or a nested config dataclass (LoraSpec)"""
    default: Any
    doc: str
    auto: Callable | None = None
    """auto(config, rows, world): the value when the job leaves it out or says "auto" (else `default`); its
    docstring goes into the README"""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    cap: float | None = None
    """a limit of the service: the API refuses more, the trainer run on its own does not"""
    choices: tuple | None = None
    openai: tuple[str, ...] = ()
    """the methods in which it is one of OpenAI's fields (the API shows "auto" for it when not given)"""
    api: bool = True
    """False for a setting that only a JOB.json can set"""


def setting(default: Any, **meta: Any) -> Any:
    """A config field that is a hyperparameter; `meta`: its `Setting` fields (auto, bounds, choices, ...)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"setting": meta})
    return field(default=default, metadata={"setting": meta})


@functools.cache
def settings(cls: type) -> tuple[Setting, ...]:
    """The hyperparameters of a config class, its bases' first, in the order they are declared (and resolved)."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    out = []
    for f in fields(cls):
        if "setting" in f.metadata:
            hint = hints[f.name]
            if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
                hint = next(t for t in typing.get_args(hint) if t is not type(None))
            default = f.default_factory() if f.default is MISSING else f.default
            out.append(Setting(f.name, typing.get_origin(hint) or hint, default, docs[f.name], **f.metadata["setting"]))
    return tuple(out)


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of `cls` and its bases (read from the source, as pydantic's
    `use_attribute_docstrings` does), on one line."""
    docs = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, doc in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                docs[node.target.id] = " ".join(doc.value.value.split())
    return docs


def is_auto(v: Any) -> bool:
    return v is None or v == "auto"


def describe(s: Setting, capped: bool = True) -> str:
    """What a value of `s` must be, in words ("an integer >= 1 and <= 100"); `capped`: with the API's cap."""
    if s.choices is not None:
        return "one of " + ", ".join(repr(c) for c in s.choices)
    if is_dataclass(s.kind):
        return "an object {" + ", ".join(x.name for x in settings(s.kind)) + "}"
    kinds = {bool: "true or false", int: "an integer", float: "a number", list: "a list of strings", str: "a string"}
    limits = ((">=", s.ge), (">", s.gt), ("<=", s.le), ("<=", s.cap if capped else None))
    bounds = [f"{op} {b if isinstance(b, int) else f'{b:g}'}" for op, b in limits if b is not None]
    return " and ".join([kinds[s.kind] + (" " + bounds[0] if bounds else ""), *bounds[1:]])


def check(s: Setting, v: Any, *, capped: bool = False, auto: bool = True) -> Any:
    """`v` as the type of `s`, within its bounds (and its cap when `capped`, as the API checks); else a
    ValueError saying what it must be. `auto`: the message says "auto" is allowed too."""
    ok = True
    if s.kind is bool:
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
            v = v.lower() in ("true", "1")
        ok = isinstance(v, bool) or (type(v) is int and v in (0, 1))
        v = bool(v) if ok else v
    elif s.kind in (int, float):
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
              and (s.kind is float or float(v).is_integer()))
        if ok:
            v = s.kind(v)
            ok = ((s.ge is None or v >= s.ge) and (s.gt is None or v > s.gt) and (s.le is None or v <= s.le)
                  and (not capped or s.cap is None or v <= s.cap))
    elif s.kind is list:
        ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        v = list(v) if ok else v
    else:
        ok = isinstance(v, s.kind)
    if not ok or (s.choices is not None and v not in s.choices):
        what = ("'auto' or " if auto else "") + describe(s, capped)
        raise ValueError(f"must be {what}, got {repr(v)[:64]}")
    return v


def resolve_into(obj: Any, hp: dict, rows: int, world: int, where: str = "") -> Any:
    """Set the settings of config `obj` from the job's `hp`, in declaration order: unknown names refused, a
    value checked, "auto" or nothing resolved by the setting's rule (from `rows`, `world` and the settings
    before it) or its default; a nested config (lora) from its object. Any refusal is the user's error."""
    unknown = sorted(set(hp) - {s.name for s in settings(type(obj))})
    if unknown:
        raise TrainerError("invalid_hyperparameters", f"unknown {where[:-1] or obj.method} hyperparameters {unknown}")
    for s in settings(type(obj)):
        v = hp.get(s.name)
        try:
            if is_auto(v):
                v = s.auto(obj, rows, world) if s.auto else s.default
            if v is not None and is_dataclass(s.kind):
                if not isinstance(v, dict):
                    raise ValueError(f"must be {describe(s)} or null, got {repr(v)[:64]}")
                v = resolve_into(s.kind(), v, rows, world, where=f"{where}{s.name}.")
            elif v is not None:
                v = check(s, v)
        except ValueError as e:
            raise TrainerError("invalid_hyperparameters", f"hyperparameter {where}{s.name} {e}") from None
        setattr(obj, s.name, v)
    return obj


# ---------------------------------------------------------------------------------------- "auto" rules

def auto_batch_size(c: TrainingConfig, rows: int, world: int) -> int:
    """SFT, DPO: 0.2% of the rows, 1..256; RFT: a quarter of the rows, 1..8; then a multiple of the rank count"""
    b = min(256, max(1, round(0.002 * rows))) if c.method != "reinforcement" else min(8, max(1, rows // 4))
    return max(world, int(math.ceil(b / world)) * world)


def auto_epochs(c: TrainingConfig, rows: int, world: int) -> int:
    """SFT, DPO: 3 (100 rows or more), else ceil(100 / rows) up to 25; RFT: ceil(200 x batch_size / rows), 1..10"""
    if c.method != "reinforcement":
        return min(25, max(1, math.ceil(100 / rows))) if rows < 100 else 3
    return min(10, max(1, math.ceil(200 * c.batch_size / rows)))


def total_steps(rows: int, batch_size: int, n_epochs: int) -> int:
    """Optimizer steps: the rows of n_epochs shuffled epochs, one after another, batch_size at a time."""
    return max(1, math.ceil(rows * n_epochs / batch_size))


def auto_eval_interval(c: TrainingConfig, rows: int, world: int) -> int:
    """a tenth of the job's optimizer steps, at least 1"""
    return max(1, total_steps(rows, c.batch_size, c.n_epochs) // 10)


def auto_zero_stage(c: TrainingConfig, rows: int, world: int) -> int:
    """$VRFT_ZERO_STAGE, else 0 on one rank and 2 on more"""
    env = os.environ.get("VRFT_ZERO_STAGE")
    return (0 if world == 1 else 2) if is_auto(env) else int(env)


def auto_completion_length(c: GRPOConfig, rows: int, world: int) -> int:
    """by reasoning_effort: low 128, medium (default) 256, high 1024 tokens"""
    return REASONING_EFFORT_TOKENS[c.reasoning_effort]


# ---------------------------------------------------------------------------------------- the settings

@dataclass
class LoraSpec:
    """Low-rank adapters (peft) on the language model's projections; checkpoints hold the merged weights."""

    r: int = setting(8, ge=1, cap=512)
    """rank of the adapters"""
    alpha: float = setting(16.0, gt=0)
    """scale: the update is alpha / r x B A"""
    dropout: float = setting(0.0, ge=0, le=1)
    """dropout on the adapters' input"""
    target_modules: list[str] = setting(list(LM_PROJECTIONS))
    """names of the modules to adapt, wherever they are outside the vision tower (default: every attention and
    MLP projection of the language model)"""


@dataclass
class TrainingConfig:
    """The settings SFT, DPO and GRPO share; `SFTConfig`, `DPOConfig` and `GRPOConfig` add their own."""

    method: ClassVar[str] = ""
    # ---- OpenAI's hyperparameters
    batch_size: int = setting(0, auto=auto_batch_size, ge=1, cap=4096, openai=ALL)
    """prompts (RFT), examples (SFT) or preference pairs (DPO) per optimizer step, all ranks together (a multiple
    of the rank count)"""
    n_epochs: int = setting(0, auto=auto_epochs, ge=1, cap=100, openai=ALL)
    """passes over the training file, its rows shuffled anew each epoch (by the seed)"""
    learning_rate_multiplier: float = setting(1.0, gt=0, cap=100, openai=ALL)
    """peak learning rate = this x the base rate of the method and the model's size (below)"""
    eval_interval: int = setting(0, auto=auto_eval_interval, ge=1, openai=RFT)
    """optimizer steps between evaluations on the validation file (SFT: valid_loss; DPO: valid loss, reward margin
    and accuracy)"""
    # ---- ours
    learning_rate: float | None = setting(None, gt=0, cap=1)
    """an absolute peak learning rate, instead of the multiplier's"""
    lr_scheduler: str = setting("linear", choices=("constant", "linear", "cosine"))
    """after the warmup: constant, or a linear or cosine decay to 0 at the last step"""
    warmup_ratio: float = setting(0.0, ge=0, le=1)
    """fraction of the steps with a linear warmup from 0"""
    weight_decay: float = setting(0.0, ge=0)
    """AdamW's decoupled weight decay"""
    max_grad_norm: float = setting(1.0, ge=0)
    """gradient clipping by the global norm (0: none)"""
    micro_batch_size: int = setting(0, ge=0)
    """sequences per forward/backward pass, gradients accumulated over them (0: all of a rank's at once)"""
    freeze_vision: bool = setting(False)
    """keep the vision tower fixed; train the language model only"""
    lora: LoraSpec | None = setting(None)
    """train LoRA adapters instead of all weights (null: off; {} for the defaults below)"""
    gradient_checkpointing: bool = setting(False)
    """recompute activations in the backward pass: less memory, more compute"""
    zero_stage: int = setting(0, auto=auto_zero_stage, choices=(0, 1, 2, 3))
    """DeepSpeed ZeRO: 1 shards the optimizer state over the ranks, 2 the gradients too, 3 the weights too"""
    offload_optimizer: bool = setting(False)
    """keep the optimizer state in CPU memory (zero_stage 1 or more)"""
    offload_params: bool = setting(False)
    """keep the weights in CPU memory between uses (zero_stage 3)"""
    dtype: str = setting("auto", choices=("auto", "float32", "bfloat16"), api=False)
    """auto: bfloat16 on GPUs that have it, float32 on CPU"""
    keep_checkpoints: int = setting(3, ge=1, api=False)
    """checkpoints kept: RFT the best by valid reward plus the last; SFT and DPO the last"""
    total_steps: int = field(default=0, repr=False)
    """optimizer steps of the whole job"""

    @classmethod
    def resolve(cls, hp: dict, rows: int, world: int):
        """The job's hyperparameters -> a config, "auto" resolved from the dataset size and the rank count."""
        c = resolve_into(cls(), hp, rows, world)
        if c.batch_size % world:
            raise TrainerError("invalid_hyperparameters",
                               f"batch_size {c.batch_size} must be a multiple of the {world} ranks")
        c.total_steps = total_steps(rows, c.batch_size, c.n_epochs)
        return c


@dataclass
class SFTConfig(TrainingConfig):
    method: ClassVar[str] = "supervised"
    max_length: int = setting(4096, ge=1)
    """tokens of an example, at most: longer ones are cut (their trailing tokens are not trained)"""
    max_eval_examples: int = setting(64, ge=1)
    """validation examples for the periodic valid_loss, a subset fixed by the seed (all of them at the end)"""


@dataclass
class DPOConfig(TrainingConfig):
    method: ClassVar[str] = "dpo"
    # ---- OpenAI's DPO hyperparameter
    beta: float = setting(0.1, gt=0, cap=100, openai=DPO)
    """the DPO temperature: loss = -log sigmoid(beta x (chosen - rejected log-ratio to the reference)); higher keeps
    the model closer to the reference (0.1: Rafailov et al. 2023, TRL)"""
    # ---- DPO
    max_length: int = setting(4096, ge=1)
    """tokens of a prompt and one of its answers, at most: longer answers are cut to fit"""
    max_eval_examples: int = setting(64, ge=1)
    """validation pairs for the periodic evaluation, a subset fixed by the seed (all of them at the end)"""


@dataclass
class GRPOConfig(TrainingConfig):
    method: ClassVar[str] = "reinforcement"
    # ---- OpenAI's reinforcement hyperparameters
    compute_multiplier: float = setting(1.0, gt=0, cap=100, openai=RFT)
    """scales the samples per prompt: G = round(num_generations x compute_multiplier), at least 2"""
    eval_samples: int = setting(1, ge=1, cap=64, openai=RFT)
    """completions per validation prompt at each evaluation"""
    reasoning_effort: str = setting("medium", choices=tuple(REASONING_EFFORT_TOKENS), openai=RFT)
    """the completion budget when max_completion_length is not given"""
    # ---- GRPO
    num_generations: int = setting(8, ge=2, cap=256)
    """completions per prompt, the group size G (before compute_multiplier)"""
    max_completion_length: int = setting(0, auto=auto_completion_length, ge=1, cap=32768)
    """tokens per completion, at most"""
    beta: float = setting(0.04, ge=0)
    """weight of the k3 KL penalty to the frozen reference policy (0 loads no reference; 0.04: Visual-RFT)"""
    epsilon: float = setting(0.2, gt=0, le=1)
    """clip range of the policy ratio: [1 - epsilon, 1 + epsilon_high]"""
    epsilon_high: float | None = setting(None, gt=0)
    """upper clip (DAPO's clip-higher; null: epsilon)"""
    temperature: float = setting(1.0, gt=0, cap=5)
    """sampling temperature; log-probs are computed at the same temperature"""
    top_p: float = setting(1.0, gt=0, le=1)
    """nucleus sampling: only the most likely tokens that make up this much probability"""
    loss_type: str = setting("grpo", choices=("grpo", "dr_grpo", "dapo"))
    """grpo: mean over each completion's tokens, then over completions; dr_grpo: sum / (completions x
    max_completion_length); dapo: sum / all completion tokens of the batch"""
    scale_rewards: str = setting("group", choices=("group", "batch", "none"))
    """divide the advantages by the reward std of the group, of the whole batch, or not at all"""
    num_iterations: int = setting(1, ge=1, cap=16)
    """optimizer steps on each batch of samples (mu); more than 1 makes the ratio and its clipping active"""
    mask_truncated_completions: bool = setting(False)
    """leave completions cut by max_completion_length out of the loss"""
    max_eval_prompts: int = setting(64, ge=1)
    """validation prompts at each evaluation, a subset fixed by the seed"""
    rollout_records: int = setting(2, ge=0, cap=4096)
    """prompts per step whose G completions are kept as rollout records (text, each grader's score, advantage;
    `GET /v1/fine_tuning/jobs/{id}/rollouts`), plus every validation prompt at each evaluation; 0 keeps none"""
    vllm_gpu_memory_utilization: float = setting(0.3, gt=0, le=1, api=False)
    """fraction of the GPU's memory vLLM may take beside the trainer"""

    @classmethod
    def resolve(cls, hp: dict, rows: int, world: int) -> GRPOConfig:
        c = super().resolve(hp, rows, world)
        c.num_generations = max(2, round(c.num_generations * c.compute_multiplier))
        return c


CONFIGS: dict[str, type[TrainingConfig]] = {c.method: c for c in (SFTConfig, DPOConfig, GRPOConfig)}
"""the config class of each `method.type`"""


# ---------------------------------------------------------------------------------------- the README table

def markdown() -> str:
    """The hyperparameter table of trainer/README.md, from the declaration above."""
    shared = settings(TrainingConfig)
    groups = [("SFT, DPO, RFT", shared), ("RFT", settings(GRPOConfig)[len(shared):]),
              ("SFT", settings(SFTConfig)[len(shared):]), ("DPO", settings(DPOConfig)[len(shared):])]
    out = ['| field | for | OpenAI\'s in | values | "auto" or not given | meaning |', "|---|---|---|---|---|---|"]
    for where, group in groups:
        for s in group:
            if not s.api:
                continue
            nested = [(f"{s.name}.{x.name}", x) for x in settings(s.kind)] if is_dataclass(s.kind) else []
            for name, x in [(s.name, s), *nested]:
                auto = x.auto.__doc__ if x.auto else json.dumps(x.default)
                openai = ", ".join(METHOD_NAMES[m] for m in x.openai)
                values = describe(x, capped=False) + (f"; API: <= {x.cap}" if x.cap is not None else "")
                cells = [f"`{name}`", where, openai, values, auto, x.doc]
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    internal = [s.name for s in settings(GRPOConfig) + settings(SFTConfig) + settings(DPOConfig) if not s.api]
    out.append("")
    out.append("A JOB.json also takes " + ", ".join(f"`{n}`" for n in dict.fromkeys(internal)) +
               " (the API does not; see `trainer/hparams.py`).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m trainer.hparams --markdown")
    print(markdown(), end="")
