"""`python` (OpenAI): `source` defines `grade(sample, item) -> float`, run in the sandbox (grader/sandbox/)."""

from __future__ import annotations

import ast
import atexit
import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any, Literal, Optional

from grader.errors import GraderValidationError, SampleError
from grader.registry import Spec, register
from grader.reward import Out, Reward

log = logging.getLogger(__name__)

MAX_PYTHON_SOURCE_BYTES = 256 * 1024
"""OpenAI's limit on a python grader's source."""
PYTHON_IMAGE_TAGS = ("2025-05-08",)
"""OpenAI's python grader image tags this sandbox stands in for: its packages are those of that image,
installed from PyPI (pyproject), except rdkit and scikit-bio (not installed)."""


class PythonGrader(Spec):
    """`source` defines `grade(sample: dict, item: dict) -> float`, run in a sandbox."""

    name: str
    """The name of the grader."""
    source: str
    """The source code of the python script; must define `grade(sample, item)`."""
    type: Literal["python"]
    image_tag: Optional[str] = None
    """OpenAI's package image; one of `PYTHON_IMAGE_TAGS` (the sandbox runs the service's Python with that
    image's packages)."""

    def check(self, join):
        _check_source(self.source, join)
        if self.image_tag is not None and self.image_tag not in PYTHON_IMAGE_TAGS:
            raise GraderValidationError(
                f"Invalid value for '{join('image_tag')}': {self.image_tag!r}; this server provides "
                f"{', '.join(map(repr, PYTHON_IMAGE_TAGS))} (or leave it out).", join("image_tag"))


def _check_source(source: str, join) -> None:
    """The source compiles and defines `grade` at top level, taking (sample, item)."""
    def invalid(why: str) -> GraderValidationError:
        return GraderValidationError(f"Invalid value for '{join('source')}': {why}.", join("source"))

    if len(source.encode("utf-8")) > MAX_PYTHON_SOURCE_BYTES:
        raise invalid("source is larger than 256 kB")
    try:
        tree = ast.parse(source, "<grader>")
        compile(tree, "<grader>", "exec")
    except (SyntaxError, ValueError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise invalid(f"the source does not compile: {getattr(e, 'msg', e)}{where}") from None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "grade":
            if isinstance(node, ast.AsyncFunctionDef):
                raise invalid("grade() must not be async")
            a = node.args
            if len(a.posonlyargs) + len(a.args) < 2 and a.vararg is None:
                raise invalid("grade() must take two arguments (sample, item)")
            return
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "grade" for t in node.targets):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((al.asname or al.name) == "grade"
                                                                  for al in node.names):
            return
    raise invalid("the source must define a function 'grade(sample, item)'")


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


_FAILURES = {  # a sandbox result's kind -> its SampleError (any other kind: "runtime")
    "timeout": dict(flag="unresponsive_reward_error", detail_key="python_grader_runtime_error_details",
                    also=("python_grader_runtime_error",)),
    "server": dict(flag="python_grader_server_error", detail_key="python_grader_server_error_type",
                   detail="sandbox_error"),
    "runtime": dict(flag="python_grader_runtime_error", detail_key="python_grader_runtime_error_details"),
}


class Python(Reward):
    waits = True

    def __init__(self, spec: PythonGrader, context):
        super().__init__(spec)
        self.sandbox, self.shared = context.sandbox, context.shared_pools
        self.workers, self.project = context.workers, context.project
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
            return [Out(0.0, err) for _ in samples]
        return [Out(r.score) if r.kind is None
                else Out(0.0, SampleError(message=r.message, **_FAILURES.get(r.kind, _FAILURES["runtime"])))
                for r in results]

    def close(self):
        with self._lock:
            if self._pool is not None and not self.shared:
                self._pool.close()
            self._pool = None


register(PythonGrader, Python)
