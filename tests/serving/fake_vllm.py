"""A stand-in for vLLM's OpenAI server, for the faults a real engine cannot be made to produce on cue.

    python tests/serving/fake_vllm.py --port P --served-model-name NAME [--startup-delay S]

It serves `/health`, `/v1/models`, `/v1/chat/completions` and `/v1/completions` like vLLM (same JSON and SSE
shapes) and answers `echo <served name> <pid>`, unless the last message (or prompt) is one of:
`FAIL500` (a 500 with vLLM's error body), `BAD400` (a 400 naming `temperature`), `STALL` (sends one stream chunk,
or nothing when not streaming, then hangs), `DIE` (the process exits while answering), `IMAGES` (answers the
JSON list of the image URLs it got). Like vLLM without `--allowed-media-domains`, it fetches every http(s)
image URL it gets, following redirects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

args: argparse.Namespace


def _last_text(body: dict) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if isinstance(p, dict))


def _image_urls(body: dict) -> list[str]:
    parts = [p for m in body.get("messages", []) if isinstance(m.get("content"), list) for p in m["content"]]
    return [
        p["image_url"]["url"] if isinstance(p["image_url"], dict) else p["image_url"]
        for p in parts
        if isinstance(p, dict) and "image_url" in p
    ]


def _fetch(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except (OSError, ValueError):
        pass


async def health(_: Request) -> Response:
    return Response(status_code=200)


async def models(_: Request) -> Response:
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": args.served_model_name, "object": "model", "created": 0, "owned_by": "vllm"}],
        }
    )


def _chunk(model: str, index: int, text: str, finish: str | None, chat: bool) -> bytes:
    choice = (
        {"index": index, "delta": {"content": text}, "finish_reason": finish}
        if chat
        else {"index": index, "text": text, "finish_reason": finish}
    )
    obj = {
        "id": "cmpl-fake",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def complete(request: Request) -> Response:
    body = await request.json()
    chat = request.url.path.endswith("/chat/completions")
    model = body["model"]
    if model != args.served_model_name:
        return JSONResponse(
            {
                "error": {
                    "message": f"The model `{model}` does not exist.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            },
            404,
        )
    text = _last_text(body)
    images = _image_urls(body) if chat else []
    for url in images:
        if url.startswith("http"):
            await asyncio.to_thread(_fetch, url)
    if "FAIL500" in text:
        return JSONResponse(
            {
                "error": {
                    "message": "EngineCore encountered an issue.",
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                }
            },
            500,
        )
    if "BAD400" in text:
        return JSONResponse(
            {
                "error": {
                    "message": "temperature must be non-negative, got -1.",
                    "type": "BadRequestError",
                    "param": "temperature",
                    "code": 400,
                }
            },
            400,
        )
    if "DIE" in text:
        os._exit(3)
    n = int(body.get("n") or 1)
    answer = json.dumps(images) if "IMAGES" in text else f"echo {model} {os.getpid()}"
    if body.get("stream"):
        async def events():  # noqa: ANN202
            for i in range(n):
                yield _chunk(model, i, "echo ", None, chat)
            if "STALL" in text:
                await asyncio.sleep(3600)
            for i in range(n):
                yield _chunk(model, i, answer[5:], "stop", chat)
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    if "STALL" in text:
        await asyncio.sleep(3600)
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ]
    else:
        choices = [{"index": i, "text": answer, "finish_reason": "stop", "logprobs": None} for i in range(n)]
    return JSONResponse(
        {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 4 * n, "total_tokens": 3 + 4 * n},
        }
    )


def main() -> None:
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--startup-delay", type=float, default=0.0)
    args = p.parse_args()
    time.sleep(args.startup_delay)
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/v1/completions", complete, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
