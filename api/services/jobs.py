"""fine_tuning.jobs: creation with validation, the state machine, events, checkpoints, and the atomic claim
that hands a job to exactly one worker."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, select

from api import hub, integrations, models_registry
from api.errors import APIError, not_found, shown
from api.ids import new_id, now
from api.schemas import (
    DpoMethod,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    Hyperparameters,
    JobCreate,
    JobError,
    SupervisedMethod,
)
from api.services.graders import validated_grader
from api.services.pagination import page
from api.settings import Settings
from api.tables import Checkpoint, File, Job, JobEvent, Project

TERMINAL = ("succeeded", "failed", "cancelled")
# Allowed transitions: the job state machine of DESIGN.md, plus paused.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "validating_files": ("queued", "failed", "cancelled"),
    "queued": ("running", "paused", "cancelled", "failed"),
    "running": ("succeeded", "failed", "cancelled", "paused", "queued"),
    "paused": ("queued", "cancelled", "failed", "succeeded"),  # the runner ends a job that finished as it paused
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}
GRADER_PARAM = "method.reinforcement.grader"
RESPONSE_FORMAT_PARAM = "method.reinforcement.response_format"
SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for json_schema.name

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- wire


def to_wire(job: Job) -> FineTuningJob:
    hp = (job.method.get(job.method["type"]) or {}).get("hyperparameters", {})
    return FineTuningJob(
        id=job.id, created_at=job.created_at, error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model, finished_at=job.finished_at,
        hyperparameters=Hyperparameters(
            batch_size=hp.get("batch_size"), learning_rate_multiplier=hp.get("learning_rate_multiplier"),
            n_epochs=hp.get("n_epochs"),
        ),
        model=job.model, organization_id=job.project_id, result_files=list(job.result_files), seed=job.seed,
        status=job.status, trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file, estimated_finish=job.estimated_finish, integrations=job.integrations,
        metadata=job.metadata_, method=job.method,
    )


def event_to_wire(e: JobEvent) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=e.id, created_at=e.created_at, level=e.level, message=e.message, data=e.data, type=e.type
    )


def checkpoint_to_wire(c: Checkpoint) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
        fine_tuning_job_id=c.job_id, metrics=c.metrics, step_number=c.step_number,
    )


# ---------------------------------------------------------------- creation


ROW_KINDS = {
    "reinforcement": ("rl_rows", "ending with an assistant message",
                      "reinforcement rows must end with the user's message (the model writes the answer)"),
    "supervised": ("sft_rows", "whose last message is not the assistant's",
                   "supervised rows must end with the assistant message to learn"),
    "dpo": ("dpo_rows", "that are not preference rows",
            "DPO rows are {'input': {'messages': [...]}, 'preferred_output': [...], 'non_preferred_output': [...]}"),
}
"""Per method: the file statistic counting the rows it can train on (api/validation.py), what the other rows are,
and what its rows must be."""


def _check_training_file(session: Session, project: Project, file_id: str, param: str, method: str) -> File:
    f = session.exec(select(File).where(File.id == file_id, File.project_id == project.id)).first()
    if f is None:
        raise APIError(
            400, f"Invalid file '{file_id}': no such file in this project.", param=param, code="invalid_file"
        )
    if f.purpose != "fine-tune":
        raise APIError(
            400,
            f"File '{file_id}' has purpose '{f.purpose}'; upload it with purpose 'fine-tune'.",
            param=param,
            code="invalid_file",
        )
    if f.status == "uploaded":
        raise APIError(
            400,
            f"File '{file_id}' is still being validated; wait until its status is 'processed'.",
            param=param,
            code="file_not_ready",
        )
    if f.status == "error":
        raise APIError(400, f"File '{file_id}' failed validation: {f.status_details}", param=param, code="invalid_file")
    stats = f.stats or {}
    rows = stats.get("rows", 0)
    count, wrong, rule = ROW_KINDS[method]
    if stats.get(count, 0) != rows:
        raise APIError(400, f"File '{file_id}' has {rows - stats.get(count, 0)} row(s) {wrong}; {rule}.", param=param,
                       code="invalid_file")
    return f


def _resolve_method(body: JobCreate, settings: Settings) -> dict[str, Any]:
    method = body.method
    if method is None:
        hp = (body.hyperparameters or SupervisedMethod().hyperparameters).model_dump(exclude_none=True)
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}
    if body.hyperparameters is not None:
        raise APIError(
            400,
            "The top-level 'hyperparameters' is deprecated; set them in 'method' instead, not both.",
            param="hyperparameters",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if other != method.type and getattr(method, other) is not None:
            raise APIError(
                400, f"'method.{other}' was given but method.type is '{method.type}'.", param=f"method.{other}"
            )
    if method.type == "dpo":
        return {"type": "dpo", "dpo": (method.dpo or DpoMethod()).model_dump(exclude_none=True)}
    if method.type == "supervised":
        sup = method.supervised or SupervisedMethod()
        return {"type": "supervised", "supervised": sup.model_dump(exclude_none=True)}
    if method.reinforcement is None:
        raise APIError(
            400,
            "Missing required parameter: 'method.reinforcement' (with its 'grader').",
            param="method.reinforcement",
            code="missing_required_parameter",
        )
    rl = method.reinforcement
    validated_grader(rl.grader, GRADER_PARAM, "Invalid grader: ")
    _validate_response_format(rl.response_format, settings)
    return {"type": "reinforcement", "reinforcement": rl.model_dump(exclude_none=True)}


def _validate_response_format(rf: dict[str, Any] | None, settings: Settings) -> None:
    """OpenAI's shapes: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema":
    {"name", "schema", "strict"?, "description"?}}, the schema a valid JSON Schema. The samples are then
    constrained to it (the vLLM rollout engine's structured outputs)."""
    import jsonschema

    if rf is None:
        return
    P = RESPONSE_FORMAT_PARAM
    kind = rf.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise APIError(
            400,
            f"Invalid value for '{P}.type': {shown(kind)}; expected 'text', 'json_object' or 'json_schema'.",
            param=f"{P}.type",
            code="invalid_response_format",
        )
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise APIError(400, f"Missing required parameter: '{P}.json_schema' (an object with 'name' and 'schema').",
                           param=f"{P}.json_schema", code="invalid_response_format")
        if not isinstance(js.get("name"), str) or not SCHEMA_NAME.fullmatch(js["name"]):
            raise APIError(400, f"Invalid '{P}.json_schema.name': 1-64 characters of a-z, A-Z, 0-9, '_' and '-'.",
                           param=f"{P}.json_schema.name", code="invalid_response_format")
        schema = js.get("schema")
        if not isinstance(schema, dict):
            raise APIError(400, f"Invalid '{P}.json_schema.schema': a JSON Schema object is required.",
                           param=f"{P}.json_schema.schema", code="invalid_response_format")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            where = "/".join(str(x) for x in e.path) or "(root)"
            raise APIError(400, f"Invalid '{P}.json_schema.schema' at {where}: {e.message}",
                           param=f"{P}.json_schema.schema", code="invalid_response_format") from None
    if kind != "text" and settings.rollout_engine != "vllm":
        raise APIError(
            400,
            f"'{P}' needs the vLLM rollout engine to constrain the samples; this server samples "
            f"with '{settings.rollout_engine}' (VRFT_ROLLOUT_ENGINE).",
            param=P,
            code="unsupported_response_format",
        )


def _plan_memory(settings: Settings, model: str, pin: dict | None, method: dict) -> Any:
    """The memory plan of a job on a base model or hub id (trainer/memory.py): None when the model's config is
    not at hand (a fine-tuned model in remote storage). Knobs it chooses are written into `method`'s
    hyperparameters; a job that cannot fit is a 400 saying what would."""
    from trainer.memory import check_job, default_device

    base = models_registry.base_models(settings).get(model)
    if pin is not None:
        config = hub.pinned_config(settings, pin)
    elif base is not None:
        config = json.loads((base.path / "config.json").read_text())
    else:
        return None
    kind = method["type"]
    if not method.get(kind):
        method[kind] = {}
    hp = method[kind].setdefault("hyperparameters", {})
    try:
        plan = check_job(config, kind, hp, settings.device_memory_gib, settings.trainer_num_ranks,
                         rollout_engine=settings.rollout_engine,
                         device={"auto": default_device(), "cpu": "cpu", "cuda": "gpu"}[settings.accelerator])
    except (KeyError, TypeError, ValueError) as e:  # a config the estimate cannot read: the trainer decides
        log.warning("no memory plan for %s: %s: %s", model, type(e).__name__, e)
        return None
    if not plan.fits:
        raise APIError(400, f"This job does not fit in memory: it {plan.message}.",
                       param=f"method.{kind}.hyperparameters", code="insufficient_memory")
    hp.update(plan.changes)
    return plan


def create_job(session: Session, settings: Settings, project: Project, body: JobCreate) -> Job:
    method = _resolve_method(body, settings)
    pin = hub.check_for_job(settings, body.model)  # a Hugging Face id: checked and pinned to a commit
    if pin is None and models_registry.resolve_trainable(session, settings, project, body.model) is None:
        raise APIError(
            400,
            f"Model '{body.model}' is not available for fine-tuning. GET /v1/models lists the base models.",
            param="model",
            code="model_not_found",
        )
    integrations.check_integrations([i.model_dump() for i in body.integrations or ()])  # W&B needs the worker's key
    _check_training_file(session, project, body.training_file, "training_file", method["type"])
    if body.validation_file:
        _check_training_file(session, project, body.validation_file, "validation_file", method["type"])
    memory = _plan_memory(settings, body.model, pin, method)
    job = Job(
        id=new_id("ftjob-"),
        project_id=project.id,
        created_at=now(),
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        status="validating_files",
        method=method,
        hyperparameters=(method[method["type"]] or {}).get("hyperparameters", {}),
        seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1),
        suffix=body.suffix,
        metadata_=body.metadata,
        integrations=[i.model_dump(exclude_none=True) for i in body.integrations] if body.integrations else None,
        result_files=[],
        progress={"hub": pin} if pin else None,
    )
    session.add(job)
    session.flush()
    add_event(session, job, f"Created fine-tuning job: {job.id}")
    files = f"Validating training file: {job.training_file}"
    if job.validation_file:
        files += f" and validation file: {job.validation_file}"
    add_event(session, job, files)
    if pin:
        add_event(session, job, f"Model {body.model} resolved to commit {pin['sha']} on the Hugging Face Hub")
    if memory is not None:
        add_event(session, job, f"Memory plan: {memory.message}", data={"memory_plan": memory.estimate.gib()})
    if job.integrations:
        add_event(session, job, "Reporting to: " + ", ".join(i["type"] for i in job.integrations))
    session.commit()
    return job


