"""API keys: each belongs to a project; only a sha256 of it is stored."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from typing import Generic, TypeVar

from sqlmodel import Session, or_, select
from starlette.concurrency import run_in_threadpool

from api.db import session_scope
from api.errors import APIError
from api.ids import new_id, now
from api.settings import Settings
from api.tables import ApiKey, Project

V = TypeVar("V")

log = logging.getLogger("vrft.auth")

DEFAULT_PROJECT = "default"
PROJECT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    if not PROJECT_NAME_RE.fullmatch(name):
        raise ValueError(
            "project names are 1-40 lowercase letters, digits, '_' or '-', starting with a letter or digit"
        )
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        project = Project(id=new_id("proj_"), name=name, created_at=now())
        session.add(project)
        session.flush()
    return project


def add_key(session: Session, project: Project, key: str | None = None) -> str:
    """Store a key for the project and return it in clear (the only time it is seen)."""
    key = key or "sk-vrft-" + secrets.token_urlsafe(32)
    session.add(
        ApiKey(id=new_id("key_"), project_id=project.id, key_hash=hash_key(key), prefix=key[:12], created_at=now())
    )
    session.flush()
    return key


def project_for_key(session: Session, key: str) -> Project | None:
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked == False)).first()  # noqa: E712
    return session.exec(select(Project).where(Project.id == row.project_id)).first() if row else None


def list_keys(session: Session, project_name: str | None = None) -> list[tuple[Project, ApiKey]]:
    """Every key with its project, by project and age (a ValueError for an unknown project name)."""
    stmt = select(Project, ApiKey).join(ApiKey, ApiKey.project_id == Project.id)
    if project_name is not None:
        if session.exec(select(Project).where(Project.name == project_name)).first() is None:
            raise ValueError(f"no project is named {project_name!r}")
        stmt = stmt.where(Project.name == project_name)
    return list(session.exec(stmt.order_by(Project.name, ApiKey.seq)).all())


def revoke_key(session: Session, key_id_or_prefix: str) -> tuple[Project, ApiKey]:
    """Revoke the key with this id or stored prefix. A ValueError when none matches, or several do: keys
    share a prefix (`VRFT_API_KEY`s chosen by hand often do), and a guess must not revoke the wrong one."""
    rows = session.exec(select(Project, ApiKey).join(ApiKey, ApiKey.project_id == Project.id)
                        .where(or_(ApiKey.id == key_id_or_prefix, ApiKey.prefix == key_id_or_prefix))).all()
    if not rows:
        raise ValueError(f"no key has the id or prefix {key_id_or_prefix!r} (`vrft keys list` shows them)")
    if len(rows) > 1:
        ids = ", ".join(key.id for _, key in rows)
        raise ValueError(f"{len(rows)} keys have the prefix {key_id_or_prefix!r}: name one by its key id ({ids})")
    project, key = rows[0]
    key.revoked = True
    session.add(key)
    return project, key


def bootstrap_keys(session: Session, settings: Settings) -> str | None:
    """On start: make `VRFT_API_KEY` a key of the default project; if no key exists at all, create one,
    write it to `{home}/api_key` (mode 0600) and return it so the caller can print it once."""
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
        row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
        if row is None:
            add_key(session, get_or_create_project(session, DEFAULT_PROJECT), key)
        elif row.revoked:  # `vrft keys revoke` is final: a restart does not bring the key back
            log.warning("VRFT_API_KEY is a revoked key: it stays revoked (set another, or unset it)")
        return None
    if session.exec(select(ApiKey)).first() is not None:
        return None
    key = add_key(session, get_or_create_project(session, DEFAULT_PROJECT))
    path = settings.home / "api_key"
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return key


def bearer_key(authorization: str) -> str:
    """The API key of an `Authorization: Bearer KEY` header value; a 401 when there is none."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    return key.strip()


def authenticate(session: Session, key: str) -> Project:
    """The project of `key`; a 401 when no live key matches."""
    project = project_for_key(session, key)
    if project is None:
        raise APIError(401, f"Incorrect API key provided: {key[:8]}****.", code="invalid_api_key")
    return project


class TTLCache(Generic[V]):
    """Positive access decisions kept for `serving_access_cache_seconds`: chat requests come by the hundred
    per second, and each database round trip is CPU taken from the engine. Denials are never cached, so a fix
    (a new key, a new grant) works at once."""

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


class Authenticator:
    """Authorization header -> project, for every /v1 request (api.middleware.AuthMiddleware). Uncached, but
    where the caller asks (the chat paths): a revoked key stops working there within the cache time (at once
    for every other path)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.projects: TTLCache[Project] = TTLCache(settings.serving_access_cache_seconds)

    async def project(self, authorization: str, *, cached: bool) -> Project:
        key = bearer_key(authorization)
        cache_key = (hash_key(key),)
        project = self.projects.get(cache_key) if cached else None
        if project is None:
            project = await run_in_threadpool(self._lookup, key)
            if cached:
                self.projects.put(cache_key, project)
        return project

    def _lookup(self, key: str) -> Project:
        with session_scope(self.settings) as session:
            return authenticate(session, key)
