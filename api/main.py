"""The FastAPI application: routers under /v1, one error mapper, request ids, start-up work."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import bootstrap_keys
from api.db import migrate, session_scope
from api.errors import error_body, install_error_handlers
from api.routes import chat, checkpoints, files, graders, jobs, models
from api.services.files import FileValidator
from api.settings import Settings, get_settings
from api.worker import Worker
from serving.access import RequestAccess
from serving.manager import ServingManager

log = logging.getLogger("vrft.api")


class RequestIdMiddleware:
    """Puts `x-request-id` on every response (the SDK reads it into `request_id`), and turns any exception
    that escaped the handlers into a sanitised OpenAI-shaped 500 that still carries the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if started:
                raise
            import json

            body = json.dumps(error_body(f"The server had an error while processing your request (request id {request_id}).", "server_error")).encode()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, *, embedded_worker: bool | None = None) -> FastAPI:
    settings = settings or get_settings()
    run_worker = settings.embedded_worker if embedded_worker is None else embedded_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        migrate(settings)
        with session_scope(settings) as s:
            key = bootstrap_keys(s, settings)
        if key:
            print(f"Created the first API key (saved to {settings.home / 'api_key'}):\n  {key}", flush=True)
        app.state.file_validator = FileValidator(settings)
        app.state.file_validator.resume_pending()
        app.state.serving = ServingManager(settings)
        app.state.serving_access = RequestAccess(settings)
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

    app.add_middleware(RequestIdMiddleware)
    return app