# ---------------------------------------------------------------- reading


def get_job(session: Session, project: Project, job_id: str) -> Job:
    job = session.exec(select(Job).where(Job.id == job_id, Job.project_id == project.id)).first()
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


def list_jobs(
    session: Session, project: Project, *, after: str | None, limit: int, metadata: dict[str, str]
) -> tuple[list[Job], bool]:
    stmt = select(Job).where(Job.project_id == project.id)
    if not metadata:
        return page(session, stmt, Job, after=after, limit=limit)
    # JSON filtering differs by database; filter in Python over the project's jobs, newest first.
    rows = [
        j
        for j in session.exec(stmt.order_by(Job.seq.desc())).all()
        if all((j.metadata_ or {}).get(k) == v for k, v in metadata.items())
    ]
    if after is not None:
        ids = [j.id for j in rows]
        if after not in ids:
            raise APIError(400, f"Invalid value for 'after': no job with id '{after}' in this list.", param="after")
        rows = rows[ids.index(after) + 1:]
    return rows[:limit], len(rows) > limit


def list_events(session: Session, job: Job, *, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    return page(session, select(JobEvent).where(JobEvent.job_id == job.id), JobEvent, after=after, limit=limit)


def list_checkpoints(session: Session, job: Job, *, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
    return page(session, select(Checkpoint).where(Checkpoint.job_id == job.id), Checkpoint, after=after, limit=limit)


# ---------------------------------------------------------------- writing


def add_event(
    session: Session, job: Job, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
) -> JobEvent:  # noqa: A002
    ev = JobEvent(
        id=new_id("ftevent-"), job_id=job.id, created_at=now(), level=level, message=message, type=type, data=data
    )
    session.add(ev)
    return ev


class StateChanged(APIError):
    """A compare-and-set transition lost to a concurrent change; the job has been refreshed."""


def transition(
    session: Session, job: Job, to: str, message: str, *, level: str = "info", error: dict | None = None
) -> Job:
    """Move `job` to `to` if the state machine allows it from its current status (compare-and-set, so a
    concurrent change by a worker or another request wins cleanly), with an event; else a 400."""
    frm = job.status
    if to not in TRANSITIONS.get(frm, ()):
        raise APIError(
            400, f"Cannot move a job from '{frm}' to '{to}'.", param="fine_tuning_job_id", code="invalid_state"
        )
    values: dict[str, Any] = {"status": to}
    if to in TERMINAL:
        values["finished_at"] = now()  # the claim stays: its worker still stops the trainer and releases it
    if error is not None:
        values["error"] = error
    res = session.execute(update(Job).where(Job.seq == job.seq, Job.status == frm).values(**values))
    if res.rowcount != 1:
        session.rollback()
        session.refresh(job)
        raise StateChanged(
            400,
            f"The job changed state to '{job.status}' meanwhile; try again.",
            param="fine_tuning_job_id",
            code="invalid_state",
        )
    add_event(session, job, message, level=level)
    session.commit()
    session.refresh(job)
    return job


_USER_ACTIONS = {
    # action: (allowed from, to, event message, message when refused)
    "cancel": (
        ("validating_files", "queued", "running", "paused"),
        "cancelled",
        "Job cancelled by the user",
        "Cannot cancel a job that already {s}.",
    ),
    "pause": (
        ("queued", "running"),
        "paused",
        "Job paused by the user",
        "Only a queued or running job can be paused; this one is {s}.",
    ),
    "resume": (
        ("paused",),
        "queued",
        "Job resumed by the user, moving it to the queue",
        "Only a paused job can be resumed; this one is {s}.",
    ),
}


def user_action(session: Session, job: Job, action: str) -> Job:
    """Apply a user's cancel/pause/resume. A worker may move the job at the same moment (validating_files ->
    queued, queued -> running); the action is then re-checked against the new status rather than refused."""
    allowed, to, message, refusal = _USER_ACTIONS[action]
    for _ in range(10):
        if job.status not in allowed:
            s = (
                job.status
                if action != "cancel"
                else {"succeeded": "succeeded", "failed": "failed", "cancelled": "was cancelled"}.get(
                    job.status, job.status
                )
            )
            raise APIError(400, refusal.format(s=s), param="fine_tuning_job_id", code="invalid_state")
        try:
            return transition(session, job, to, message)
        except StateChanged:
            continue  # `job` was refreshed: decide again from its new status
    raise APIError(409, "The job keeps changing state; try again.", param="fine_tuning_job_id", code="invalid_state")


def fine_tuned_model_name(job: Job, project: Project) -> str:
    """`ft:{base}:{project}:{suffix}:{id}`; training from a fine-tuned model keeps the root base."""
    base = job.model.split(":")[1] if job.model.startswith("ft:") else job.model
    return f"ft:{base}:{project.name}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')[:8]}"


def register_checkpoint(
    session: Session, job: Job, project: Project, *, step: int, metrics: dict, storage_key: str | None
) -> Checkpoint:
    ckpt = Checkpoint(
        id=new_id("ftckpt_"), job_id=job.id, project_id=job.project_id, created_at=now(),
        fine_tuned_model_checkpoint=f"{fine_tuned_model_name(job, project)}:ckpt-step-{step}",
        step_number=step, metrics=metrics, storage_key=storage_key,
    )
    session.add(ckpt)
    add_event(session, job, f"Checkpoint created at step {step}")
    session.commit()
    return ckpt


# ---------------------------------------------------------------- the claim


def claim_job(session: Session, *, worker_id: str, status: str | tuple[str, ...], lease_seconds: float) -> Job | None:
    """Give the oldest job in `status` that no live worker holds to `worker_id`, atomically: on PostgreSQL
    `SELECT ... FOR UPDATE SKIP LOCKED` lets concurrent workers pass over each other's rows; on SQLite (one
    writer at a time) the conditional UPDATE below is the compare-and-set. A lease that ran out (its worker
    died) makes the job claimable again."""
    statuses = (status,) if isinstance(status, str) else status
    for _ in range(5):
        t = time.time()
        free = or_(Job.claimed_by.is_(None), Job.lease_expires_at < t)
        stmt = select(Job.seq).where(Job.status.in_(statuses), free).order_by(Job.seq).limit(1)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        seq = session.exec(stmt).first()
        if seq is None:
            session.rollback()
            return None
        res = session.execute(
            update(Job).where(Job.seq == seq, Job.status.in_(statuses), free)
            .values(claimed_by=worker_id, lease_expires_at=t + lease_seconds)
        )
        session.commit()
        if res.rowcount == 1:
            return session.exec(select(Job).where(Job.seq == seq)).one()
    return None


def renew_lease(session: Session, job: Job, *, worker_id: str, lease_seconds: float) -> bool:
    """Extend the worker's lease; False if it lost the job (another worker took it over)."""
    res = session.execute(
        update(Job)
        .where(Job.seq == job.seq, Job.claimed_by == worker_id)
        .values(lease_expires_at=time.time() + lease_seconds)
    )
    session.commit()
    return res.rowcount == 1


def release(session: Session, job: Job, *, worker_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.seq == job.seq, Job.claimed_by == worker_id)
        .values(claimed_by=None, lease_expires_at=None)
    )
    session.commit()


def validate_job_files(session: Session, job: Job) -> Job:
    """The worker's first step: the files a job names must still exist and be processed."""
    project = session.exec(select(Project).where(Project.id == job.project_id)).one()
    try:
        _check_training_file(session, project, job.training_file, "training_file", job.method["type"])
        if job.validation_file:
            _check_training_file(session, project, job.validation_file, "validation_file", job.method["type"])
    except APIError as e:
        return transition(
            session,
            job,
            "failed",
            f"File validation failed: {e.message}",
            level="error",
            error={
                "code": "invalid_training_file" if e.param == "training_file" else "invalid_validation_file",
                "message": e.message,
                "param": e.param,
            },
        )
    return transition(session, job, "queued", "Files validated, moving job to queued state")

