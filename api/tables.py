"""Database tables. Each row carries its project: every query filters on it, so projects never see each
other's objects. `seq` is the primary key and gives a total, insertion order for cursor pagination; `id` is
the public OpenAI-style id."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class Project(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    name: str = Field(unique=True, index=True)
    created_at: int


class ApiKey(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    project_id: str = Field(index=True, foreign_key="project.id")
    key_hash: str = Field(unique=True, index=True)
    """sha256 of the key: keys are 256-bit random, so a fast hash is enough (no password stretching)."""
    prefix: str
    created_at: int
    revoked: bool = False


class File(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    project_id: str = Field(index=True, foreign_key="project.id")
    filename: str
    purpose: str = Field(index=True)
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: int
    expires_at: int | None = None
    status: str
    status_details: str | None = Field(default=None, sa_column=Column(Text))
    storage_key: str
    sha256: str
    stats: dict | None = _json()
    """What validation learnt: row counts by kind, image count. Not on the wire."""


class Job(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    project_id: str = Field(index=True, foreign_key="project.id")
    created_at: int
    model: str
    training_file: str
    validation_file: str | None = None
    status: str = Field(index=True)
    method: dict = _json(nullable=False)
    hyperparameters: dict = _json(nullable=False)
    seed: int
    suffix: str | None = None
    metadata_: dict | None = Field(default=None, sa_column=Column("metadata", JSON))
    integrations: list | None = _json()
    error: dict | None = _json()
    fine_tuned_model: str | None = Field(default=None, index=True)
    finished_at: int | None = None
    result_files: list = _json(nullable=False)
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    claimed_by: str | None = None
    """The worker that holds this job, and until when (`lease_expires_at`, unix seconds)."""
    lease_expires_at: float | None = None
    progress: dict | None = _json()
    """The runner's bookkeeping: the last trainer event applied (`trainer_seq`), the last metrics step, the
    total steps. Updated in the same transaction as the events it accounts for, so none is lost or doubled."""
    output_key: str | None = None
    """Storage prefix of the finished model (HF folder)."""
    model_deleted_at: int | None = None
    """When the fine-tuned model was deleted (DELETE /v1/models/{model}): its weights are gone, the job stays."""

    __table_args__ = (Index("ix_job_project_seq", "project_id", "seq"),)


class JobEvent(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    job_id: str = Field(index=True, foreign_key="job.id")
    created_at: int
    level: str
    message: str = Field(sa_column=Column(Text, nullable=False))
    type: str | None = None
    data: dict | None = _json()


class Checkpoint(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    job_id: str = Field(index=True, foreign_key="job.id")
    project_id: str = Field(index=True, foreign_key="project.id")
    created_at: int
    fine_tuned_model_checkpoint: str = Field(unique=True, index=True)
    step_number: int
    metrics: dict = _json(nullable=False)
    storage_key: str | None = None


class CheckpointPermission(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    checkpoint: str = Field(index=True, foreign_key="checkpoint.fine_tuned_model_checkpoint")
    project_id: str = Field(index=True)
    """The project granted access (not the owner)."""
    created_at: int


class Rollout(SQLModel, table=True):
    """A rollout record: one sampled completion of a training step or an evaluation with its grades, from the
    trainer's `rollouts` events (trainer/rollout_records.py). Listed by GET /v1/fine_tuning/jobs/{id}/rollouts."""

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    job_id: str = Field(index=True, foreign_key="job.id")
    created_at: int
    step: int
    split: str
    """train or validation"""
    line: int | None = None
    """The prompt's line in the training or validation file."""
    group_index: int
    """The prompt's place in the step's batch or the evaluation's prompts."""
    sample_index: int
    """The completion's place among its prompt's completions."""
    completion: str = Field(sa_column=Column(Text, nullable=False))
    reward: float | None = None
    sub_rewards: dict = _json(nullable=False)
    advantage: float | None = None
    errors: list = _json(nullable=False)
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    completion_tokens: int
    truncated: bool

    __table_args__ = (Index("ix_rollout_job_step_split", "job_id", "step", "split"),)


class Upload(SQLModel, table=True):
    """A large file sent in parts (POST /v1/uploads); completing it makes a File."""

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    project_id: str = Field(index=True, foreign_key="project.id")
    filename: str
    purpose: str
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    """The size the caller declared; the parts named at completion must add up to it."""
    mime_type: str
    created_at: int
    expires_at: int = Field(index=True)
    status: str = Field(index=True)
    """pending, completing (assembling its parts; `pending` on the wire), completed, cancelled, expired."""
    received_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    """Bytes of every part stored so far (capped at the 8 GB an upload may hold)."""
    file_expires_after: int | None = None
    """`expires_after.seconds` of the File it becomes."""
    file_id: str | None = None
    """The File it became (reserved while its parts are assembled)."""


class UploadPart(SQLModel, table=True):
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    upload_id: str = Field(index=True, foreign_key="upload.id")
    created_at: int
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    storage_key: str
