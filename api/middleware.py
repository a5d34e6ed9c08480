"""ASGI middleware around every request, outermost first: request ids and the last-resort 500, authentication
of /v1 before any body is read, and body caps by route.

Authentication comes before the body because FastAPI reads and parses a JSON body before it resolves a
route's dependencies: with the key checked in a dependency, an unauthenticated client could make the server
receive and parse any body it liked.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Authenticator
from api.errors import APIError, error_body, error_response
from api.schemas import UPLOAD_PART_MAX_BYTES
from api.settings import Settings

log = logging.getLogger("vrft.api")

CACHED_AUTH_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
"""Paths whose key checks are reused for `serving_access_cache_seconds`: they run once per generated answer."""
UPLOAD_PATH = "/v1/files"
"""The upload route counts its own multipart stream against `max_upload_bytes` as it writes it to disk."""


def _is_upload_part(path: str) -> bool:
    """POST /v1/uploads/{id}/parts: counts its own stream against the part limit, as the file upload does."""
    return path.startswith("/v1/uploads/") and path.endswith("/parts") and path.count("/") == 4


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
            message = f"The server had an error while processing your request (request id {request_id})."
            body = json.dumps(error_body(message, "server_error")).encode()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


class AuthMiddleware:
    """Every /v1 request names a live API key before its body is read; its project goes to
    `request.state.project`, where `ProjectDep` finds it."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        try:
            project = await self.authenticator.project(_header(scope, b"authorization"),
                                                       cached=scope["path"] in CACHED_AUTH_PATHS)
        except APIError as e:
            await error_response(e)(scope, receive, send)
            return
        scope.setdefault("state", {})["project"] = project
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Caps a request's body by route: chat and completions at `max_chat_body_bytes`, uploads at
    `max_upload_bytes` (counted by the upload route itself as it streams to disk), every other body at
    `max_json_body_bytes`. A declared Content-Length past the cap is refused before a byte is read; a chunked
    body is counted as it arrives and refused the moment it passes the cap."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, path: str) -> int:
        s = self.settings
        if path == UPLOAD_PATH:
            return s.max_upload_bytes + 1024 * 1024  # multipart framing and the form's small fields
        if _is_upload_part(path):
            return UPLOAD_PART_MAX_BYTES + 1024 * 1024
        return s.max_chat_body_bytes if path in CACHED_AUTH_PATHS else s.max_json_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        too_large = APIError(413, f"The request body is larger than the {limit} bytes this endpoint accepts.",
                             code="request_too_large")
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await error_response(too_large)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # an HTTPException passes FastAPI's body parsing and reaches the error mapper
                    raise HTTPException(413, too_large.message)
            return message

        self_counted = scope["path"] == UPLOAD_PATH or _is_upload_part(scope["path"])
        await self.app(scope, receive if self_counted else counted, send)
