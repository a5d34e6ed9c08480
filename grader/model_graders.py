"""score_model and label_model: ask a judge model through any OpenAI-compatible chat endpoint.

The judge is at the endpoint its caller names: the API builds a `ModelEndpoint` from its settings (never
from the request), the trainer and the grader service default to VRFT_GRADER_MODEL_BASE_URL /
VRFT_GRADER_MODEL_API_KEY; a `resolver` may map a model id to its own base URL.
The judge is asked for JSON through `response_format` (json_schema): score_model
`{"steps": [...], "result": number}`, label_model `{"steps": [...], "result": label}`.
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
from grader.specs import InputAudio, InputImage, InputText, LabelModelGrader, OutputText, ScoreModelGrader
from grader.templates import Template

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
    """A `time.monotonic()` instant no judge call outlives, attempts and retries together (the API's
    `grader_run_timeout_seconds`): each attempt is cut to the time left, and a retry that would start with
    less than MIN_ATTEMPT_S left is not made. None: only `timeout_s` per attempt."""
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


class _Prompt:
    """The grader's `input` messages with every template parsed once."""

    def __init__(self, spec: ScoreModelGrader | LabelModelGrader):
        self.messages = []
        for i, msg in enumerate(spec.input):
            role = "system" if msg.role == "developer" else msg.role
            if isinstance(msg.content, list):
                parts = [self._part(p, f"input.{i}.content.{j}") for j, p in enumerate(msg.content)]
                self.messages.append((role, parts))
            else:
                self.messages.append((role, self._part(msg.content, f"input.{i}.content")))

    @staticmethod
    def _part(p, where):
        if isinstance(p, str):
            return ("text", Template(p, where))
        if isinstance(p, (InputText, OutputText)):
            return ("text", Template(p.text, where))
        if isinstance(p, InputImage):
            return ("image", Template(p.image_url, where), p.detail)
        if isinstance(p, InputAudio):
            return ("audio", p.input_audio.data, p.input_audio.format)
        raise TypeError(type(p))

    @staticmethod
    def _render_part(part, sample, item, in_list: bool):
        kind = part[0]
        if kind == "text":
            text = part[1].render(sample, item)
            return {"type": "text", "text": text} if in_list else text
        if kind == "image":
            url = {"url": part[1].render(sample, item)}
            if part[2]:
                url["detail"] = part[2]
            return {"type": "image_url", "image_url": url}
        return {"type": "input_audio", "input_audio": {"data": part[1], "format": part[2]}}

    def render(self, sample, item) -> list[dict]:
        out = []
        for role, content in self.messages:
            if isinstance(content, list):
                out.append({"role": role, "content": [self._render_part(p, sample, item, True) for p in content]})
            else:
                rendered = self._render_part(content, sample, item, False)
                out.append({"role": role, "content": rendered if isinstance(rendered, str) else [rendered]})
        return out


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

    >>> parse_score('{"steps": [], "result": 0.7}'), parse_score(" 1 "), parse_score('.. "result": 0.25 ..')
    (0.7, 1.0, 0.25)
    """
    text = (content or "").strip()
    m = _NUMBER.match(text)
    if m:
        return float(m.group(1))
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("result"), (int, float)) and not isinstance(obj["result"], bool):
            return float(obj["result"])
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


class ModelJudge:
    """Runs a score_model or label_model grader over a batch, `max_concurrency` requests at a time."""

    def __init__(self, spec: ScoreModelGrader | LabelModelGrader, endpoint: ModelEndpoint):
        self.spec, self.endpoint = spec, endpoint
        self.prompt = _Prompt(spec)
        if isinstance(spec, ScoreModelGrader):
            lo, hi = spec.range or [0.0, 1.0]
            self.range = (float(lo), float(hi))
            self.response_format = _schema({"type": "number"})
        else:
            self.range = (0.0, 1.0)
            self.response_format = _schema({"type": "string", "enum": list(spec.labels)})

    def _body(self, messages: list[dict]) -> dict:
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages,
                                "response_format": self.response_format}
        sp = getattr(self.spec, "sampling_params", None)
        if sp is not None:
            if sp.temperature is not None:
                body["temperature"] = sp.temperature
            if sp.top_p is not None:
                body["top_p"] = sp.top_p
            if sp.seed is not None:
                body["seed"] = sp.seed
            if sp.max_completions_tokens is not None:
                body["max_completion_tokens"] = sp.max_completions_tokens
            if sp.reasoning_effort is not None:
                body["reasoning_effort"] = sp.reasoning_effort
        return body

    def one(self, sample, item) -> tuple[float, dict | None, str | None, SampleError | None]:
        """(score, token usage, model name, error) for one sample."""
        usage = model_name = None
        try:
            resp = self.endpoint.chat(self.spec.model, self._body(self.prompt.render(sample, item)))
            usage, model_name = _usage(resp), resp.get("model") or self.spec.model
            content = _message(resp).get("content") or ""
            if isinstance(self.spec, ScoreModelGrader):
                lo, hi = self.range
                return min(hi, max(lo, parse_score(content))), usage, model_name, None
            label = parse_label(content, self.spec.labels)
            return (1.0 if label in self.spec.passing_labels else 0.0), usage, model_name, None
        except SampleError as e:
            return 0.0, usage, model_name, e

    def batch(self, samples: Sequence[Any], items: Sequence[Any]):
        if len(samples) <= 1:
            return [self.one(s, i) for s, i in zip(samples, items)]
        with ThreadPoolExecutor(max_workers=min(self.endpoint.max_concurrency, len(samples))) as ex:
            return list(ex.map(self.one, samples, items))
