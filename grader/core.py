"""Compiled graders: a spec becomes a batch reward function.

`compile(spec)` parses every template and formula once; `CompiledGrader.grade(samples, items)` scores a
whole batch (vectorised where it can be: IoU, embeddings; concurrent where it waits: python sandbox
pool, judge models) and never raises for a sample: a failing sample scores 0 and sets an error flag.
`run(spec, model_sample, item)` returns OpenAI's `GraderRunResponse` as a dict.
Each type's reward is in its module of grader/types/; the registry picks it.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from grader import registry
from grader.model_graders import ModelEndpoint
from grader.reward import BatchResult, Context, Reward
from grader.templates import make_sample

__all__ = ["CompiledGrader", "compile", "run"]


class CompiledGrader:
    """A grader ready to score batches. Create with `grader.compile(spec)`; `close()` stops its sandbox workers."""

    def __init__(self, spec: registry.Spec, *, endpoint: ModelEndpoint | None = None, sandbox=None,
                 shared_pools: bool = False, workers: int | None = None, project: str | None = None):
        self.spec = spec
        self.name, self.type = spec.name, spec.type
        context = Context(endpoint or ModelEndpoint(), sandbox, shared_pools, workers, project)
        self.reward: Reward = registry.reward(spec, context)

    @property
    def children(self) -> dict[str, Reward]:
        """The leaf rewards by key (a multi grader's keys; a single grader's name)."""
        return getattr(self.reward, "children", None) or {self.name: self.reward}

    # the trainer's entry point
    def grade(self, samples: Sequence[Any], items: Sequence[Any]) -> BatchResult:
        """Score `samples[i]` (model output text, or a dict of OpenAI sample fields) against `items[i]`."""
        if len(samples) != len(items):
            raise ValueError("samples and items must have the same length")
        t0 = time.perf_counter()
        if self.reward.texts_only:
            samples = [s if type(s) is str else make_sample(s)["output_text"] for s in samples]
        else:
            samples = list(map(make_sample, samples))
        items = [it if it is not None else {} for it in items]
        result = self.reward.batch(samples, items)
        result.execution_time = time.perf_counter() - t0
        return result

    def close(self) -> None:
        self.reward.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def compile(spec: Any, *, endpoint: ModelEndpoint | None = None, sandbox=None, workers: int | None = None,
            shared_pools: bool = False, project: str | None = None, top_level: bool = True) -> CompiledGrader:
    """Validate (if needed) and compile a grader spec, once per job; the keyword arguments are those of
    grader.reward.Context."""
    if not isinstance(spec, registry.Spec):
        spec = registry.validate_grader(spec, top_level=top_level)
    return CompiledGrader(spec, endpoint=endpoint, sandbox=sandbox, shared_pools=shared_pools, workers=workers,
                          project=project)


def run(spec: Any, model_sample: Any, item: Any = None, *, endpoint: ModelEndpoint | None = None,
        sandbox=None, project: str | None = None, top_level: bool = True) -> dict:
    """Grade one sample and return OpenAI's GraderRunResponse as a dict (python graders: on warm pools shared
    across the calls of one `project`)."""
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
