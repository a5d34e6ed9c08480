"""Forward one OpenAI request to a vLLM server and relay its answer, with the one mapper from engine failures
to OpenAI-shaped errors.

* The request body is parsed to read `model` and `stream` and to check what vLLM does not limit: `n` (at
  most `serving_max_n`) and the images of the chat messages. `model` is rewritten to the engine's name and
  every other field goes to vLLM as sent (vLLM validates them; its 4xx come back with our error shape).
* Images: the engines fetch no URL (serving/engines.py), the proxy does. Every image URL of the messages,
  http(s) or a base64 data URL, becomes a data URL of bytes that were fetched under the address policy
  (`image_url_allowlist`: no loopback, private or metadata address, on any redirect), are at most
  `max_image_bytes` and whose header says at most `max_image_pixels` (a small PNG can decode to gigabytes in
  the engine). A bad image is a 400 whose `param` names its field.
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

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image

import media
from serving.engines import Engine
from serving.interface import ServingConfig, ServingError
from serving.manager import ServingManager

log = logging.getLogger("vrft.serving")

MEDIA_OVERRIDES = ("mm_processor_kwargs", "media_io_kwargs")
"""vLLM request fields that change how its images are decoded and resized: with them a small image that passed
the pixel cap could be upscaled past it (a processor's `min_pixels`). Refused: images are processed as the
model's own processor files say."""


async def read_payload(request: Request, settings: ServingConfig) -> tuple[dict[str, Any], bytes]:
    """The parsed body and its bytes (forwarded as they are when nothing needs a rewrite)."""
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter's stack
        raise ServingError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ServingError(400, "The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if model is None:
        raise ServingError(400, "Missing required parameter: 'model'.", param="model",
                           code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise ServingError(400, "Invalid value for 'model': expected a model id.", param="model", code="invalid_value")
    for name in MEDIA_OVERRIDES:
        if payload.get(name) is not None:
            raise ServingError(400, f"Unrecognized request argument supplied: '{name}' (images are processed with "
                                    "the model's own settings).", param=name, code="unknown_parameter")
    n = payload.get("n")
    if type(n) is float and n.is_integer():  # 2.0 is the integer 2 in JSON (and its Schema); sent on as 2
        payload["n"] = n = int(n)
        raw = json.dumps(payload).encode()
    # an integer only: vLLM would also take "16384" (the cap would not see it)
    if n is not None and (type(n) is not int or n > settings.serving_max_n):
        raise ServingError(400, f"Invalid value for 'n': expected an integer of at most {settings.serving_max_n}.",
                           param="n", code="invalid_value")
    return payload, raw


async def inline_images(settings: ServingConfig, payload: dict[str, Any]) -> bool:
    """Replace every image URL of the chat messages by a data URL of the checked image (see the module's
    docstring). False when there was no image, so the body can go as it came."""
    found = _image_urls(payload)
    if not found:
        return False
    limit = settings.max_images_per_row
    if len(found) > limit:  # checked before anything is fetched
        raise ServingError(400, f"A request may hold at most {limit} images.", param=found[limit][2],
                           code="too_many_images")
    policy = media.AddressPolicy(tuple(settings.image_url_allowlist))
    # fetched at once, each in a worker thread (media.fetch blocks); the first bad one in message order is reported
    results = await asyncio.gather(*(asyncio.to_thread(_checked_data_url, settings, policy, holder[key], param)
                                     for holder, key, param in found), return_exceptions=True)
    for (holder, key, _), result in zip(found, results):
        if isinstance(result, BaseException):
            raise result
        holder[key] = result
    return True


def _image_urls(payload: dict[str, Any]) -> list[tuple[dict, str, str]]:
    """Where the image URLs of the messages are: (the object holding one, its key, the `param` naming it).
    vLLM takes `{"type": "image_url", "image_url": {"url": ...}}`, and also a bare `{"image_url": "..."}` and
    `{"type": "input_image", "image_url": "..."}`: every content part with an `image_url` counts."""
    found = []
    messages = payload.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            image = part.get("image_url") if isinstance(part, dict) else None
            param = f"messages[{i}].content[{j}].image_url"
            if isinstance(image, dict):
                if image.get("url") is not None:  # None: an image vLLM has cached by its `uuid`
                    found.append((image, "url", param + ".url"))
            elif image is not None:
                found.append((part, "image_url", param))
    return found


def _checked_data_url(settings: ServingConfig, policy: media.AddressPolicy, url: Any, param: str) -> str:
    """The image at `url` (http(s), fetched; or a base64 data URL) as a data URL, once it passed the checks.
    The data URL is always rebuilt, so the engine decodes exactly the bytes that were checked."""
    try:
        raw = _image_bytes(settings, policy, url)
        info = media.inspect_image(raw, max_pixels=settings.max_image_pixels)
    except media.FetchError as e:
        raise ServingError(400, f"The image at '{param}' could not be fetched: {e.message}.", param=param,
                           code=e.code) from None
    except media.ImageRejected as e:
        raise ServingError(400, f"Invalid image at '{param}': {e}.", param=param, code="invalid_image") from None
    except ValueError:  # a URL that does not parse (`http://[x`, a port past 65535)
        raise ServingError(400, f"Invalid image URL at '{param}'.", param=param, code="invalid_image_url") from None
    mime = Image.MIME.get(info.format, f"image/{info.extension}")
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def _image_bytes(settings: ServingConfig, policy: media.AddressPolicy, url: Any) -> bytes:
    if not isinstance(url, str):
        raise media.ImageRejected("an image URL must be a string")
    if url[:5].lower() != "data:":  # vLLM's own test for a data URL
        return media.fetch(
            url, policy=policy, max_bytes=settings.max_image_bytes, timeout_s=settings.image_fetch_timeout_seconds
        )
    raw = media.decode_data_url(url)
    if raw is None:
        raise media.ImageRejected("a data URL must hold a base64 image (data:image/png;base64,...)")
    if len(raw) > settings.max_image_bytes:
        raise media.ImageRejected(f"the image is larger than the {settings.max_image_bytes} bytes allowed")
    return raw


ENGINE_FAILURES = (aiohttp.ClientError, TimeoutError, ValueError)
"""What talking to an engine can raise: refused or dropped connections and bad payloads (ClientError),
silence past the read timeout (TimeoutError), an SSE line past the buffer (ValueError)."""
JSON = {"content-type": "application/json"}


async def engine_error(manager: ServingManager, engine: Engine, exc: Exception | None, model_id: str,
                       status: int | None = None, body: bytes = b"") -> ServingError:
    """THE mapper from an engine failure (one of ENGINE_FAILURES, or an error status with its body) to our error."""
    if status is not None:
        message, param = _upstream_message(body, status)
        if status < 500:
            return ServingError(status, message, param=param, code="invalid_value" if status == 400 else None)
        return ServingError(502, f"The model server for '{model_id}' failed: {message}", code="engine_error")
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ServingError(504, f"The model server for '{model_id}' did not answer in time ({type(exc).__name__}).",
                            code="engine_timeout", type="server_error")
    if await manager.check_died(engine):
        return ServingError(502, f"The model server for '{model_id}' stopped unexpectedly; it is restarted on the "
                                 "next request.", code="engine_died", headers={"Retry-After": "1"})
    return ServingError(502, f"The model server for '{model_id}' is not reachable ({type(exc).__name__}).",
                        code="engine_unreachable", headers={"Retry-After": "1"})


def _upstream_message(body: bytes, status: int) -> tuple[str, str | None]:
    try:
        err = json.loads(body)["error"]
        return str(err.get("message") or "")[:2000] or f"status {status}", err.get("param") if isinstance(
            err.get("param"), str
        ) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"status {status}", None


async def forward(
    manager: ServingManager, engine: Engine, path: str, payload: dict[str, Any], raw: bytes | None
) -> Response:
    """Send the request (`payload`, parsed from `raw`; None once `payload` was rewritten) to `engine`'s `path`
    (`/v1/chat/completions`, ...) and relay the answer."""
    model_id = payload["model"]
    stream = bool(payload.get("stream"))
    body = (
        raw
        if raw is not None and engine.served_name == model_id
        else json.dumps({**payload, "model": engine.served_name}).encode()
    )
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
            # the API's error shape; every failure past the first byte is a 5xx, a server_error
            error = {"message": err.message, "type": err.type or "server_error", "param": err.param, "code": err.code}
            yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        finally:
            # a stream read to its end gives its connection back to the pool; one cut short (the client left)
            # is closed, which also tells vLLM to abort the generation
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()
            _release(engine)

    return StreamingResponse(
        relay(),
        status_code=resp.status,
        media_type=resp.headers.get("content-type", "text/event-stream"),
        headers={"cache-control": "no-cache"},
    )


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
