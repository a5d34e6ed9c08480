"""Rewards: what a grader type compiles to (see grader.registry), and what they return.

A `Reward` scores a whole batch: `grade(samples, items)` returns one `Out` per sample, or a `Col` (by column,
for the vectorised graders), and never needs to raise for a sample: a failing sample is an `Out` with a
SampleError. `batch()` turns that into a `BatchResult` (a multi grader overrides it to combine its children).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from grader.errors import ERROR_FLAGS, SampleError, empty_errors
from grader.templates import Sample, Template, each_or_error

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    """One sample's grade: `reward`, `sub_rewards` (multi: per key), `scores` (components), OpenAI `errors`."""

    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    errors: dict = field(default_factory=empty_errors)
    token_usage: dict | None = None
    sampled_model_name: str | None = None
    execution_time: float = 0.0
    error_message: str | None = None
    """Why the sample failed, in words (not part of OpenAI's response)."""


class BatchResult:
    """The grades of a batch, in input order, stored by column (the trainer reads whole columns).

    rewards: [n]; sub_rewards: {key: [n]} (a multi grader's keys, else {name: rewards});
    components: {name: [n]} of the graders' parts (e.g. "iou", "confidence"; "key.iou" in a multi),
    None where a sample failed; scores: the same per sample, as dicts (built on first access);
    errors: {index: OpenAI errors} for the samples that failed; messages: {index: why};
    token_usage / sampled_model_names: [n] or None. `results` gives per-sample SampleResult objects.
    """

    def __init__(self, name: str, type: str, rewards: list[float], *, sub_rewards: dict[str, list[float]] | None = None,
                 components: dict[str, list] | None = None, errors: dict[int, dict] | None = None,
                 messages: dict[int, str] | None = None, token_usage: list[dict | None] | None = None,
                 sampled_model_names: list[str | None] | None = None, execution_time: float = 0.0,
                 multi: bool = False):
        self.name, self.type, self.multi = name, type, multi
        self.rewards = rewards
        self._sub = sub_rewards or {}
        self.components = components or {}
        self._scores: list[dict] | None = None
        self.errors = errors or {}
        self.messages = messages or {}
        self.token_usage = token_usage
        self.sampled_model_names = sampled_model_names
        self.execution_time = execution_time
        self._results: list[SampleResult] | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def sub_rewards(self) -> dict[str, list[float]]:
        """Per sub-grader key (multi) or the grader's name: its reward for every sample."""
        return self._sub if self.multi else {self.name: self.rewards}

    @property
    def scores(self) -> list[dict]:
        """Per sample: its sub-rewards (multi) and components, as OpenAI's `metadata.scores`."""
        if self._scores is None:
            cols = dict(self._sub) if self.multi else {}
            cols.update(self.components)
            items = list(cols.items())
            self._scores = [{k: v[i] for k, v in items if v[i] is not None} for i in range(len(self.rewards))]
        return self._scores

    @property
    def error_counts(self) -> dict[str, int]:
        """How many samples set each OpenAI error flag."""
        return {flag: sum(1 for e in self.errors.values() if e.get(flag)) for flag in ERROR_FLAGS}

    @property
    def token_usage_per_model(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for usage, model in zip(self.token_usage or (), self.sampled_model_names or ()):
            if usage and model:
                out[model] = add_usage(out.get(model), usage)
        return out

    @property
    def results(self) -> list[SampleResult]:
        if self._results is None:
            n = len(self.rewards)
            per = self.execution_time / max(n, 1)
            usage = self.token_usage or [None] * n
            models = self.sampled_model_names or [None] * n
            self._results = [
                SampleResult(
                    reward=self.rewards[i],
                    sub_rewards={k: v[i] for k, v in self._sub.items()} if self.multi else {},
                    scores=self.scores[i],
                    errors=self.errors[i] if i in self.errors else empty_errors(),
                    token_usage=usage[i], sampled_model_name=models[i], execution_time=per,
                    error_message=self.messages.get(i),
                )
                for i in range(n)
            ]
        return self._results

    def to_dict(self) -> dict:
        """JSON form (the grader service's wire format)."""
        return {"name": self.name, "type": self.type, "multi": self.multi, "execution_time": self.execution_time,
                "rewards": self.rewards, "sub_rewards": self._sub, "components": self.components,
                "errors": {str(k): v for k, v in self.errors.items()},
                "messages": {str(k): v for k, v in self.messages.items()},
                "token_usage": self.token_usage, "sampled_model_names": self.sampled_model_names}

    @classmethod
    def from_dict(cls, d: dict) -> "BatchResult":
        return cls(d["name"], d["type"], d["rewards"], sub_rewards=d.get("sub_rewards"), components=d.get("components"),
                   errors={int(k): v for k, v in (d.get("errors") or {}).items()},
                   messages={int(k): v for k, v in (d.get("messages") or {}).items()},
                   token_usage=d.get("token_usage"), sampled_model_names=d.get("sampled_model_names"),
                   execution_time=d.get("execution_time", 0.0), multi=d.get("multi", False))


@dataclass
class Context:
    """What `grader.compile` was given, for the rewards that need it."""

    endpoint: Any = None
    """Where judge models are called (a grader.model_graders.ModelEndpoint)."""
    sandbox: Any = None
    """A grader.sandbox.SandboxConfig for python graders (None: the defaults)."""
    shared_pools: bool = False
    """Python graders reuse warm one-worker pools across compiles (one-off runs), those of `project` only."""
    workers: int | None = None
    """Python sandbox workers (default: the CPU count)."""
    project: str | None = None
    box_convention: dict | None = None
    """The IoU grader's input_format for "auto" (the trainer gives its model family's); None: xyxy norm1000."""


class Out(NamedTuple):
    score: float
    error: SampleError | None = None
    scores: dict | None = None
    usage: dict | None = None
    model: str | None = None


class Col:
    """A reward's output for a batch, by column: scores [n], errors {i: SampleError}, components {name: [n]}
    or None, token usage and model names [n] or None."""

    __slots__ = ("scores", "errors", "comps", "usage", "models")

    def __init__(self, scores, errors=None, comps=None, usage=None, models=None):
        self.scores, self.errors, self.comps, self.usage, self.models = scores, errors or {}, comps, usage, models

    @classmethod
    def of(cls, outs) -> "Col":
        if isinstance(outs, Col):
            return outs
        errors = {i: o.error for i, o in enumerate(outs) if o.error is not None}
        names = {k: None for o in outs if o.scores for k in o.scores}
        comps = {k: [(o.scores or {}).get(k) for o in outs] for k in names} or None
        has_usage = any(o.usage for o in outs)
        return cls([o.score if o.error is None else 0.0 for o in outs], errors, comps,
                   [o.usage for o in outs] if has_usage else None, [o.model for o in outs] if has_usage else None)

    def components(self) -> dict[str, list]:
        """The components, None where the sample failed."""
        if not self.errors or not self.comps:
            return dict(self.comps or {})
        out = {k: list(v) for k, v in self.comps.items()}
        for v in out.values():
            for i in self.errors:
                v[i] = None
        return out


def resolve_all(t: Template, samples, items, raw: bool = False) -> list:
    """`t` rendered (raw: resolved, any JSON value) on every sample; a SampleError where it does not resolve."""
    return t.resolve_all(samples, items) if raw else each_or_error(t.render, samples, items)


def first_error(*values) -> SampleError | None:
    return next((v for v in values if isinstance(v, SampleError)), None)


class Reward:
    """A compiled grader: set up in `__init__(spec, context)`, score in `grade`."""

    texts_only = False
    """True when grade() reads only the output texts: it is then given those, not Sample objects (costly)."""
    waits = False
    """True when grade() mostly waits (sandbox workers, judge models): a multi grader runs it on a thread."""

    def __init__(self, spec, context: Context | None = None):
        self.spec, self.name, self.type = spec, spec.name, spec.type

    def grade(self, samples: list[Sample] | list[str], items: list) -> list[Out] | Col:
        raise NotImplementedError

    def column(self, samples, items) -> Col:
        """grade() by column; a bug in a grader fails its samples, never the batch."""
        try:
            return Col.of(self.grade(samples, items))
        except Exception as e:
            log.exception("grader %r failed on a batch", self.name)
            err = SampleError("other_error", f"{type(e).__name__}: {e}")
            return Col([0.0] * len(samples), dict.fromkeys(range(len(samples)), err))

    def batch(self, samples, items) -> BatchResult:
        """The BatchResult of one grader: a failed sample scores 0 and has no components."""
        col = self.column(samples, items)
        rewards = list(col.scores)
        errors: dict[int, dict] = {}
        messages: dict[int, str] = {}
        for i, e in col.errors.items():
            rewards[i], errors[i], messages[i] = 0.0, e.to_errors(), e.message
        components = col.components()
        zero_nonfinite(rewards, errors, messages, lambda r: f"the reward is {r}")
        usage, models = merge_usage([col], len(rewards))
        return BatchResult(self.name, self.type, rewards, components=components, errors=errors, messages=messages,
                           token_usage=usage, sampled_model_names=models)

    def close(self) -> None:
        pass


def zero_nonfinite(rewards: list[float], errors: dict, messages: dict, why) -> None:
    """A reward that is not finite becomes 0 with `other_error` and `why(reward)` in its message."""
    if all(map(math.isfinite, rewards)):  # one C-level pass; the loop only when some are not
        return
    for i, r in enumerate(rewards):
        if not math.isfinite(r):
            errors.setdefault(i, empty_errors())["other_error"] = True
            messages[i] = (messages[i] + "; " if i in messages else "") + why(r)
            rewards[i] = 0.0


def merge_usage(cols: Iterable[Col], n: int) -> tuple[list | None, list | None]:
    """Judge token usage and model names per sample, summed over `cols`; (None, None) when there is none."""
    cols = list(cols)
    if not any(c.usage for c in cols):
        return None, None
    usage: list = [None] * n
    models: list = [None] * n
    for col in cols:
        for i, u in enumerate(col.usage or ()):
            if u:
                usage[i] = add_usage(usage[i], u)
                models[i] = models[i] or col.models[i]
    return usage, models


def add_usage(total: dict | None, usage: dict) -> dict:
    """`total` (None: zeros) with `usage`'s token counts added to it."""
    total = total or {"prompt_tokens": 0, "total_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}
    for key in total:
        total[key] += int(usage.get(key) or 0)
    return total
