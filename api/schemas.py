"""Wire types. Response models mirror openai-python's types field for field (names, order, `object`
literals); request models validate what callers send and name the offending field when they refuse it."""

from __future__ import annotations

import re
from dataclasses import is_dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from grader.types.iou import BoxConvention
from grader.wire import GraderObject
from trainer.hparams import DPOConfig, GRPOConfig, Setting, SFTConfig, check, settings

T = TypeVar("T")

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
"""openai-python's job statuses, and "paused": a job paused by the user (``POST .../pause``) until it is resumed
(the state machine is api/services/jobs.py's TRANSITIONS)."""


# ---------------------------------------------------------------- responses


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list[T], has_more: bool) -> ListPage[T]:
        """A cursor page of `data` (objects with an `id`): first_id and last_id are its ends."""
        return cls(data=data, has_more=has_more, first_id=data[0].id if data else None,  # type: ignore[attr-defined]
                   last_id=data[-1].id if data else None)  # type: ignore[attr-defined]


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
    status: JobStatus
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


class FineTuningJobRollout(BaseModel):
    """One rollout record, our extension (GET /v1/fine_tuning/jobs/{id}/rollouts): a completion the model sampled
    at a training step or an evaluation, with each grader's score and its advantage."""

    id: str
    created_at: int
    fine_tuning_job_id: str
    object: Literal["fine_tuning.job.rollout"] = "fine_tuning.job.rollout"
    step: int
    """The optimizer step it was sampled at (an evaluation's: the step after which it ran)."""
    split: Literal["train", "validation"]
    file_id: str | None = None
    """The training or validation file of the prompt."""
    line: int | None = None
    """The prompt's line in that file."""
    group: int
    """The prompt's place in the step's batch, or in the evaluation's prompts."""
    sample: int
    """The completion's place among the prompt's completions (its group of G)."""
    completion: str
    """The completion's text."""
    reward: float | None = None
    """The grader's reward (a multi grader's combined one)."""
    sub_rewards: dict[str, float | None]
    """Each grader's score: a multi grader's keys, else the grader's name."""
    advantage: float | None = None
    """The GRPO advantage of the completion in its group (train); null for validation."""
    errors: list[str]
    """The grader's error flags set for this sample (`sample_parse_error`, ...)."""
    error_message: str | None = None
    """Why the grader failed on it, in words."""
    completion_tokens: int
    truncated: bool
    """Whether it was cut by max_completion_length."""


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


class ModelDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["model"] = "model"


class UploadObject(BaseModel):
    id: str
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    object: Literal["upload"] = "upload"
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None


class UploadPartObject(BaseModel):
    id: str
    created_at: int
    object: Literal["upload.part"] = "upload.part"
    upload_id: str


class PredictedBox(BaseModel):
    box: list[float]
    """x1, y1, x2, y2 in fractions of the image's width and height."""
    confidence: float
    """The answer's confidence for the box (1 where it gave none)."""


class GraderBoxes(BaseModel):
    grader: str
    """The iou grader: its key in `sub_rewards` (a multi grader's child key, else its name)."""
    reference: list[list[float]]
    """The reference boxes, x1, y1, x2, y2 in fractions of the image's width and height."""
    predicted: list[PredictedBox]
    """The sample's boxes as the grader parsed, cleaned and converted them; [] without a sample."""
    error: str | None
    """Why the grader could not read the boxes (the sample has none, the reference is unreadable, ...)."""


class RowBoxes(BaseModel):
    line: int
    graders: list[GraderBoxes]
    """One entry per iou grader of the request's grader (none for a grader without one)."""


class ListFileBoxesResponse(BaseModel):
    """The boxes each iou grader compares, per requested row (our extension: what the dashboard draws)."""

    object: Literal["list"] = "list"
    data: list[RowBoxes]


class FileRow(BaseModel):
    object: Literal["file.row"] = "file.row"
    line: int
    """The row's line in the file, from 1; blank lines count (as a rollout record's `line`)."""
    row: dict[str, Any]
    """The line's JSON object, as uploaded."""


class ListFileRowsResponse(BaseModel):
    """Rows of a JSONL file by line (our extension: what the dashboard shows without downloading the file)."""

    object: Literal["list"] = "list"
    data: list[FileRow]
    has_more: bool
    """Paging by `after`: whether rows follow the last one returned."""


# ---------------------------------------------------------------- requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_BOOL_STRINGS = "^([tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[01])$"
_JSON_TYPES = {int: "integer", float: "number", str: "string"}


def _json_schema(s: Setting, auto: bool) -> dict[str, Any]:
    """The JSON schema of what `check(s, v, capped=True)` accepts, "auto" when `auto`, and null (the
    document shows what the declaration checks, from the same declaration)."""
    if s.choices is not None:
        value: list[dict[str, Any]] = [{"enum": list(s.choices)}]
    elif s.kind is bool:  # check() also takes 0 and 1, and "true"/"false"/"1"/"0" in any case
        value = [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}, {"type": "string", "pattern": _BOOL_STRINGS}]
    elif s.kind is list:
        value = [{"type": "array", "items": {"type": "string"}}]
    else:
        one: dict[str, Any] = {"type": _JSON_TYPES[s.kind]}
        highs = [b for b in (s.le, s.cap) if b is not None]
        bounds = {"minimum": s.ge, "exclusiveMinimum": s.gt, "maximum": min(highs) if highs else None}
        one.update({k: int(b) if float(b).is_integer() else b for k, b in bounds.items() if b is not None})
        value = [one]
    return {"anyOf": ([{"type": "string", "enum": ["auto"]}] if auto else []) + value + [{"type": "null"}]}


