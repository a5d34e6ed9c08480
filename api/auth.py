"""API keys: each belongs to a project; only a sha256 of it is stored."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets

from sqlmodel import Session, select

from api.ids import new_id, now
from api.settings import Settings
from api.tables import ApiKey, Project

log = logging.getLogger("vrft.auth")

DEFAULT_PROJECT = "default"
PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    if not PROJECT_NAME_RE.match(name):
        raise ValueError("project names are 1-40 lowercase letters, digits, '_' or '-', starting with a letter or digit")
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        project = Project(id=new_id("proj_"), name=name, created_at=now())
        session.add(project)
        session.flush()
    return project


def add_key(session: Session, project: Project, key: str | None = None) -> str:
    """Store a key for the project and return it in clear (the only time it is seen)."""
    key = key or "sk-vrft-" + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key_"), project_id=project.id, key_hash=hash_key(key), prefix=key[:12], created_at=now()))
    session.flush()
    return key


def project_for_key(session: Session, key: str) -> Project | None:
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked == False)).first()  # noqa: E712
    return session.exec(select(Project).where(Project.id == row.project_id)).first() if row else None


def bootstrap_keys(session: Session, settings: Settings) -> str | None:
    """On start: make `VRFT_API_KEY` a key of the default project; if no key exists at all, create one,
    write it to `{home}/api_key` (mode 0600) and return it so the caller can print it once."""
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
        if project_for_key(session, key) is None:
            add_key(session, get_or_create_project(session, DEFAULT_PROJECT), key)
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
