"""The judge graders (score_model, label_model): ask a judge model through any OpenAI-compatible chat endpoint.

The judge is at the endpoint its caller names: the API builds a `ModelEndpoint` from its settings (never
from the request), the trainer and the grader service default to VRFT_GRADER_MODEL_BASE_URL /
VRFT_GRADER_MODEL_API_KEY; a `resolver` may map a model id to its own base URL.
The judge is asked for JSON through `response_format` (json_schema): `{"steps": [...], "result": ...}`, the
result a number (score_model) or one of the labels (label_model), as each type's module says.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx

from grader.errors import SampleError
from grader.messages import Prompt
from grader.reward import Out, Reward

_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
_RESULT = re.compile(r'"result"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')


MIN_ATTEMPT_S = 1.0
"""A retry is started only if, after its back-off, at least this long is left before the deadline."""


@dataclass
class ModelEndpoint:
    """Where judge models are called: `resolver(model)` -> (base_url, api_key), else `base_url`/`api_key`."""

    base_url: str | None = field(default_factory=lambda: os.environ.get("VRFT_GRADER_MODEL_BASE_URL"))
    """An OpenAI-compatible base URL ending in /v1."""
    api_key: str | None = field(default_factory=lambda: os.environ.get("VRFT_GRADER_MODEL_API_KEY"))
    resolver: Callable[[str], tuple[str, str | None] | None] | None = None
    """Maps a model id to (base_url, api_key) for models the service serves; None falls back to base_url."""
    timeout_s: float = 120.0
    """Longest time one attempt may take."""
    deadline: float | None = None
    """A `time.monotonic()` instant no judge call outlives, retries included: each attempt is cut to the time
    left, and no retry starts with less than MIN_ATTEMPT_S left. None: only `timeout_s` per attempt."""
    max_concurrency: int = 16
    retries: int = 2
    transport: httpx.BaseTransport | None = None
    """For tests: an httpx transport (respx mocks plain httpx too)."""

    def __post_init__(self):
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, transport=self.transport,
                                            limits=httpx.Limits(max_connections=self.max_concurrency))
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def target(self, model: str) -> tuple[str, str | None]:
        if self.resolver is not None:
            found = self.resolver(model)
            if found:
                return found
        if not self.base_url:
            raise SampleError(
                "model_grader_server_error",
                f"no endpoint serves model {model!r}: set VRFT_GRADER_MODEL_BASE_URL or serve the model",
                "model_grader_server_error_details",
            )
        return self.base_url, self.api_key

    def time_left(self) -> float:
        """Seconds the next attempt may take: `timeout_s`, cut to what is left before the deadline."""
        if self.deadline is None:
            return self.timeout_s
        return min(self.timeout_s, self.deadline - time.monotonic())

    def _post(self, url: str, body: dict, headers: dict, left: float) -> tuple[int, bytes]:
        """One attempt of at most `left` seconds: (status, body). httpx's timeouts bound each read, not the
        whole answer, so the body is read in chunks and dropped once the time is up (a judge that trickles its
        answer cannot hold the call past the deadline by more than one read)."""
        stop = time.monotonic() + left
        with self.client().stream("POST", url, json=body, headers=headers, timeout=left) as r:
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if time.monotonic() > stop:
                    raise httpx.ReadTimeout("the answer took longer than the time left", request=r.request)
            return r.status_code, bytes(data)

    def chat(self, model: str, body: dict) -> dict:
        """POST /chat/completions with retries on 429, 5xx and connection errors, within `deadline`;
        SampleError on failure."""
        base, key = self.target(model)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = base.rstrip("/") + "/chat/completions"
        last = "the grader run's deadline passed before the judge was called"
        for attempt in range(self.retries + 1):
            if attempt:
                pause = 0.5 * 2 ** (attempt - 1)
                if self.time_left() < pause + MIN_ATTEMPT_S:
                    last += " (no time left to retry before the grader run's deadline)"
                    break
                time.sleep(pause)
            left = self.time_left()
            if left <= 0:
                break
            try:
                status, content = self._post(url, body, headers, left)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if status < 400:
                try:
                    return json.loads(content)
                except ValueError:
                    raise SampleError("model_grader_server_error", "the judge returned non-JSON",
                                      "model_grader_server_error_details") from None
            last = f"HTTP {status}: {content[:500].decode(errors='replace')}"
            if status < 500 and status != 429:
                break
        raise SampleError("model_grader_server_error", last, "model_grader_server_error_details")


def _schema(result: dict) -> dict:
    """The response_format that asks for `{"steps": [...], "result": <result>}`."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "grader_output",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "steps": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}},
                            "required": ["description", "conclusion"],
                            "additionalProperties": False,
                        },
                    },
                    "result": result,
                },
                "required": ["steps", "result"],
                "additionalProperties": False,
            },
        },
    }