def _checked(s: Setting, auto: bool = True):  # noqa: ANN202
    """A value as the trainer's declaration checks it (type, bounds, the service's cap; or "auto" when `auto`),
    with one clear message instead of pydantic's union noise."""
    return Annotated[Any, BeforeValidator(
        lambda v: v if v is None or (auto and v == "auto") else check(s, v, capped=True, auto=auto)),
        WithJsonSchema(_json_schema(s, auto))]


def _hyperparameters(config: type, name: str, method: str = "") -> type[BaseModel]:
    """The request model of a config's settings (trainer/hparams.py). OpenAI's fields come first, in its order
    (by name), and show "auto" (reasoning_effort: "default") when not given; ours show nothing (the trainer's
    default applies)."""
    ours = [s for s in settings(config) if s.api]
    openai = sorted((s for s in ours if method in s.openai), key=lambda s: s.name)
    fields: dict[str, Any] = {}
    for s in openai + [s for s in ours if s not in openai]:
        kind = _hyperparameters(s.kind, s.kind.__name__) | None if is_dataclass(s.kind) else _checked(s)
        default = ("default" if "default" in (s.choices or ()) else "auto") if s in openai else None
        fields[s.name] = (kind, Field(default, description=s.doc))
    return create_model(name, __base__=_Strict, **fields)


SupervisedHyperparameters = _hyperparameters(SFTConfig, "SupervisedHyperparameters", SFTConfig.method)
ReinforcementHyperparameters = _hyperparameters(GRPOConfig, "ReinforcementHyperparameters", GRPOConfig.method)
DpoHyperparameters = _hyperparameters(DPOConfig, "DpoHyperparameters", DPOConfig.method)


class SupervisedMethod(_Strict):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class ReinforcementMethod(_Strict):
    grader: GraderObject
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)
    response_format: dict[str, Any] | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbIntegration(_Strict):
    project: str
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Integration(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [  # what the validator below checks
        {"properties": {"type": {"const": "wandb"}, "wandb": {"type": "object"}}, "required": ["wandb"]},
        {"properties": {"type": {"const": "tensorboard"}, "wandb": {"type": "null"}}},
    ]})
    type: Literal["wandb", "tensorboard"]
    """`wandb` (OpenAI's), or `tensorboard` (our extension: event files stored with the checkpoints)."""
    wandb: WandbIntegration | None = None
    """The W&B settings: required for `wandb`, refused for `tensorboard`."""

    @model_validator(mode="after")
    def _settings_match_type(self) -> Integration:
        if (self.type == "wandb") != (self.wandb is not None):
            raise ValueError("'wandb' settings are required for type 'wandb' and allowed only for it")
        return self


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
    seed: _checked(Setting("seed", int, None, "", ge=0, le=2**31 - 1), auto=False) = None
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


UPLOAD_MAX_BYTES = 8 * 1024**3
"""OpenAI's limit on one upload (8 GB), its parts together."""
UPLOAD_PART_MAX_BYTES = 64 * 1024**2
"""OpenAI's limit on one part (64 MB; the SDK's `upload_file_chunked` sends parts of exactly this size)."""
UPLOAD_EXPIRES_SECONDS = 3600
"""An upload not completed an hour after its creation expires, and its parts are deleted."""


class FileExpiresAfter(_Strict):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class UploadCreate(_Strict):
    bytes: int = Field(ge=0, le=UPLOAD_MAX_BYTES)
    """The size of the whole file: the parts named at completion must add up to it."""
    filename: str = Field(min_length=1, max_length=1024)
    mime_type: str = Field(min_length=1, max_length=255)
    purpose: str = Field(json_schema_extra={"enum": list(FILE_PURPOSES)})  # the service's message names the values
    expires_after: FileExpiresAfter | None = None
    """The expiry of the File the upload becomes."""


class UploadComplete(_Strict):
    part_ids: list[str]
    """The parts in the order their bytes make the file."""
    md5: str | None = Field(None, json_schema_extra={"pattern": "^[0-9a-fA-F]{32}$"})  # checked by the service
    """The md5 of the whole file (hex); the completion is refused when the assembled bytes differ."""


class BoxRow(_Strict):
    line: int = Field(ge=1, le=2**31 - 1)
    """The row's line in the file, from 1 (a rollout record's `line`)."""
    sample: str | None = None
    """A model sample (its full text) to read predicted boxes from; null: the reference boxes only."""


class FileBoxesRequest(_Strict):
    """POST /v1/files/{file_id}/boxes (ours): the boxes a grader's iou graders compare on rows of a file."""

    grader: GraderObject
    rows: list[BoxRow] = Field(min_length=1, max_length=500)
    box_convention: BoxConvention | None = None
    """What an iou grader's input_format "auto" means: a training job's model family's convention (its GRPO start
    event's `data.box_convention`); null: xyxy norm1000, as outside a job."""
