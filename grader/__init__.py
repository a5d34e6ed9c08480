"""Graders: declarative specs (OpenAI's JSON + visual graders) compiled into batch reward functions.

    spec = grader.validate_grader(job_json["method"]["reinforcement"]["grader"])   # GraderValidationError
    g = grader.compile(spec)                     # once per job: parses templates, formula, starts nothing yet
    batch = g.grade(samples, items)              # many samples against their dataset rows
    batch.rewards, batch.sub_rewards, batch.error_counts
    grader.run(spec, "model output", item)       # OpenAI's GraderRunResponse dict

Each grader type is one module of grader/types/, registered by its `type` name (grader/registry.py); its spec
class is also here by name (`grader.IouGrader`). No web or database code here; the API, the trainer and the
grader service call these functions.
"""

from typing import Any

from grader import registry, types  # noqa: F401  (importing grader.types registers the built-in types)
from grader.errors import ERROR_FLAGS, GraderValidationError, empty_errors
from grader.registry import validate_grader

_LAZY = {  # the compiled side imports numpy, httpx etc. only when used
    "run": "grader.core", "CompiledGrader": "grader.core", "BatchResult": "grader.reward",
    "SampleResult": "grader.reward", "ModelEndpoint": "grader.model_graders", "RemoteGrader": "grader.service",
}
_DERIVED = {
    "GraderSpec": registry.union,
    "TOP_LEVEL_TYPES": registry.top_level_types,
    "MULTI_CHILD_TYPES": registry.multi_child_types,
}
"""Derived from the registered types on each access."""

__all__ = ["ERROR_FLAGS", "GraderValidationError", "box_engine", "compile", "empty_errors", "validate_grader", *_LAZY,
           *_DERIVED, *sorted(t.spec.__name__ for t in registry.TYPES.values())]


def box_engine(n: int) -> str:
    """What parses and scores a batch of `n` box answers: "numba" (compiled kernels, for large batches where
    numba is installed) or "numpy"."""
    from grader import _accel

    return "numba" if _accel.available(n) else "numpy"


def compile(spec: Any, *, endpoint=None, sandbox=None, workers: int | None = None, shared_pools: bool = False,
            project: str | None = None, top_level: bool = True, service_url: str | None = None,
            box_convention: dict | None = None):
    """Validate (if needed) and compile a grader spec, once per job -> grader.core.CompiledGrader (see there).

    service_url: grade through a grader service instead: a grader.service.RemoteGrader, with the same
    `grade(samples, items)` and results. box_convention: what an iou grader's input_format "auto" means (the
    trainer gives its model family's); it is written into the spec, so a grader service sees it too.
    """
    if box_convention is not None:
        from grader.types.iou import resolve_box_convention

        if not isinstance(spec, registry.Spec):
            spec = validate_grader(spec, top_level=top_level)
        spec = resolve_box_convention(spec, box_convention)
    if service_url:
        from grader.service import RemoteGrader

        return RemoteGrader(service_url, spec if isinstance(spec, registry.Spec)
                            else validate_grader(spec, top_level=top_level))
    from grader.core import compile as compile_local

    return compile_local(spec, endpoint=endpoint, sandbox=sandbox, workers=workers, shared_pools=shared_pools,
                         project=project, top_level=top_level)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _DERIVED:
        return _DERIVED[name]()
    for t in registry.TYPES.values():  # the spec classes, by class name
        if t.spec.__name__ == name:
            return t.spec
    raise AttributeError(f"module 'grader' has no attribute {name!r}")
