"""The FastAPI application: routers under /v1, one error mapper, request ids, start-up work."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from api.auth import Authenticator, bootstrap_keys
from api.db import migrate, private_home, session_scope
from api.errors import install_error_handlers
from api.middleware import AuthMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from api.routes import chat, checkpoints, files, graders, jobs, models
from api.services.files import FileValidator
from api.services.model_access import ModelAccess
from api.settings import Settings, get_settings
from api.worker import Worker
from serving.manager import ServingManager

log = logging.getLogger("vrft.api")


def create_app(settings: Settings | None = None, *, embedded_worker: bool | None = None) -> FastAPI:
    settings = settings or get_settings()
    run_worker = settings.embedded_worker if embedded_worker is None else embedded_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        private_home(settings)
        migrate(settings)
        with session_scope(settings) as s:
            key = bootstrap_keys(s, settings)
        if key:
            print(f"Created the first API key (saved to {settings.home / 'api_key'}):\n  {key}", flush=True)
        app.state.file_validator = FileValidator(settings)
        app.state.file_validator.resume_pending()
        app.state.model_access = ModelAccess(settings)
        app.state.serving = ServingManager(settings, app.state.model_access)
        await app.state.serving.start()
        worker = Worker(settings) if run_worker else None
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()
                worker.join(timeout=60)
            await app.state.serving.stop()
            app.state.file_validator.shutdown()

    app = FastAPI(title="vrft", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    install_error_handlers(app)

    v1 = APIRouter(prefix="/v1")
    for module in (files, jobs, checkpoints, models, graders, chat):
        v1.include_router(module.router)
    app.include_router(v1)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # added innermost first: a request meets RequestIdMiddleware, then AuthMiddleware, then BodyLimitMiddleware
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.state.authenticator = Authenticator(settings)
    app.add_middleware(AuthMiddleware, authenticator=app.state.authenticator)
    app.add_middleware(RequestIdMiddleware)
    return app