def _usage(resp: dict) -> dict:
    u = resp.get("usage") or {}
    details = u.get("prompt_tokens_details") or {}
    prompt, completion = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "total_tokens": int(u.get("total_tokens") or prompt + completion),
        "cached_tokens": int(details.get("cached_tokens") or 0),
        "completion_tokens": completion,
    }


def _message(resp: dict) -> dict:
    try:
        msg = resp["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise SampleError("model_grader_server_error", "the judge's response has no choices",
                          "model_grader_server_error_details") from None
    if msg.get("refusal"):
        raise SampleError("model_grader_refusal_error", str(msg["refusal"])[:500])
    return msg


def parse_score(content: str) -> float:
    """The judge's number: `{"result": x}`, a bare number, or `"result": x` inside other text.
    """
    text = (content or "").strip()
    m = _NUMBER.match(text)
    if m:
        return float(m.group(1))
    try:
        obj = json.loads(text)
        result = obj.get("result") if isinstance(obj, dict) else None
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            return float(result)
    except ValueError:
        pass
    m = _RESULT.search(text)
    if m:
        return float(m.group(1))
    raise SampleError("model_grader_parse_error", f"cannot read a score in the judge's answer: {text[:200]!r}")


def parse_label(content: str, labels: Sequence[str]) -> str:
    """The judge's label: `{"result": label}` or the bare label (case-insensitive)."""
    text = (content or "").strip()
    value = text
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("result"), str):
            value = obj["result"]
    except ValueError:
        pass
    for lbl in labels:
        if value.strip().casefold() == lbl.casefold():
            return lbl
    raise SampleError("model_grader_parse_error", f"the judge's answer is not one of the labels: {text[:200]!r}")


_SAMPLING = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
             ("max_completions_tokens", "max_completion_tokens"), ("reasoning_effort", "reasoning_effort"))
"""The grader's sampling_params (OpenAI's field names) and the chat parameter each sets."""


class ModelJudge(Reward):
    """The reward of a judge grader: its `input` rendered per sample and sent, `max_concurrency` requests at a
    time; the answer's `result` has the JSON schema `result` and `score(content)` reads the reward from it."""

    waits = True

    def __init__(self, spec, endpoint: ModelEndpoint, result: dict, score: Callable[[str], float]):
        super().__init__(spec)
        self.endpoint, self.score = endpoint, score
        self.prompt = Prompt(spec.input)
        self.response_format = _schema(result)

    def _body(self, messages: list[dict]) -> dict:
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages,
                                "response_format": self.response_format}
        sp = getattr(self.spec, "sampling_params", None)
        for ours, param in _SAMPLING:
            if getattr(sp, ours, None) is not None:
                body[param] = getattr(sp, ours)
        return body

    def one(self, sample, item) -> Out:
        """One sample's score, with the judge's token usage and model name."""
        usage = model_name = None
        try:
            resp = self.endpoint.chat(self.spec.model, self._body(self.prompt.render(sample, item)))
            usage, model_name = _usage(resp), resp.get("model") or self.spec.model
            return Out(self.score(_message(resp).get("content") or ""), None, None, usage, model_name)
        except SampleError as e:
            return Out(0.0, e, None, usage, model_name)

    def grade(self, samples: Sequence[Any], items: Sequence[Any]) -> list[Out]:
        if len(samples) <= 1:
            return [self.one(s, i) for s, i in zip(samples, items)]
        with ThreadPoolExecutor(max_workers=min(self.endpoint.max_concurrency, len(samples))) as ex:
            return list(ex.map(self.one, samples, items))
