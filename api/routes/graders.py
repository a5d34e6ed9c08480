"""/v1/fine_tuning/alpha/graders/{run,validate}: OpenAI's grader endpoints over the `grader` library.

Job creation validates its grader through the same `grader.validate_grader`. Judge models (score_model,
label_model) are called at `grader_model_base_url` with `grader_model_api_key` when it is set, else at this
service's own /v1, where its settings say it listens, with the caller's key (so any model the caller may use
can judge). Never at an address taken from the request: its Host header is the caller's to forge.

A run may wait minutes on a judge or a python sandbox, so it holds no database session, runs on threads of
its own (never those of the sync routes, which share anyio's 40), has a total deadline
(`grader_run_timeout_seconds`, a 504 past it) and a per-project limit of runs in flight
(`grader_run_concurrency_per_project`, a 429 past it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import APIRouter, Request

import grader
from api.deps import ProjectDep, SettingsDep
from api.errors import APIError
from api.services.graders import validated_grader
from api.settings import Settings
from grader.wire import GraderRunRequest, GraderValidateRequest, RunGraderResponse, ValidateGraderResponse

router = APIRouter(tags=["graders"])

RUN_THREADS = 64
"""Threads that run graders, for all projects together; runs past them wait (their deadline still runs)."""
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
"""A server bound to every address is reached on loopback."""


class GraderRuns:
    """The grader runs of one app: at most `limit` in flight per project, on an executor of their own. A run's
    slot is given back when its work really ends, not when its answer is sent (a run past its deadline may
    still be waiting on a python sandbox)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.executor = ThreadPoolExecutor(RUN_THREADS, thread_name_prefix="grader-run")
        self.in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()  # slots are given back on the executor's threads

    def _take(self, project_id: str) -> None:
        with self._lock:
            if self.in_flight[project_id] >= self.limit:
                raise APIError(429, f"This project already has {self.limit} grader runs in flight; retry when one "
                               "has finished.", code="rate_limit_exceeded",
                               headers={"Retry-After": "1", "x-should-retry": "true"})
            self.in_flight[project_id] += 1

    def _give_back(self, project_id: str) -> None:
        with self._lock:
            self.in_flight[project_id] -= 1
            if not self.in_flight[project_id]:
                del self.in_flight[project_id]

    async def run(self, project_id: str, work: Callable[[], dict[str, Any]], deadline: float) -> dict[str, Any]:
        """`work()`'s result, or a 504 once time.monotonic() passes `deadline`."""
        self._take(project_id)
        future = self.executor.submit(work)
        future.add_done_callback(lambda _: self._give_back(project_id))
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), deadline - time.monotonic())
        except TimeoutError:
            raise _timed_out() from None
        if time.monotonic() >= deadline:  # a judge call cut at the deadline ends the run just after it
            raise _timed_out()
        return result


def _timed_out() -> APIError:
    return APIError(504, "The grader run did not finish within its time limit (grader_run_timeout_seconds).",
                    code="grader_timeout", type="server_error")


def _runs(request: Request) -> GraderRuns:
    """The app's GraderRuns, made on first use (on the event loop: no two are made)."""
    state = request.app.state
    if getattr(state, "grader_runs", None) is None:
        state.grader_runs = GraderRuns(state.settings.grader_run_concurrency_per_project)
    return state.grader_runs


def own_v1(settings: Settings) -> str:
    """This service's /v1 at the address its settings say it listens on."""
    host = WILDCARD_HOSTS.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/v1"


def judge_endpoint(settings: Settings, request: Request, deadline: float) -> grader.ModelEndpoint:
    """Where this run's judge models are called, and with which key (module docstring)."""
    if settings.grader_model_base_url:
        key = settings.grader_model_api_key
        return grader.ModelEndpoint(base_url=settings.grader_model_base_url,
                                    api_key=key.get_secret_value() if key else None, deadline=deadline)
    caller_key = request.headers.get("authorization", "").partition(" ")[2].strip() or None
    return grader.ModelEndpoint(base_url=own_v1(settings), api_key=caller_key, deadline=deadline)


@router.post("/fine_tuning/alpha/graders/validate", response_model=ValidateGraderResponse)
def validate_grader(body: GraderValidateRequest, project: ProjectDep) -> dict[str, Any]:
    """Validate a grader; the response echoes it (multi graders in their canonical dict form)."""
    spec = validated_grader(body.grader)
    return {"grader": spec.model_dump(mode="json", exclude_none=True)}


@router.post("/fine_tuning/alpha/graders/run", response_model=RunGraderResponse)
async def run_grader(body: GraderRunRequest, request: Request, project: ProjectDep,
                     settings: SettingsDep) -> dict[str, Any]:
    """Run a grader on one sample: {reward, metadata, sub_rewards, model_grader_token_usage_per_model}."""
    spec = validated_grader(body.grader)
    deadline = time.monotonic() + settings.grader_run_timeout_seconds
    endpoint = judge_endpoint(settings, request, deadline)

    def work() -> dict[str, Any]:
        try:
            return grader.run(spec, body.model_sample, body.item or {}, endpoint=endpoint, project=project.id)
        finally:
            endpoint.close()

    return await _runs(request).run(project.id, work, deadline)
