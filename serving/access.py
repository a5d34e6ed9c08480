"""Which models a project may call: base models, its fine-tuned models and checkpoints, checkpoints shared
with it. Anything else is a 404, with a clear message when the model is one of the project's jobs that has
not (or not yet) succeeded."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Generic, TypeVar

from fastapi import Request
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from api import models_registry
from api.auth import hash_key
from api.db import session_scope
from api.deps import authenticate, bearer_key
from api.errors import APIError
from api.services.jobs import fine_tuned_model_name
from api.settings import Settings
from api.staging import StagingError, local_model_path
from api.storage import Storage, storage_for
from api.tables import Job, Project

V = TypeVar("V")

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


class TTLCache(Generic[V]):
    """Positive access decisions kept for `serving_access_cache_seconds`: chat requests come by the hundred
    per second while keys and grants change rarely, and on a small host every database round trip on the
    request path is CPU taken from the engine. Denials are never cached, so a fix (a new key, a new grant)
    works at once."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[tuple[str, ...], tuple[float, V]] = {}

    def get(self, key: tuple[str, ...]) -> V | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: tuple[str, ...], value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # that many keys x models within one TTL is rare; cheaper than an LRU
        self._entries[key] = (time.monotonic() + self.ttl, value)

    def clear(self) -> None:
        self._entries.clear()


class RequestAccess:
    """Authentication and model access for the proxied endpoints, with the decisions cached (TTLCache). A miss
    costs one hop to a worker thread and one short transaction; a hit costs neither."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.projects: TTLCache[Project] = TTLCache(settings.serving_access_cache_seconds)
        self.folders: TTLCache[tuple[Path | None]] = TTLCache(settings.serving_access_cache_seconds)

    async def project(self, request: Request) -> Project:
        key = bearer_key(request)
        cache_key = (hash_key(key),)
        project = self.projects.get(cache_key)
        if project is None:
            project = await run_in_threadpool(self._authenticate, key)
            self.projects.put(cache_key, project)
        return project

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
        self.projects.clear()
        self.folders.clear()

    def _authenticate(self, key: str) -> Project:
        with session_scope(self.settings) as session:
            return authenticate(session, key)

    def _resolve(self, project: Project, model_id: str) -> Path | None:
        storage = storage_for(self.settings.storage_url, self.settings.s3_endpoint_url)
        with session_scope(self.settings) as session:
            return resolve(session, self.settings, storage, project, model_id)
