"""A warm pool of sandboxed python-grader workers.

One pool per grader source (compiled once per job): N worker processes, each started once inside the
sandbox, fed whole chunks of a batch, restarted only when one dies or hangs. See grader/sandbox/__init__.py
for what the sandbox is on each kind of host.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from grader.sandbox.launcher import (
    SandboxConfig,
    SandboxUnavailable,
    build_command,
    count_uid_tasks,
    lease_uid,
    resolve_mode,
)

log = logging.getLogger(__name__)

MAX_FRAME = 16 << 20


@dataclass
class TaskResult:
    """Outcome of one sample: `score` when ok, else `kind` (runtime | type | timeout | crash | server) and `message`."""

    score: float | None = None
    kind: str | None = None
    message: str | None = None


class WorkerFailed(Exception):
    """The worker died, hung past the hard deadline, or spoke garbage."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Worker:
    """One sandboxed process speaking the frame protocol of worker.py. In bwrap-root mode it holds the lease
    of its uid (launcher.lease_uid) until it has been killed and reaped."""

    def __init__(self, config: SandboxConfig, mode: str, slot: int):
        self.config, self.mode = config, mode
        self.uid, self.lease = lease_uid(config) if mode == "bwrap-root" else (None, None)
        cmd, env, pass_fds = build_command(config, mode, uid=self.uid)
        # unsandboxed fallback: at least a private working directory (bwrap gives a private /tmp)
        self.workdir = tempfile.mkdtemp(prefix="vrft-grader-") if mode == "none" else None
        if self.workdir:
            env = {**env, "TMPDIR": self.workdir, "HOME": self.workdir}
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                pass_fds=pass_fds, start_new_session=True, close_fds=True, cwd=self.workdir,
            )
        except BaseException:
            self._release()
            raise
        for fd in pass_fds:
            os.close(fd)
        self.rfd = self.proc.stdout.fileno()
        self.wfd = self.proc.stdin.fileno()
        self.buf = bytearray()
        self.tasks_done = 0

    # -------------------------------------------------------------- framing
    def send(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed("crash", self._death_message()) from None

    def recv(self, deadline: float) -> Any:
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if n > MAX_FRAME:
                    raise WorkerFailed("crash", f"worker sent a frame of {n} bytes")
                if len(self.buf) >= 4 + n:
                    data = bytes(self.buf[4 : 4 + n])
                    del self.buf[: 4 + n]
                    try:
                        return json.loads(data)
                    except ValueError:
                        raise WorkerFailed("crash", "worker sent malformed data") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerFailed("timeout", "grade() did not return in time (hard deadline)")
            ready, _, _ = select.select([self.rfd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise WorkerFailed("crash", self._death_message())
            self.buf += chunk

    def _death_message(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "the grader process stopped responding"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"the grader process was killed by {name} (memory, CPU or process limit, or it killed itself)"
        return f"the grader process exited with status {code}"

    def stderr_tail(self) -> str:
        try:
            self.proc.wait(timeout=2)
            return (self.proc.stderr.read() or b"").decode(errors="replace")[-1000:]
        except Exception:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass
        self._release()

    def _release(self) -> None:
        """Give back the uid and the working directory (once the process is gone)."""
        if self.lease is not None:
            os.close(self.lease)
            self.lease = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class SourceError(Exception):
    """The grader source raised while being loaded (import-time error)."""


@dataclass
class PythonGraderPool:
    """Warm sandboxed workers for one grader `source`: `grade` splits a batch in contiguous chunks, one per
    worker, and returns one TaskResult per sample, in order. Thread-safe."""

    source: str
    config: SandboxConfig = field(default_factory=SandboxConfig)
    workers: int | None = None

    def __post_init__(self):
        self.mode = resolve_mode(self.config)
        n = self.workers or self.config.workers or os.cpu_count() or 1
        self.n = max(1, n)
        self._slots: list[_Worker | None] = [None] * self.n
        self._locks = [threading.Lock() for _ in range(self.n)]
        self._executor = ThreadPoolExecutor(max_workers=self.n, thread_name_prefix="pygrader")
        self._closed = False
        self._source_error: str | None = None

    # -------------------------------------------------------------- workers
    def _start(self, slot: int) -> _Worker:
        if self._source_error is not None:
            raise SourceError(self._source_error)
        try:
            w = _Worker(self.config, self.mode, slot)
        except OSError as e:
            raise SandboxUnavailable(f"cannot start the sandbox: {e}") from None
        limits = self.config.rlimits(nproc=self._nproc_limit())
        try:
            w.send({"op": "init", "source": self.source, "timeout": self.config.timeout_s, "limits": limits})
            reply = w.recv(time.monotonic() + self.config.timeout_s + self.config.grace_s + 30)
        except WorkerFailed as e:
            tail = w.stderr_tail()
            w.kill()
            raise SandboxUnavailable(f"the sandbox did not start: {e.message}; {tail.strip()}") from None
        if not reply.get("ok"):
            w.kill()
            self._source_error = str(reply.get("error") or "the grader source failed to load")
            raise SourceError(self._source_error)
        return w

    def _nproc_limit(self) -> int:
        if self.mode == "bwrap-root":
            return self.config.max_processes  # a dedicated uid: the count is the sandbox's own
        return count_uid_tasks(os.getuid()) + self.config.max_processes

    def warm(self) -> None:
        """Start every worker now (otherwise they start on first use)."""
        list(self._executor.map(self._ensure, range(self.n)))

    def _ensure(self, slot: int) -> _Worker:
        with self._locks[slot]:
            w = self._slots[slot]
            if w is None or not w.alive():
                if w is not None:
                    w.kill()
                w = self._slots[slot] = self._start(slot)
            return w

    # -------------------------------------------------------------- grading
    def grade(self, samples: Sequence[dict], items: Sequence[Any]) -> list[TaskResult]:
        if self._closed:
            raise RuntimeError("pool is closed")
        n = len(samples)
        if n == 0:
            return []
        k = min(self.n, n)
        bounds = [round(i * n / k) for i in range(k + 1)]
        chunks = [(slot, bounds[slot], bounds[slot + 1]) for slot in range(k)]
        results: list[TaskResult | None] = [None] * n

        def run(chunk):
            slot, lo, hi = chunk
            with self._locks[slot]:
                out = self._run_chunk(slot, samples[lo:hi], items[lo:hi])
            results[lo:hi] = out

        list(self._executor.map(run, chunks))
        return results  # type: ignore[return-value]

    def _run_chunk(self, slot: int, samples: Sequence[dict], items: Sequence[Any]) -> list[TaskResult]:
        item_index: dict[int, int] = {}
        item_json: list[str] = []
        tasks = []
        for s, it in zip(samples, items):
            key = id(it)
            if key not in item_index:
                item_index[key] = len(item_json)
                item_json.append(json.dumps(it, ensure_ascii=False, default=str))
            tasks.append([s, item_index[key]])
        out: list[TaskResult | None] = [None] * len(tasks)
        start, stream = 0, False
        while start < len(tasks):
            try:
                w = self._slots[slot]
                if w is None or not w.alive():
                    if w is not None:
                        w.kill()
                    w = self._slots[slot] = self._start(slot)
            except SourceError as e:
                for i in range(start, len(tasks)):
                    out[i] = TaskResult(kind="runtime", message=f"the grader source failed to load: {e}")
                break
            except SandboxUnavailable as e:
                for i in range(start, len(tasks)):
                    out[i] = TaskResult(kind="server", message=str(e))
                break
            pending = tasks[start:]
            got = 0
            try:
                w.send({"op": "grade", "items": item_json, "tasks": pending, "stream": stream})
                deadline = time.monotonic() + self.config.timeout_s + self.config.grace_s
                while True:
                    msg = w.recv(deadline)
                    if "done" in msg:
                        break
                    for entry in msg.get("r", ()):
                        i, kind, value = int(entry[0]), entry[1], entry[2]
                        if not 0 <= i < len(pending):
                            raise WorkerFailed("crash", "worker sent an unknown task index")
                        if kind == "ok":
                            out[start + i] = TaskResult(score=float(value))
                        else:
                            out[start + i] = TaskResult(kind=str(kind), message=str(value)[:2000])
                        got = max(got, i + 1)
                    deadline = time.monotonic() + self.config.timeout_s + self.config.grace_s
                w.tasks_done += len(pending)
                if msg.get("dirty") or w.tasks_done >= self.config.max_tasks_per_worker:
                    w.kill()  # dirty: it could not empty its /tmp, so the next call gets a fresh worker
                    self._slots[slot] = None
                start = len(tasks)
            except WorkerFailed as e:
                w.kill()
                self._slots[slot] = None
                first = start + got
                if stream or got == len(pending) - 1 or len(pending) == 1:
                    # the task after the last reported one is the culprit
                    if first < len(tasks):
                        out[first] = TaskResult(kind=e.kind, message=e.message)
                    start, stream = first + 1, False
                else:
                    # results were buffered: replay the rest one frame per task to find the culprit
                    start, stream = first, True
        return [r if r is not None else TaskResult(kind="server", message="no result") for r in out]

    def close(self) -> None:
        self._closed = True
        for slot in range(self.n):
            with self._locks[slot]:
                w = self._slots[slot]
                if w is not None:
                    w.kill()
                    self._slots[slot] = None
        self._executor.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def grade_once(source: str, sample: dict, item: Any, config: SandboxConfig | None = None) -> TaskResult:
    """One fresh sandboxed process for one sample (the slow path the pool avoids; used by the benchmark)."""
    pool = PythonGraderPool(source, config or SandboxConfig(), workers=1)
    try:
        return pool.grade([sample], [item])[0]
    finally:
        pool.close()
