"""The standalone grader service (`vrft grader serve`) and its client, `RemoteGrader`.

Reward computation (python sandboxes, judge models) can live on CPU machines apart from the GPU
trainers. The trainer grades in-process with `grader.compile(spec)`, or through this service with
`grader.compile(spec, service_url=URL)` (a RemoteGrader): both return the same BatchResult. This module uses
grader.core; grader.core never imports it.

HTTP (JSON):
    GET  /health
    POST /v1/grade     {"grader": spec, "samples": [...], "items": [unique rows], "item_index": [...]}
                       -> BatchResult.to_dict()   (items are sent once per batch, not once per sample)
    POST /v1/fine_tuning/alpha/graders/run | /validate   OpenAI's shapes, for convenience
Compiled graders are cached by the hash of their spec, so a job's python source is compiled and its
sandbox pool warmed once. Set VRFT_GRADER_SERVICE_TOKEN to require `Authorization: Bearer <token>`: the
service runs code and calls judge models for whoever reaches it, so `serve` refuses to bind anything but
loopback without a token, and warns when it runs without one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any, Optional, Sequence

import httpx
from pydantic import BaseModel, ConfigDict

from grader.core import CompiledGrader, compile, run
from grader.errors import GraderValidationError
from grader.model_graders import ModelEndpoint
from grader.registry import validate_grader
from grader.reward import BatchResult
from grader.wire import GraderRunRequest, GraderValidateRequest

CACHE_SIZE = 16

log = logging.getLogger(__name__)


def _spec_key(spec: Any) -> str:
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _pack(samples: Sequence[Any], items: Sequence[Any]) -> dict:
    index: dict[int, int] = {}
    unique: list[Any] = []
    idx = []
    for it in items:
        k = id(it)
        if k not in index:
            index[k] = len(unique)
            unique.append(it)
        idx.append(index[k])
    return {"samples": list(samples), "items": unique, "item_index": idx}


class GradeRequest(BaseModel):
    """POST /v1/grade: one grader, many samples; `items` holds each distinct row once."""

    model_config = ConfigDict(extra="forbid")
    grader: dict[str, Any]
    samples: list[Any]
    """Model outputs: strings, or objects with OpenAI's sample fields (output_text, output_json, ...)."""
    items: list[Any]
    """The rows; one per sample, or the distinct ones when `item_index` is given."""
    item_index: Optional[list[int]] = None
    """For each sample, the index of its row in `items`."""


def create_app(*, token: str | None = None, endpoint: ModelEndpoint | None = None, sandbox=None,
               workers: int | None = None):
    """The grader service as an ASGI app."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    token = _token(token)
    if token is None:
        log.warning("the grader service requires no token: anyone who can reach it may run code and judge models "
                    "through it (set VRFT_GRADER_SERVICE_TOKEN)")
    cache: "OrderedDict[str, CompiledGrader]" = OrderedDict()
    lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        with lock:
            for g in cache.values():
                g.close()
            cache.clear()

    app = FastAPI(title="vrft grader service", docs_url="/docs", redoc_url=None, lifespan=lifespan)

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}}, status)

    @app.exception_handler(GraderValidationError)
    async def invalid_grader(_request: Request, e: GraderValidationError) -> JSONResponse:
        """Every endpoint takes a grader spec; a bad one is a 400 naming the field under `grader`."""
        return error(400, e.message, e.prefixed("grader").param, "invalid_grader")

    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token and request.url.path != "/health":
            # constant time: a byte-by-byte comparison would tell a timing attacker how much of a guess is right
            if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
                return JSONResponse({"error": {"message": "invalid grader service token",
                                               "type": "authentication_error", "param": None, "code": None}}, 401)
        return await call_next(request)

    def compiled(spec: dict) -> CompiledGrader:
        key = _spec_key(spec)
        with lock:
            g = cache.pop(key, None)
            if g is None:
                g = compile(spec, endpoint=endpoint, sandbox=sandbox, workers=workers, top_level=False)
            cache[key] = g
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)[1].close()
            return g

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/grade")
    def grade(body: GradeRequest):
        g = compiled(body.grader)
        if body.item_index is None:
            items = body.items
        else:
            if len(body.item_index) != len(body.samples) or any(not 0 <= i < len(body.items) for i in body.item_index):
                return error(400, "item_index must give one valid item index per sample", "item_index")
            items = [body.items[i] for i in body.item_index]
        if len(items) != len(body.samples):
            return error(400, "samples and items must have the same length", "items")
        return g.grade(body.samples, items).to_dict()

    @app.post("/v1/fine_tuning/alpha/graders/validate")
    def validate(body: GraderValidateRequest):
        spec = validate_grader(body.grader)
        return {"grader": spec.model_dump(mode="json", exclude_none=True)}

    @app.post("/v1/fine_tuning/alpha/graders/run")
    def run_one(body: GraderRunRequest):
        spec = validate_grader(body.grader)
        return run(spec, body.model_sample, body.item or {}, endpoint=endpoint, sandbox=sandbox)

    return app


def _token(token: str | None) -> str | None:
    """The token to require: `token`, else VRFT_GRADER_SERVICE_TOKEN; None when empty."""
    return (token if token is not None else os.environ.get("VRFT_GRADER_SERVICE_TOKEN")) or None


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; False for a wildcard, any other address or name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8100, *, token: str | None = None, workers: int | None = None,
          log_level: str = "info") -> None:
    """Run the grader service in the foreground (`vrft grader serve`); `token` defaults to
    VRFT_GRADER_SERVICE_TOKEN, and a ValueError without one when `host` is not loopback."""
    import uvicorn

    token = _token(token)
    if token is None and not is_loopback(host):
        raise ValueError(f"the grader service binds {host}, beyond this machine, and would run graders for anyone: "
                         "set a token (--token or VRFT_GRADER_SERVICE_TOKEN), or bind 127.0.0.1")
    uvicorn.run(create_app(token=token, workers=workers), host=host, port=port, log_level=log_level)


class RemoteGrader:
    """A CompiledGrader whose work happens in a grader service: `RemoteGrader(url, spec).grade(samples, items)`."""

    def __init__(self, url: str, spec: Any, *, token: str | None = None, timeout_s: float = 900.0,
                 transport: httpx.BaseTransport | None = None):
        self.spec = spec if hasattr(spec, "model_dump") else validate_grader(spec, top_level=False)
        self.name, self.type = self.spec.name, self.spec.type
        self._payload = self.spec.model_dump(mode="json", exclude_none=True)
        token = token if token is not None else os.environ.get("VRFT_GRADER_SERVICE_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport)

    def grade(self, samples: Sequence[Any], items: Sequence[Any]) -> BatchResult:
        if len(samples) != len(items):
            raise ValueError("samples and items must have the same length")
        body = {"grader": self._payload, **_pack(samples, [it if it is not None else {} for it in items])}
        r = self._client.post("/v1/grade", json=body)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"message": r.text[:500], "param": None}
            if r.status_code == 400 and err.get("code") == "invalid_grader":
                raise GraderValidationError(err["message"], (err.get("param") or "").removeprefix("grader."))
            raise RuntimeError(f"grader service error {r.status_code}: {err.get('message')}")
        return BatchResult.from_dict(r.json())

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
