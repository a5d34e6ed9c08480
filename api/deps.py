"""Typed dependencies that keep routes short: settings, a database session, the caller's project, storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from api.auth import project_for_key
from api.db import session_scope
from api.errors import APIError
from api.settings import Settings
from api.storage import Storage, storage_for
from api.tables import Project


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_storage(settings: SettingsDep) -> Storage:
    return storage_for(settings.storage_url, settings.s3_endpoint_url)


StorageDep = Annotated[Storage, Depends(get_storage)]


def bearer_key(request: Request) -> str:
    """The API key of `Authorization: Bearer KEY`; a 401 when there is none."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
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


def get_project(request: Request, session: SessionDep) -> Project:
    return authenticate(session, bearer_key(request))


ProjectDep = Annotated[Project, Depends(get_project)]
