"""Which models a project may call: base models, its fine-tuned models and checkpoints, checkpoints shared
with it. Anything else is a 404, with a clear message when the model is one of the project's jobs that has
not (or not yet) succeeded."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from sqlmodel import Session, select

from api import models_registry
from api.errors import APIError
from api.services.jobs import fine_tuned_model_name
from api.settings import Settings
from api.staging import StagingError, local_model_path
from api.storage import Storage
from api.tables import Job, Project

_FT = re.compile(r"^ft:[^:]+:[^:]+:[^:]*:(?P<job>[A-Za-z0-9]+)(?::ckpt-step-\d+)?$")
_NOT_READY = {"failed": "failed", "cancelled": "was cancelled"}


def check_access(session: Session, settings: Settings, project: Project, model_id: str) -> None:
    """Raise a 404 unless the project may call `model_id`."""
    if models_registry.get_model(session, settings, project, model_id) is not None:
        return
    job = _job_of(session, project, model_id)
    if job is not None:
        state = _NOT_READY.get(job.status, f"still {job.status.replace('_', ' ')}")
        raise APIError(404, f"The model '{model_id}' is not ready: its fine-tuning job {job.id} {state}. "
                            "A fine-tuned model can be used once its job has succeeded.", param="model", code="model_not_ready")
    raise APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.", param="model", code="model_not_found")


def _job_of(session: Session, project: Project, model_id: str) -> Job | None:
    """The project's job whose fine-tuned model (or a checkpoint of it) `model_id` names."""
    m = _FT.match(model_id)
    if not m:
        return None
    jobs = session.exec(select(Job).where(Job.project_id == project.id, Job.id.startswith("ftjob-" + m["job"]))).all()
    stem = model_id.split(":ckpt-step-")[0]
    return next((j for j in jobs if fine_tuned_model_name(j, project) == stem), None)


def model_folder(session: Session, settings: Settings, storage: Storage, project_id: str, model_id: str) -> Path:
    """The local HF folder of a model `check_access` allowed (fine-tuned weights are downloaded once: two
    first requests at once wait for one download)."""
    with _download_locks.setdefault(model_id, threading.Lock()):
        try:
            return local_model_path(session, settings, storage, project_id, model_id).resolve()
        except StagingError as e:
            raise APIError(404, f"The model '{model_id}' cannot be served: {e.message}.", param="model", code="model_not_found") from None


_download_locks: dict[str, threading.Lock] = {}


def resolve(session: Session, settings: Settings, storage: Storage, project: Project, model_id: str) -> Path | None:
    """Check access, find the model's folder (not in external mode: the servers there have their own) and
    end the transaction, so that no database connection is held while the answer streams. One call, so a
    request pays one hop to a worker thread."""
    check_access(session, settings, project, model_id)
    folder = None if settings.serving_mode == "external" else model_folder(session, settings, storage, project.id, model_id)
    session.commit()
    return folder
