"""Compiled graders: a spec becomes a batch reward function.

`compile(spec)` parses every template and formula once; `CompiledGrader.grade(samples, items)` scores a
whole batch (vectorised where it can be: IoU, embeddings; concurrent where it waits: python sandbox
pool, judge models) and never raises for a sample: a failing sample scores 0 and sets an error flag.
`run(spec, model_sample, item)` returns OpenAI's `GraderRunResponse` as a dict.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from grader import metrics
from grader.errors import ERROR_FLAGS, SampleError, empty_errors, merge_errors
from grader.formula import Formula
from grader.model_graders import ModelEndpoint, ModelJudge
from grader.specs import (
    ClassificationGrader,
    FormatGrader,
    GraderSpec,
    IouGrader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    validate_grader,
)
from grader.templates import Sample, Template, make_sample

log = logging.getLogger(__name__)

__all__ = ["BatchResult", "CompiledGrader", "ModelEndpoint", "SampleResult", "compile", "run"]


class _Out(NamedTuple):
    score: float
    error: SampleError | None = None
    scores: dict | None = None
    usage: dict | None = None
    model: str | None = None


class _Col:
    """A node's output for a batch, by column: scores [n], errors {i: SampleError}, components {name: [n]}
    or None, token usage and model names [n] or None."""

    __slots__ = ("scores", "errors", "comps", "usage", "models")

    def __init__(self, scores, errors=None, comps=None, usage=None, models=None):
        self.scores, self.errors, self.comps, self.usage, self.models = scores, errors or {}, comps, usage, models

    @classmethod
    def of(cls, outs) -> "_Col":
        if isinstance(outs, _Col):
            return outs
        errors = {i: o.error for i, o in enumerate(outs) if o.error is not None}
        names = {k: None for o in outs if o.scores for k in o.scores}
        comps = {k: [(o.scores or {}).get(k) for o in outs] for k in names} or None
        has_usage = any(o.usage for o in outs)
        return cls([o.score if o.error is None else 0.0 for o in outs], errors, comps,
                   [o.usage for o in outs] if has_usage else None, [o.model for o in outs] if has_usage else None)


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
                acc = out.setdefault(model, {"prompt_tokens": 0, "total_tokens": 0, "cached_tokens": 0,
                                             "completion_tokens": 0})
                for k in acc:
                    acc[k] += int(usage.get(k) or 0)
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


# ----------------------------------------------------------------------------------------- nodes


def _resolve_all(t: Template, samples, items, raw: bool = False) -> list:
    if raw:
        return t.resolve_all(samples, items)
    out = []
    for s, it in zip(samples, items):
        try:
            out.append(t.resolve(s, it) if raw else t.render(s, it))
        except SampleError as e:
            out.append(e)
    return out


class _Node:
    texts_only = False
    """True when grade() reads nothing of a sample but its output text: it is then given the texts, not
    Sample objects (which cost a large batch more than the rest of the `iou` grader's Python work)."""

    def __init__(self, spec):
        self.spec, self.name, self.type = spec, spec.name, spec.type

    def grade(self, samples: list[Sample] | list[str], items: list) -> list[_Out] | _Col:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _StringCheck(_Node):
    def __init__(self, spec: StringCheckGrader):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")

    def grade(self, samples, items):
        op = self.spec.operation
        out = []
        for a, b in zip(_resolve_all(self.input, samples, items), _resolve_all(self.reference, samples, items)):
            err = a if isinstance(a, SampleError) else b if isinstance(b, SampleError) else None
            if err:
                out.append(_Out(0.0, err))
            elif op == "eq":
                out.append(_Out(float(a == b)))
            elif op == "ne":
                out.append(_Out(float(a != b)))
            elif op == "like":
                out.append(_Out(float(b in a)))
            else:
                out.append(_Out(float(b.casefold() in a.casefold())))
        return out


class _TextSimilarity(_Node):
    def __init__(self, spec: TextSimilarityGrader):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")
        self.metric = metrics.METRICS[spec.evaluation_metric]

    def grade(self, samples, items):
        a_all = _resolve_all(self.input, samples, items)
        b_all = _resolve_all(self.reference, samples, items)
        out: list[_Out | None] = [None] * len(a_all)
        todo = []
        for i, (a, b) in enumerate(zip(a_all, b_all)):
            err = a if isinstance(a, SampleError) else b if isinstance(b, SampleError) else None
            if err:
                out[i] = _Out(0.0, err)
            else:
                todo.append(i)
        if self.spec.evaluation_metric == "cosine" and todo:
            try:
                sims = metrics.cosine_batch([a_all[i] for i in todo], [b_all[i] for i in todo])
                for i, s in zip(todo, sims):
                    e = metrics._empty(a_all[i], b_all[i])
                    out[i] = _Out(e if e is not None else s)
            except Exception as e:  # the embedding model is missing or failed
                log.warning("cosine similarity unavailable: %s", e)
                for i in todo:
                    out[i] = _Out(0.0, SampleError("other_error", f"cosine similarity unavailable: {e}"))
            return out  # type: ignore[return-value]
        for i in todo:
            try:
                out[i] = _Out(float(self.metric(a_all[i], b_all[i])))
            except Exception as e:
                out[i] = _Out(0.0, SampleError("other_error", f"{self.spec.evaluation_metric}: {e}"))
        return out  # type: ignore[return-value]


_POOLS: "OrderedDict[tuple[str | None, str], Any]" = OrderedDict()
_POOLS_LOCK = threading.Lock()
SHARED_POOLS_MAX = 8


def _shared_pool(project: str | None, source: str, sandbox):
    """Pools for one-off runs (the /graders/run endpoint), kept warm per (project, source), LRU-evicted.

    Never shared across projects: a warm worker keeps its module state between calls (and, until its
    worker wipes it after each call, its /tmp), so one project's grader must not run where another's ran."""
    from grader.sandbox import PythonGraderPool

    key = (project, hashlib.sha256(source.encode()).hexdigest())
    with _POOLS_LOCK:
        pool = _POOLS.pop(key, None)
        if pool is None:
            pool = PythonGraderPool(source, sandbox, workers=1)
        _POOLS[key] = pool
        while len(_POOLS) > SHARED_POOLS_MAX:
            _, old = _POOLS.popitem(last=False)
            old.close()
        return pool


@atexit.register
def _close_shared_pools():
    with _POOLS_LOCK:
        for pool in _POOLS.values():
            pool.close()
        _POOLS.clear()


class _Python(_Node):
    def __init__(self, spec: PythonGrader, sandbox, shared: bool, workers: int | None, project: str | None):
        super().__init__(spec)
        self.sandbox, self.shared, self.workers, self.project = sandbox, shared, workers, project
        self._pool = None
        self._lock = threading.Lock()

    def pool(self):
        from grader.sandbox import PythonGraderPool, SandboxConfig

        with self._lock:
            if self._pool is None:
                cfg = self.sandbox or SandboxConfig()
                self._pool = (_shared_pool(self.project, self.spec.source, cfg) if self.shared
                              else PythonGraderPool(self.spec.source, cfg, workers=self.workers))
            return self._pool

    def grade(self, samples, items):
        from grader.sandbox import SandboxUnavailable

        try:
            results = self.pool().grade([s.full() for s in samples], list(items))
        except SandboxUnavailable as e:
            log.error("python grader cannot run: %s", e)
            err = SampleError("python_grader_server_error", str(e), "python_grader_server_error_type",
                              detail="sandbox_unavailable")
            return [_Out(0.0, err) for _ in samples]
        out = []
        for r in results:
            if r.kind is None:
                out.append(_Out(r.score))
            elif r.kind == "timeout":
                out.append(_Out(0.0, SampleError("unresponsive_reward_error", r.message,
                                                 "python_grader_runtime_error_details",
                                                 also=("python_grader_runtime_error",))))
            elif r.kind == "server":
                out.append(_Out(0.0, SampleError("python_grader_server_error", r.message,
                                                 "python_grader_server_error_type", detail="sandbox_error")))
            else:
                out.append(_Out(0.0, SampleError("python_grader_runtime_error", r.message,
                                                 "python_grader_runtime_error_details")))
        return out

    def close(self):
        with self._lock:
            if self._pool is not None and not self.shared:
                self._pool.close()
            self._pool = None


class _Model(_Node):
    def __init__(self, spec: ScoreModelGrader | LabelModelGrader, endpoint: ModelEndpoint):
        super().__init__(spec)
        self.judge = ModelJudge(spec, endpoint)

    def grade(self, samples, items):
        return [_Out(score, err, None, usage, model) for score, usage, model, err in self.judge.batch(samples, items)]


class _Iou(_Node):
    def __init__(self, spec: IouGrader):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")
        # `{{sample.answer}}` is read inside the parser: no per-sample extraction in Python
        self.raw = self.input.vars == [("sample", ("answer",))] and self.input._single
        self.texts_only = self.raw and all(ns == "item" for ns, _ in self.reference.vars)

    def grade(self, samples, items):
        from grader.visual import iou_batch

        if self.raw:
            answers = samples if self.texts_only else [s["output_text"] for s in samples]
        else:
            answers = _resolve_all(self.input, samples, items, raw=True)
        refs = _resolve_all(self.reference, samples, items, raw=True)
        rewards, comps, errors = iou_batch(self.spec, answers, refs, items, raw_answers=self.raw)
        return _Col(rewards.tolist(), errors, comps)


class _Format(_Node):
    def __init__(self, spec: FormatGrader):
        super().__init__(spec)
        self.input = Template(spec.input, "input")

    def grade(self, samples, items):
        from grader.visual import format_reward

        out = []
        for text in _resolve_all(self.input, samples, items):
            if isinstance(text, SampleError):
                out.append(_Out(0.0, text))
                continue
            try:
                out.append(_Out(format_reward(text, self.spec.pattern, self.spec.flags, self.spec.strip)))
            except TimeoutError:
                out.append(_Out(0.0, SampleError("other_error", "the format pattern timed out on this sample")))
        return out


class _Classification(_Node):
    def __init__(self, spec: ClassificationGrader):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")

    def grade(self, samples, items):
        from grader.visual import classification_reward

        out = []
        answers = _resolve_all(self.input, samples, items)
        refs = _resolve_all(self.reference, samples, items, raw=True)
        for a, b in zip(answers, refs):
            err = a if isinstance(a, SampleError) else b if isinstance(b, SampleError) else None
            if err:
                out.append(_Out(0.0, err))
            else:
                out.append(_Out(classification_reward(a, b, self.spec.synonyms, self.spec.normalize)))
        return out


def _leaf(spec, *, endpoint, sandbox, shared_pools, workers, project) -> _Node:
    if isinstance(spec, StringCheckGrader):
        return _StringCheck(spec)
    if isinstance(spec, TextSimilarityGrader):
        return _TextSimilarity(spec)
    if isinstance(spec, PythonGrader):
        return _Python(spec, sandbox, shared_pools, workers, project)
    if isinstance(spec, (ScoreModelGrader, LabelModelGrader)):
        return _Model(spec, endpoint)
    if isinstance(spec, IouGrader):
        return _Iou(spec)
    if isinstance(spec, FormatGrader):
        return _Format(spec)
    if isinstance(spec, ClassificationGrader):
        return _Classification(spec)
    raise TypeError(f"not a leaf grader: {type(spec).__name__}")


_SLOW = (_Python, _Model)


# ----------------------------------------------------------------------------------------- compiled


class CompiledGrader:
    """A grader ready to score batches. Create with `grader.compile(spec)`; `close()` stops its sandbox workers."""

    def __init__(self, spec: GraderSpec, *, endpoint: ModelEndpoint | None = None, sandbox=None,
                 shared_pools: bool = False, workers: int | None = None, project: str | None = None):
        self.spec = spec
        self.name, self.type = spec.name, spec.type
        endpoint = endpoint or ModelEndpoint()
        kw = dict(endpoint=endpoint, sandbox=sandbox, shared_pools=shared_pools, workers=workers, project=project)
        if isinstance(spec, MultiGrader):
            self.children = {k: _leaf(g, **kw) for k, g in spec.graders.items()}
            self.formula = Formula(spec.calculate_output)
        else:
            self.children = {spec.name: _leaf(spec, **kw)}
            self.formula = None

    # the trainer's entry point
    def grade(self, samples: Sequence[Any], items: Sequence[Any]) -> BatchResult:
        """Score `samples[i]` (model output text, or a dict of OpenAI sample fields) against `items[i]`."""
        if len(samples) != len(items):
            raise ValueError("samples and items must have the same length")
        t0 = time.perf_counter()
        if all(c.texts_only for c in self.children.values()):
            samples = [s if type(s) is str else make_sample(s)["output_text"] for s in samples]
        else:
            samples = list(map(make_sample, samples))
        items = [it if it is not None else {} for it in items]
        outs = self._children_outputs(samples, items)
        result = self._combine(len(samples), outs)
        result.execution_time = time.perf_counter() - t0
        return result

    def _children_outputs(self, samples, items) -> dict[str, _Col]:
        def run_child(node: _Node) -> _Col:
            try:
                return _Col.of(node.grade(samples, items))
            except Exception as e:  # a bug in a grader must not fail the batch
                log.exception("grader %r failed on a batch", node.name)
                err = SampleError("other_error", f"{type(e).__name__}: {e}")
                return _Col([0.0] * len(samples), dict.fromkeys(range(len(samples)), err))

        slow = [k for k, c in self.children.items() if isinstance(c, _SLOW)]
        if len(slow) > 1:
            with ThreadPoolExecutor(max_workers=len(slow)) as ex:
                futures = {k: ex.submit(run_child, self.children[k]) for k in slow}
                outs = {k: run_child(c) for k, c in self.children.items() if k not in futures}
                outs.update({k: f.result() for k, f in futures.items()})
            return {k: outs[k] for k in self.children}
        return {k: run_child(c) for k, c in self.children.items()}

    def _combine(self, n: int, outs: dict[str, _Col]) -> BatchResult:
        errors: dict[int, dict] = {}
        messages: dict[int, str] = {}
        components: dict[str, list] = {}
        if self.formula is None:
            col = next(iter(outs.values()))
            rewards = list(col.scores)
            components = dict(col.comps or {})
            for i, e in col.errors.items():
                rewards[i] = 0.0
                errors[i] = e.to_errors()
                messages[i] = e.message
            if col.errors and components:
                components = {k: list(v) for k, v in components.items()}
                for v in components.values():
                    for i in col.errors:
                        v[i] = None
            sub: dict[str, list[float]] = {}
        else:
            keys = list(outs)
            sub = {}
            for k in keys:
                col = outs[k]
                sub[k] = list(col.scores)
                for i in col.errors:
                    sub[k][i] = 0.0
                for c, v in (col.comps or {}).items():
                    v = list(v)
                    for i in col.errors:
                        v[i] = None
                    components[f"{k}.{c}"] = v
            env = {k: np.asarray(v, dtype=np.float64) for k, v in sub.items()}
            with np.errstate(all="ignore"):
                try:
                    values = np.broadcast_to(np.asarray(self.formula.evaluate_batch(env), dtype=np.float64), (n,))
                except (ArithmeticError, ValueError, TypeError):
                    values = np.full(n, np.nan)
            rewards = values.tolist()
            for k in keys:
                for i, e in outs[k].errors.items():
                    merge_errors(errors.setdefault(i, empty_errors()), e.to_errors())
                    messages[i] = (messages[i] + "; " if i in messages else "") + f"{k}: {e.message}"
        if not all(map(math.isfinite, rewards)):  # one C-level pass; the loop only when some are not
            for i, r in enumerate(rewards):
                if not math.isfinite(r):
                    errors.setdefault(i, empty_errors())["other_error"] = True
                    why = "the formula has no finite value here" if self.formula is not None else f"the reward is {r}"
                    messages[i] = (messages[i] + "; " if i in messages else "") + why
                    rewards[i] = 0.0
        usage = models = None
        if any(c.usage for c in outs.values()):
            usage, models = [None] * n, [None] * n
            for col in outs.values():
                for i, u in enumerate(col.usage or ()):
                    if u:
                        acc = usage[i] = usage[i] or {"prompt_tokens": 0, "total_tokens": 0, "cached_tokens": 0,
                                                      "completion_tokens": 0}
                        for key in acc:
                            acc[key] += int(u.get(key) or 0)
                        models[i] = models[i] or col.models[i]
        return BatchResult(self.name, self.type, rewards, sub_rewards=sub, components=components, errors=errors,
                           messages=messages, token_usage=usage, sampled_model_names=models,
                           multi=self.formula is not None)

    def close(self) -> None:
        for c in self.children.values():
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def compile(spec: Any, *, endpoint: ModelEndpoint | None = None, sandbox=None, workers: int | None = None,
            shared_pools: bool = False, project: str | None = None, top_level: bool = True,
            service_url: str | None = None):
    """Validate (if needed) and compile a grader spec, once per job -> CompiledGrader.

    endpoint: where judge models are called; sandbox: a grader.sandbox.SandboxConfig; workers: python
    sandbox workers (default: CPU count); shared_pools: reuse warm one-worker pools across compiles
    (for one-off runs), those of `project` only; service_url: grade through a grader service instead
    (returns a RemoteGrader, same `grade(samples, items)` interface and results).
    """
    if service_url:
        from grader.service import RemoteGrader

        return RemoteGrader(service_url, spec if hasattr(spec, "model_dump") else validate_grader(spec, top_level=top_level))
    if not isinstance(spec, (StringCheckGrader, TextSimilarityGrader, PythonGrader, ScoreModelGrader,
                             LabelModelGrader, MultiGrader, IouGrader, FormatGrader, ClassificationGrader)):
        spec = validate_grader(spec, top_level=top_level)
    return CompiledGrader(spec, endpoint=endpoint, sandbox=sandbox, shared_pools=shared_pools, workers=workers,
                          project=project)


def run(spec: Any, model_sample: Any, item: Any = None, *, endpoint: ModelEndpoint | None = None,
        sandbox=None, project: str | None = None, top_level: bool = True) -> dict:
    """Grade one sample and return OpenAI's GraderRunResponse as a dict.

    Python graders run in warm one-worker pools shared across the calls of one `project` (keyed by
    (project, source); the API passes the caller's project id).
    """
    t0 = time.perf_counter()
    g = compile(spec, endpoint=endpoint, sandbox=sandbox, shared_pools=True, project=project, top_level=top_level)
    try:
        result = g.grade([model_sample], [item if item is not None else {}]).results[0]
    finally:
        g.close()
    result.execution_time = time.perf_counter() - t0
    usage_per_model = {}
    if result.token_usage and result.sampled_model_name:
        usage_per_model[result.sampled_model_name] = result.token_usage
    return {
        "reward": result.reward,
        "metadata": {
            "name": g.name,
            "type": g.type,
            "errors": result.errors,
            "execution_time": time.perf_counter() - t0,
            "scores": result.scores,
            "token_usage": result.token_usage,
            "sampled_model_name": result.sampled_model_name,
        },
        "sub_rewards": result.sub_rewards,
        "model_grader_token_usage_per_model": usage_per_model,
    }
