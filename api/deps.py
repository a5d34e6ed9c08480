"""Typed dependencies that keep routes short: settings, a database session, the caller's project, storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

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


def get_project(request: Request) -> Project:
    """The caller's project, authenticated by api.middleware.AuthMiddleware before the body was read. No
    database session is held for it: a route that does slow work holds none unless it asks for SessionDep."""
    project = getattr(request.state, "project", None)
    if project is None:  # a route outside /v1, or an app built without the middleware
        raise APIError(401, "You didn't provide an API key.", code="missing_api_key")
    return project


ProjectDep = Annotated[Project, Depends(get_project)]
