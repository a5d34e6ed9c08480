"""Which models a project may call for chat: base models (Hugging Face ids among them: those configured in
VRFT_BASE_MODELS, downloaded on first use, and any already in the hub cache), its fine-tuned models and
checkpoints, checkpoints shared with it. Anything else is a 404, with a clear message when the model is one of
the project's jobs that has not (or not yet) succeeded. `ModelAccess` also answers serving's questions about
models (serving.interface `ModelSource`): where a model's weights are, which jobs newly succeeded."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from api import hub, models_registry
from api.auth import TTLCache
from api.db import session_scope
from api.errors import APIError, shown
from api.ids import now
from api.services.jobs import fine_tuned_model_name
from api.settings import Settings
from api.staging import StagingError, local_model_path
from api.storage import Storage, delete_tree, storage_for
from api.tables import Checkpoint, CheckpointPermission, Job, Project
from serving.interface import ServingError

_FT = re.compile(r"ft:[^:]+:[^:]+:[^:]*:(?P<job>[A-Za-z0-9]+)(?::ckpt-step-\d+)?")
_NOT_READY = {"failed": "failed", "cancelled": "was cancelled"}


def check_access(session: Session, settings: Settings, project: Project, model_id: str) -> None:
    """Raise a 404 unless the project may call `model_id`."""
    if models_registry.get_model(session, settings, project, model_id) is not None:
        return
    job = _job_of(session, project, model_id)
    if job is not None and (job.status == "succeeded" or job.model_deleted_at is not None):
        raise APIError(404, f"The model '{model_id}' does not exist: it was deleted.", param="model",
                       code="model_not_found")
    if job is not None:
        state = _NOT_READY.get(job.status, f"still {job.status.replace('_', ' ')}")
        raise APIError(404, f"The model '{model_id}' is not ready: its fine-tuning job {job.id} {state}. "
                            "A fine-tuned model can be used once its job has succeeded.", param="model",
                       code="model_not_ready")
    if hub.parse(model_id) is not None:
        raise APIError(404, f"The model '{model_id}' is not served here: a Hugging Face id can be called once it is "
                            "listed in VRFT_BASE_MODELS or is in the server's hub cache (a fine-tuning job on it "
                            "downloads it).", param="model", code="model_not_found")
    raise APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.", param="model",
                   code="model_not_found")


def _job_of(session: Session, project: Project, model_id: str) -> Job | None:
    """The project's job whose fine-tuned model (or a checkpoint of it) `model_id` names."""
    m = _FT.fullmatch(model_id)
    if not m:
        return None
    jobs = session.exec(select(Job).where(Job.project_id == project.id, Job.id.startswith("ftjob-" + m["job"]))).all()
    stem = model_id.split(":ckpt-step-")[0]
    return next((j for j in jobs if fine_tuned_model_name(j, project) == stem), None)


def model_folder(session: Session, settings: Settings, storage: Storage, project_id: str, model_id: str) -> Path:
    """The local HF folder of a model `check_access` allowed (fine-tuned weights are downloaded once: two
    first requests at once wait for one download). A 404 `ServingError` when it has none: serving's prewarm
    expects that type, and the error mapper sends it like any other."""
    with _download_locks.setdefault(model_id, threading.Lock()):
        try:
            return local_model_path(session, settings, storage, project_id, model_id).resolve()
        except StagingError as e:
            raise ServingError(404, f"The model '{model_id}' cannot be served: {e.message}.", param="model",
                               code="model_not_found") from None


_download_locks: dict[str, threading.Lock] = {}


def cache_folder(settings: Settings, model_id: str) -> Path:
    """Where a fine-tuned model's or checkpoint's weights are downloaded for serving (api.staging)."""
    return settings.cache_dir / "models" / re.sub(r"[^A-Za-z0-9._-]", "_", model_id)


