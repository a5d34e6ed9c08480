"""The FastAPI application: routers under /v1, one error mapper, request ids, start-up work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from api import openapi
from api.auth import Authenticator, bootstrap_keys
from api.db import migrate, private_home, session_scope
from api.errors import install_error_handlers
from api.middleware import AuthMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from api.routes import chat, checkpoints, dashboard, files, graders, jobs, models, rollouts, uploads
from api.services import uploads as upload_svc
from api.services.files import FileValidator
from api.services.model_access import ModelAccess
from api.settings import Settings, get_settings
from api.storage import storage_for
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
        sweeper = asyncio.create_task(upload_svc.sweep(settings, storage_for(settings.storage_url,
                                                                             settings.s3_endpoint_url)))
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
            sweeper.cancel()
            app.state.file_validator.shutdown()

    app = FastAPI(title="vrft", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    install_error_handlers(app)

    v1 = APIRouter(prefix="/v1")
    for module in (files, uploads, jobs, rollouts, checkpoints, models, graders, chat):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(dashboard.router)  # the web dashboard at /dashboard (api/dashboard/)
    openapi.install(app)  # /openapi.json as the API answers (api/openapi.py)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # added innermost first: a request meets RequestIdMiddleware, then AuthMiddleware, then BodyLimitMiddleware
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.state.authenticator = Authenticator(settings)
    app.add_middleware(AuthMiddleware, authenticator=app.state.authenticator)
    app.add_middleware(RequestIdMiddleware)
    return app
