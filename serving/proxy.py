"""Forward one OpenAI request to a vLLM server and relay its answer, with the one mapper from engine failures
to OpenAI-shaped errors.

* The request body is parsed only to read `model` and `stream`; `model` is rewritten to the engine's name
  and every other field goes to vLLM as sent (vLLM validates them; its 4xx come back with our error shape).
* A streamed answer (`stream: true`, server-sent events) is relayed chunk by chunk as vLLM writes it. A
  failure after the first byte cannot change the status any more: it ends the stream with an SSE event
  `data: {"error": {...}}`, which the openai SDK raises as an `APIError`.
* A non-streamed answer arrives from vLLM in one write once generation is over; it is read whole, so that
  a failure while reading it still becomes a proper error status.
* Failures: engine starting -> 503 + Retry-After (manager); connection refused or dropped -> 502 (and a
  managed engine whose process is gone is restarted by the next request); silence longer than
  `serving_read_timeout_seconds` -> 504; engine 4xx -> the same status; engine 5xx -> 502.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.errors import APIError, error_body
from serving.engines import Engine
from serving.manager import ServingManager

log = logging.getLogger("vrft.serving")


async def read_payload(request: Request) -> tuple[dict[str, Any], bytes]:
    """The parsed body and its bytes (forwarded as they are when the model name needs no rewrite)."""
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except ValueError:
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if model is None:
        raise APIError(400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise APIError(400, "Invalid value for 'model': expected a model id.", param="model", code="invalid_value")
    return payload, raw


ENGINE_FAILURES = (aiohttp.ClientError, TimeoutError, ValueError)
"""What talking to an engine can raise: refused or dropped connections and bad payloads (ClientError),
silence past the read timeout (TimeoutError), an SSE line past the buffer (ValueError)."""
JSON = {"content-type": "application/json"}


async def engine_error(manager: ServingManager, engine: Engine, exc: Exception | None, model_id: str,
                 status: int | None = None, body: bytes = b"") -> APIError:
    """THE mapper from an engine failure (one of ENGINE_FAILURES, or an error status with its body) to our error."""
    if status is not None:
        message, param = _upstream_message(body, status)
        if status < 500:
            return APIError(status, message, param=param, code="invalid_value" if status == 400 else None)
        return APIError(502, f"The model server for '{model_id}' failed: {message}", code="engine_error")
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APIError(504, f"The model server for '{model_id}' did not answer in time ({type(exc).__name__}).",
                        code="engine_timeout", type="server_error")
    if await manager.check_died(engine):
        return APIError(502, f"The model server for '{model_id}' stopped unexpectedly; it is restarted on the next request.",
                        code="engine_died", headers={"Retry-After": "1"})
    return APIError(502, f"The model server for '{model_id}' is not reachable ({type(exc).__name__}).",
                    code="engine_unreachable", headers={"Retry-After": "1"})


def _upstream_message(body: bytes, status: int) -> tuple[str, str | None]:
    try:
        err = json.loads(body)["error"]
        return str(err.get("message") or "")[:2000] or f"status {status}", err.get("param") if isinstance(err.get("param"), str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"status {status}", None


async def forward(manager: ServingManager, engine: Engine, path: str, payload: dict[str, Any], raw: bytes) -> Response:
    """Send the request (`payload`, parsed from `raw`) to `engine`'s `path` (`/v1/chat/completions`, ...)
    and relay the answer."""
    model_id = payload["model"]
    stream = bool(payload.get("stream"))
    body = raw if engine.served_name == model_id else json.dumps({**payload, "model": engine.served_name}).encode()
    rename = _renamer(engine.served_name, model_id)
    engine.in_flight += 1
    try:
        resp = await manager.client.post(engine.base_url + path, data=body, headers=JSON)
    except ENGINE_FAILURES as e:
        _release(engine)
        raise await engine_error(manager, engine, e, model_id) from None
    if resp.status >= 400 or not stream:
        try:
            content = await resp.read()
        except ENGINE_FAILURES as e:
            raise await engine_error(manager, engine, e, model_id) from None
        finally:
            resp.release()
            _release(engine)
        if resp.status >= 400:
            raise await engine_error(manager, engine, None, model_id, status=resp.status, body=content)
        return Response(rename(content), status_code=resp.status, media_type=resp.headers.get("content-type"))

    async def relay() -> AsyncIterator[bytes]:
        try:
            # as it arrives when nothing is renamed; else line by line, so a name is never split between chunks
            chunks = resp.content.iter_any() if rename is _same else resp.content
            async for chunk in chunks:
                yield rename(chunk)
        except ENGINE_FAILURES as e:
            err = await engine_error(manager, engine, e, model_id)
            log.warning("stream from %s broke: %s", engine.served_name, err.message)
            yield b"data: " + json.dumps(error_body(err.message, err.type, err.param, err.code)).encode() + b"\n\n"
        finally:
            # a stream read to its end gives its connection back to the pool; one cut short (the client left)
            # is closed, which also tells vLLM to abort the generation
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()
            _release(engine)

    return StreamingResponse(relay(), status_code=resp.status, media_type=resp.headers.get("content-type", "text/event-stream"),
                             headers={"cache-control": "no-cache"})


def _release(engine: Engine) -> None:
    engine.in_flight -= 1
    engine.last_used = time.monotonic()


def _same(data: bytes) -> bytes:
    return data


def _renamer(served: str, public: str):  # noqa: ANN202
    """Engines answer with the name they serve under; put back the id the caller used where it differs
    (external servers; a folder shared by two ids)."""
    if served == public:
        return _same
    old, new = (b'"model":' + json.dumps(n).encode() for n in (served, public))
    return lambda data: data.replace(old, new)
