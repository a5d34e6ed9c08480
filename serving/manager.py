"""Which vLLM server answers for which model.

Managed mode: an engine per model folder, started on first use. Models that resolve to the same folder share
it (a base model under two names, say); fine-tuned models and checkpoints each get their own full-weight
engine, because the trainer writes merged full weights (LoRA merged in), not adapters. Past the budget
(`serving_max_engines`, `serving_max_memory_gib`) an idle engine is stopped, under a fair share: each engine
belongs to the project that started it, and a project may stop only its own engines or those of a project
that holds more engines than it (the least recently used of those); so one project cannot push another out
by asking for many models, and a single-project deployment simply stops its least recently used. An engine
that crashed is restarted by the next request for its model; one that failed to start is retried after a
short back-off. A background task stops idle engines and starts the engine of each newly succeeded job
(`serving_prewarm`; the API says which jobs those are and where their weights are, serving.interface
`ModelSource`), so the first request of a fresh model finds it warm.

External mode: the servers run elsewhere (`serving_external_urls`); the manager only knows their URLs and the
name each serves its model under.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import aiohttp

from serving.engines import Engine
from serving.interface import ModelSource, ServingConfig, ServingError

log = logging.getLogger("vrft.serving")

FAILED_RETRY_SECONDS = 10.0
"""An engine that failed to start is not retried before this many seconds (each try costs a start-up)."""


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds)))}


class ServingManager:
    def __init__(self, settings: ServingConfig, models: ModelSource) -> None:
        self.settings = settings
        self.models = models
        self.engines: dict[str, Engine] = {}
        """Managed: by model folder. External: by base URL."""
        self.client: aiohttp.ClientSession | None = None
        """One connection pool to every engine. aiohttp rather than httpx: it spends about a fifth of the CPU per
        request (measured 0.19 vs 0.99 ms), and that CPU is taken from the engine on a small host."""
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        """Health waits and stops in flight (held here: the event loop keeps only weak references)."""
        self._prewarmed: set[str] | None = None
        """Jobs whose engine was prewarmed, or that had succeeded before the manager started."""

    @property
    def external(self) -> bool:
        return self.settings.serving_mode == "external"

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        s = self.settings
        # sock_read: the longest silence from an engine (before the first byte or between chunks), no total limit
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=s.serving_read_timeout_seconds)
        self.client = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                                            read_bufsize=2 ** 20)  # SSE lines up to 2 MiB (logprobs of long answers)
        if not self.external:
            await asyncio.to_thread(self._newly_succeeded)
        self._task = asyncio.create_task(self._monitor(), name="vrft-serving-monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*(e.stop() for e in self.engines.values()), *self._background, return_exceptions=True)
        self.engines.clear()
        if self.client:
            await self.client.close()

    # ------------------------------------------------------------------ routing

    async def acquire(self, model_id: str, folder: Path | None, *, project_id: str) -> Engine:
        """The ready engine for `model_id` (whose weights are in `folder`; None in external mode), started for
        `project_id` if needed. Raises 503 with `Retry-After` while the engine starts (after waiting up to
        `serving_start_wait_seconds`) or when the budget has no room this project may take, 502 when it
        failed to start."""
        if self.external:
            return await self._external(model_id)
        engine = await self._ensure(folder, model_id, project_id)
        engine.last_used = time.monotonic()
        if engine.state == "starting":
            wait = self.settings.serving_start_wait_seconds
            try:
                await asyncio.wait_for(asyncio.shield(engine.ready.wait()), timeout=wait)
            except TimeoutError:
                raise ServingError(503, f"The model '{model_id}' is starting up (this takes 20-60 s on CPU). "
                                        "Retry in a few seconds.", code="model_starting",
                                   headers=_retry_after(5)) from None
        if engine.state == "failed":
            raise ServingError(502, f"The model server for '{model_id}' failed to start: {engine.failure}. "
                                    f"It is tried again on a request after {FAILED_RETRY_SECONDS:.0f} s.",
                               code="engine_failed", headers=_retry_after(FAILED_RETRY_SECONDS))
        if engine.state != "ready":  # stopped while we waited (evicted, shut down)
            raise ServingError(503, f"The model server for '{model_id}' was stopped. Retry.", code="model_starting",
                               headers=_retry_after(1))
        return engine

    async def _ensure(self, path: Path, model_id: str, project_id: str, *, evict: bool = True) -> Engine:
        async with self._lock:
            key = str(path)
            engine = self.engines.get(key)
            if engine is not None and engine.state == "ready" and not engine.alive():
                self._mark_dead(engine)
            if (
                engine is not None
                and engine.state == "failed"
                and time.monotonic() - engine.started_at < FAILED_RETRY_SECONDS
            ):
                return engine
            if engine is not None and engine.state in ("dead", "failed", "stopped"):
                await engine.stop()  # reap what is left of it
                del self.engines[key]
                engine = None
            if engine is None:
                engine = self._launch(path, model_id, project_id, evict)
            return engine

    def _launch(self, path: Path, model_id: str, project_id: str, evict: bool) -> Engine:
        """Start an engine for `project_id`, after making room for it. Called with the lock held."""
        from serving.engines import estimate_gib

        self._make_room(estimate_gib(self.settings, path), project_id, evict)
        engine = Engine.launch(self.settings, path, model_id, project_id)
        self.engines[engine.key] = engine
        self._spawn(engine.wait_healthy(self.client, self.settings.serving_start_timeout_seconds))
        return engine

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _make_room(self, need_gib: float, project_id: str, evict: bool) -> None:
        """Stop idle engines until one more fits the budget. `project_id` may stop its own engines and those of
        a project that holds more engines than it (counted anew after each stop); the least recently used of
        those goes. 503 when none may go."""
        s = self.settings
        live = [e for e in self.engines.values() if e.state in ("starting", "ready")]

        def over() -> bool:
            if len(live) + 1 > s.serving_max_engines:
                return True
            return (
                s.serving_max_memory_gib is not None
                and sum(e.memory_gib for e in live) + need_gib > s.serving_max_memory_gib
            )

        while over():
            held = Counter(e.project_id for e in live)
            idle = [e for e in live if e.state == "ready" and e.in_flight == 0
                    and (e.project_id == project_id or held[e.project_id] > held[project_id])] if evict else []
            if not idle:
                raise ServingError(503, "The serving budget is reached and every model server that could make room is "
                                        "busy. Retry shortly.", code="serving_capacity", headers=_retry_after(5))
            victim = min(idle, key=lambda e: e.last_used)
            log.info("serving budget reached: stopping the least recently used engine that project %s may take "
                     "(%s, of project %s)", project_id, victim.served_name, victim.project_id)
            live.remove(victim)
            del self.engines[victim.key]
            victim.state = "stopped"
            self._spawn(victim.stop())

    async def unload(self, model_id: str, folder: Path | None = None) -> int:
        """Stop the managed engines that serve `model_id` (or run from `folder`): the model was deleted. Returns
        how many were stopped. External servers are not ours to stop."""
        async with self._lock:
            gone = [e for e in self.engines.values()
                    if e.managed and (e.served_name == model_id or (folder is not None and e.key == str(folder)))]
            for engine in gone:
                del self.engines[engine.key]
                engine.state = "stopped"
        await asyncio.gather(*(e.stop() for e in gone), return_exceptions=True)
        return len(gone)

    def _mark_dead(self, engine: Engine) -> None:
        if engine.state == "ready":
            engine.state = "dead"
            log.error("vLLM for %s died (exit code %s); it restarts on the next request\n%s",
                      engine.served_name, engine.proc.returncode if engine.proc else None, engine.log_tail(2000))

    async def check_died(self, engine: Engine, grace: float = 1.0) -> bool:
        """After a dropped or refused connection: is the engine's process gone (given `grace` seconds to be
        reaped)? Then the next request restarts it."""
        if not engine.managed:
            return False
        deadline = time.monotonic() + grace
        while engine.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not engine.alive():
            self._mark_dead(engine)
            return True
        return False

    async def _external(self, model_id: str) -> Engine:
        urls = self.settings.serving_external_urls
        url = urls.get(model_id) or urls.get("*")
        if not url:
            raise ServingError(404, f"The model '{model_id}' exists but no server is configured for it "
                                    "(serving_external_urls has no entry for it).", param="model",
                               code="model_not_served")
        url = url.rstrip("/").removesuffix("/v1")
        engine = self.engines.get(url)
        if engine is None:
            try:
                async with self.client.get(
                    url + "/v1/models", timeout=aiohttp.ClientTimeout(total=10), raise_for_status=True
                ) as r:
                    served = [m["id"] for m in (await r.json(content_type=None))["data"]]
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
                raise ServingError(502, f"The model server for '{model_id}' is not reachable ({type(e).__name__}).",
                                   code="engine_unreachable", headers=_retry_after(5)) from None
            engine = Engine(
                key=url, served_name=model_id if model_id in served else served[0], base_url=url, state="ready"
            )
            engine.ready.set()
            self.engines[url] = engine
        engine.last_used = time.monotonic()
        return engine

    # ------------------------------------------------------------------ background work

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serving_poll_seconds)
            try:
                await self.tick()
            except Exception:
                log.exception("serving monitor")

    async def tick(self) -> None:
        """Notice crashed engines, stop idle ones, start the engines of newly succeeded jobs."""
        if self.external:
            return
        idle_limit = self.settings.serving_idle_seconds
        async with self._lock:
            for engine in list(self.engines.values()):
                if engine.state == "ready" and not engine.alive():
                    self._mark_dead(engine)
                elif (idle_limit > 0 and engine.state == "ready" and engine.in_flight == 0
                      and time.monotonic() - engine.last_used > idle_limit):
                    log.info("stopping vLLM for %s: idle for %.0f s", engine.served_name, idle_limit)
                    del self.engines[engine.key]
                    engine.state = "stopped"
                    self._spawn(engine.stop())
        if self.settings.serving_prewarm:
            await self._prewarm()

    async def _prewarm(self) -> None:
        jobs = await asyncio.to_thread(self._newly_succeeded)
        for job_id, project_id, model_id in jobs:
            self._prewarmed.add(job_id)
            log.info("prewarming the engine of %s (job %s succeeded)", model_id, job_id)
            try:
                await self.acquire_nowait(model_id, project_id, evict=False)
            except ServingError as e:
                log.info("not prewarming %s: %s", model_id, e.message)
            except Exception:
                log.exception("prewarming %s", model_id)

    async def acquire_nowait(self, model_id: str, project_id: str, *, evict: bool = True) -> Engine:
        """Start (or find) the engine of a project's model without waiting for it to be ready. With
        `evict=False` it starts only if the budget has room (a prewarm never stops an engine in use)."""
        path = await asyncio.to_thread(self.models.weights, project_id, model_id)
        return await self._ensure(path, model_id, project_id, evict=evict)

    def _newly_succeeded(self) -> list[tuple[str, str, str]]:
        jobs = self.models.succeeded_since(int(time.time()) - 3600)
        if self._prewarmed is None:  # the look at start: what succeeded before is not "new"
            self._prewarmed = {job_id for job_id, _, _ in jobs}
        return [job for job in jobs if job[0] not in self._prewarmed]