def delete_model(session: Session, settings: Settings, project: Project, model_id: str) -> str:
    """Forget one of the project's fine-tuned models or checkpoints: the job keeps its history (its
    `fine_tuned_model` stays, marked deleted), a checkpoint's row and its permissions go. Returns the storage
    prefix of its weights, for the caller to delete once its engines are stopped (`remove_weights`). A model
    the project can see but does not own (a base model, a checkpoint shared with it) is a 403; any other a 404."""
    ckpt = session.exec(select(Checkpoint).where(Checkpoint.fine_tuned_model_checkpoint == model_id,
                                                 Checkpoint.project_id == project.id)).first()
    if ckpt is not None:
        prefix = ckpt.storage_key
        for perm in session.exec(select(CheckpointPermission).where(CheckpointPermission.checkpoint == model_id)):
            session.delete(perm)
        session.flush()
        session.delete(ckpt)
        session.commit()
        return prefix or ""
    job = session.exec(select(Job).where(Job.project_id == project.id, Job.fine_tuned_model == model_id,
                                         Job.status == "succeeded", Job.model_deleted_at.is_(None))).first()
    if job is not None:
        prefix = job.output_key
        job.model_deleted_at, job.output_key = now(), None
        session.add(job)
        session.commit()
        return prefix or ""
    if models_registry.get_model(session, settings, project, model_id) is not None:
        raise APIError(403, f"The model {shown(model_id, 200)} cannot be deleted: it is not one of this project's "
                            "fine-tuned models or checkpoints.", param="model", code="model_not_deletable")
    raise APIError(404, f"The model {shown(model_id, 200)} does not exist or you do not have access to it.",
                   param="model", code="model_not_found")


def remove_weights(settings: Settings, storage: Storage, model_id: str, prefix: str) -> None:
    """Delete a deleted model's stored weights and its serving copy on this host."""
    if prefix:
        delete_tree(storage, prefix)
    shutil.rmtree(cache_folder(settings, model_id), ignore_errors=True)


def resolve(session: Session, settings: Settings, storage: Storage, project: Project, model_id: str) -> Path | None:
    """Check access, find the model's folder (not in external mode: the servers there have their own) and
    end the transaction, so that no database connection is held while the answer streams. One call, so a
    request pays one hop to a worker thread."""
    check_access(session, settings, project, model_id)
    external = settings.serving_mode == "external"
    folder = None if external else model_folder(session, settings, storage, project.id, model_id)
    session.commit()
    return folder


class ModelAccess:
    """Model access for the proxied endpoints, with the decisions cached (TTLCache; the caller's key was
    checked, and cached the same way, by api.middleware.AuthMiddleware). A miss costs one hop to a worker
    thread and one short transaction; a hit costs neither."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folders: TTLCache[tuple[Path | None]] = TTLCache(settings.serving_access_cache_seconds)

    async def folder(self, project: Project, model_id: str) -> Path | None:
        """The weights folder of `model_id` for `project` (None in external mode); 404 when not allowed."""
        cache_key = (project.id, model_id)
        hit = self.folders.get(cache_key)
        if hit is None:
            hit = (await run_in_threadpool(self._resolve, project, model_id),)
            self.folders.put(cache_key, hit)
        return hit[0]

    def forget(self) -> None:
        """Drop every cached decision (a grant was revoked on this server)."""
        self.folders.clear()

    def _resolve(self, project: Project, model_id: str) -> Path | None:
        with session_scope(self.settings) as session:
            return resolve(session, self.settings, self._storage(), project, model_id)

    def _storage(self) -> Storage:
        return storage_for(self.settings.storage_url, self.settings.s3_endpoint_url)

    # serving.interface.ModelSource: for prewarming, where a job's own project asks, so no access check

    def weights(self, project_id: str, model_id: str) -> Path:
        with session_scope(self.settings) as session:
            return model_folder(session, self.settings, self._storage(), project_id, model_id)

    def succeeded_since(self, since: int) -> list[tuple[str, str, str]]:
        with session_scope(self.settings) as session:
            rows = session.exec(select(Job.id, Job.project_id, Job.fine_tuned_model).where(
                Job.status == "succeeded", Job.fine_tuned_model.is_not(None), Job.finished_at >= since,
                Job.model_deleted_at.is_(None))).all()
        return [tuple(r) for r in rows]
