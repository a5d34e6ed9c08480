"""Wire types. Response models mirror openai-python's types field for field (names, order, `object`
literals); request models validate what callers send and name the offending field when they refuse it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

T = TypeVar("T")

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused")


# ---------------------------------------------------------------- responses


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileObject(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["file"] = "file"


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    batch_size: Literal["auto"] | int | None = None
    learning_rate_multiplier: Literal["auto"] | float | None = None
    n_epochs: Literal["auto"] | int | None = None


class FineTuningJob(BaseModel):
    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None


class FineTuningJobEvent(BaseModel):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int


class CheckpointPermissionObject(BaseModel):
    id: str
    created_at: int
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    project_id: str


class CheckpointPermissionDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["checkpoint.permission"] = "checkpoint.permission"


class ModelObject(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str


# ---------------------------------------------------------------- requests


def _number(kind: type, *, minimum: float, exclusive: bool = False, maximum: float | None = None, auto: bool = False):  # noqa: ANN202
    """A number of `kind` in range (or `"auto"` when `auto`), with one clear message instead of pydantic's
    union noise."""
    bound = f"{'>' if exclusive else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
    what = ("'auto' or " if auto else "") + ("an integer" if kind is int else "a number")

    def check(v: Any) -> Any:
        if auto and v == "auto":
            return v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        if ok and kind is int:
            ok = float(v).is_integer()
        if ok:
            ok = (v > minimum if exclusive else v >= minimum) and (maximum is None or v <= maximum)
        if not ok:
            raise ValueError(f"must be {what} {bound}, got {v!r}")
        return kind(v)

    return Annotated[Any, BeforeValidator(check)]


def _auto_or_number(kind: type, **bounds: Any):  # noqa: ANN202
    return _number(kind, auto=True, **bounds)


_range = _number


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Strict):
    r: _range(int, minimum=1, maximum=512) = 8
    alpha: _range(float, minimum=0, exclusive=True) = 16
    dropout: _range(float, minimum=0, maximum=1) = 0.0
    target_modules: list[str] | None = None


class SupervisedHyperparameters(_Strict):
    batch_size: _auto_or_number(int, minimum=1, maximum=4096) = "auto"
    """Examples per optimizer step."""
    learning_rate_multiplier: _auto_or_number(float, minimum=0, exclusive=True, maximum=100) = "auto"
    """Times the per-model base learning rate."""
    n_epochs: _auto_or_number(int, minimum=1, maximum=100) = "auto"
    """Passes over the training file."""
    # Our extras for every method (not in OpenAI's API), optional.
    freeze_vision: bool | None = None
    """Keep the vision tower fixed; train the language model only."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of all weights."""


class ReinforcementHyperparameters(SupervisedHyperparameters):
    compute_multiplier: _auto_or_number(float, minimum=0, exclusive=True, maximum=100) = "auto"
    """Scales the samples drawn per prompt."""
    eval_interval: _auto_or_number(int, minimum=1) = "auto"
    """Training steps between evaluations on the validation file."""
    eval_samples: _auto_or_number(int, minimum=1, maximum=64) = "auto"
    """Samples per validation prompt at each evaluation."""
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"
    """Completion length budget."""
    # Our extras (not in OpenAI's API), all optional with defaults chosen by the trainer.
    num_generations: _range(int, minimum=2, maximum=256) | None = None
    """Completions per prompt, the GRPO group size G."""
    beta: _range(float, minimum=0) | None = None
    """KL coefficient to the frozen reference; 0 loads no reference."""
    max_completion_length: _range(int, minimum=1, maximum=32768) | None = None
    temperature: _range(float, minimum=0, exclusive=True, maximum=5) | None = None
    loss_type: Literal["grpo", "dr_grpo", "dapo"] | None = None
    scale_rewards: Literal["group", "batch", "none"] | None = None
    num_iterations: _range(int, minimum=1, maximum=16) | None = None


class SupervisedMethod(_Strict):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class ReinforcementMethod(_Strict):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)
    response_format: dict[str, Any] | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbIntegration(_Strict):
    project: str
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Integration(_Strict):
    type: Literal["wandb"]
    wandb: WandbIntegration


def _check_metadata(v: dict[str, str] | None) -> dict[str, str] | None:
    if v is None:
        return v
    if len(v) > 16:
        raise ValueError(f"at most 16 key-value pairs are allowed, got {len(v)}")
    for k, val in v.items():
        if len(k) > 64:
            raise ValueError(f"key {k[:20]!r}... is longer than 64 characters")
        if len(val) > 512:
            raise ValueError(f"value of {k!r} is longer than 512 characters")
    return v


Metadata = Annotated[dict[str, str] | None, AfterValidator(_check_metadata)]
SUFFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class JobCreate(_Strict):
    model: str
    training_file: str
    hyperparameters: SupervisedHyperparameters | None = None
    """Deprecated: the supervised hyperparameters, kept for old clients."""
    integrations: list[Integration] | None = None
    metadata: Metadata = None
    method: Method | None = None
    seed: _range(int, minimum=0, maximum=2**31 - 1) | None = None
    suffix: str | None = None
    validation_file: str | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not SUFFIX_RE.fullmatch(v):
            raise ValueError("must be 1 to 64 characters of letters, digits, '.', '_' or '-'")
        return v


class PermissionCreate(_Strict):
    project_ids: list[str] = Field(min_length=1, max_length=100)
