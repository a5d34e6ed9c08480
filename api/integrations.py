"""A job's integrations: where its metrics go besides the database.

- `wandb` (OpenAI's): the metrics of each step, at that step, and a table of its rollout records, to a Weights &
  Biases run in the given project and entity, named and tagged as asked, with the worker's `WANDB_API_KEY`.
- `tensorboard` (our extension): TensorBoard event files, a scalar per metric per step, stored with the job's
  checkpoints (`tensorboard/<job id>/` in storage) and attached to the finished job as result files.

The job runner feeds them each metrics and rollouts event after the database transaction that kept it
committed, so they hold what the job's events hold and nothing more: a step re-run after a resume from an
earlier checkpoint, dropped by the runner, is dropped here too. W&B runs in a thread of its own, so a slow or
failing W&B never holds up the job; what goes wrong becomes a warning event of the job, never its failure. A
worker that takes a job over continues the same W&B run (`resume="allow"`, the run id is the job id) from the
steps after the last one its predecessor handed on, so no step is logged twice (W&B also drops a step at or
below a resumed run's last one); what a dying worker had not yet sent is lost.

This module is imported only where a job has integrations: wandb and tensorboard load on first use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.errors import APIError
from api.storage import Storage, get_tree, put_tree

log = logging.getLogger("vrft.integrations")
WANDB_CLOSE_SECONDS = 120.0
"""How long the runner waits, at the job's end, for its W&B run to finish sending."""
ROLLOUT_COLUMNS = ("step", "split", "group", "sample", "line", "reward", "sub_rewards", "advantage",
                   "completion_tokens", "truncated", "completion", "errors")
"""The columns of the W&B rollout table: a rollout record's fields (trainer/rollout_records.py)."""


def wandb_problem() -> str | None:
    """Why this process cannot report to W&B, or None: W&B needs `WANDB_API_KEY` unless `WANDB_MODE` is
    `offline` (runs are written locally, for `wandb sync`) or `disabled`. The API and its embedded worker share
    one environment; a worker started on its own (`vrft worker`) checks its own again before the job starts."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
        return None
    return ("this server has no Weights & Biases API key: its operator must set WANDB_API_KEY for the worker "
            "(or WANDB_MODE=offline), or remove the wandb integration")


def check_integrations(integrations: list[dict] | None) -> None:
    """At job creation: a 400 naming `integrations` when a wandb integration cannot be served."""
    if any(i.get("type") == "wandb" for i in integrations or ()) and (problem := wandb_problem()):
        raise APIError(400, f"Invalid integrations: {problem}.", param="integrations", code="invalid_integration")


def metric_scalars(data: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics event's `data`, flat, with `/` between levels; a list of named objects (the
    graders' scores) by their names. `step` is the step itself, not a metric.

    >>> metric_scalars({"step": 3, "train": {"kl": 0.5, "grad_norm": None}, "scores": {"graders": [
    ...     {"name": "close", "train_reward_mean": 1}]}})
    {'train/kl': 0.5, 'scores/graders/close/train_reward_mean': 1.0}
    """
    out: dict[str, float] = {}

    def walk(v: Any, key: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{key}/{k}" if key else str(k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                name = x.get("name") if isinstance(x, dict) else None
                walk({k: y for k, y in x.items() if k != "name"} if name else x, f"{key}/{name or i}")
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)

    walk({k: v for k, v in data.items() if k != "step"}, "")
    return out


# ------------------------------------------------------------------------------------------- W&B


class WandbRun:
    """One W&B run of a job, driven from a thread of its own: `log` and `close` only queue work."""

    def __init__(self, *, settings: dict, run_id: str, job: dict, run_dir: Path, floor: int,
                 warn: Callable[[str], None]) -> None:
        self.settings, self.run_id, self.job, self.run_dir = settings, run_id, job, run_dir
        self.floor = floor
        """The last step a previous worker handed on: a takeover logs only the steps after it."""
        self.warn = warn
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"wandb-{run_id}", daemon=True)
        self.thread.start()

    def metrics(self, step: int, data: dict) -> None:
        if step > self.floor:
            self.queue.put(("log", step, metric_scalars(data)))

    def rollouts(self, step: int, split: str, records: list[dict]) -> None:
        if step > self.floor:
            self.queue.put(("table", step, split, records))

    def close(self, exit_code: int, timeout: float) -> None:
        self.queue.put(("close", exit_code))
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.warn(f"Weights & Biases: the run {self.run_id} was still sending {timeout:.0f}s after the job's end; "
                      "it finishes in the background")

    def _start(self) -> Any:
        import wandb

        w = self.settings
        tags = list(w.get("tags") or []) + [f"vrft/{t}"[:64] for t in ("finetune", self.job["model"], self.job["id"])]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=w["project"], entity=w.get("entity"), name=w.get("name") or self.job["id"], tags=tags,
            id=self.run_id, resume="allow", config=self.job, dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_machine_info=True,
                                    disable_git=True, save_code=False, x_save_requirements=False),
        )

    def _loop(self) -> None:
        run = None
        failed = False
        while True:
            item = self.queue.get()
            if item[0] == "close":
                if run is not None:
                    try:
                        run.finish(exit_code=item[1])
                    except Exception as e:  # noqa: BLE001  (W&B's failure is never the job's)
                        self.warn(f"Weights & Biases: finishing the run {self.run_id} failed: {e}")
                return
            if failed:
                continue
            try:
                if run is None:
                    run = self._start()
                if item[0] == "log":
                    run.log(item[2], step=item[1])
                else:
                    import wandb

                    _, step, split, records = item
                    rows = [[step, split, *(_cell(r.get(c)) for c in ROLLOUT_COLUMNS[2:])] for r in records]
                    run.log({f"rollouts/{split}": wandb.Table(columns=list(ROLLOUT_COLUMNS), data=rows)}, step=step)
            except Exception as e:  # noqa: BLE001
                failed = True
                what = "starting the run" if run is None else f"logging step {item[1]}"
                self.warn(f"Weights & Biases: {what} failed ({type(e).__name__}: {e}); the job goes on without it")
                log.warning("wandb run %s: %s failed", self.run_id, what, exc_info=True)


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v


# ------------------------------------------------------------------------------------------- TensorBoard


class TensorBoardLog:
    """Event files in the job's `output/tensorboard/`, uploaded to `tensorboard/<job id>/` in storage with each
    checkpoint and at the end. A takeover first fetches what was stored, then writes a file of its own beside
    it (TensorBoard reads a folder's files as one run)."""

    def __init__(self, storage: Storage, job_id: str, folder: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.storage, self.key, self.folder = storage, f"tensorboard/{job_id}", folder
        if storage.list_keys(self.key) and not any(folder.glob("events.out.tfevents.*")):
            shutil.rmtree(folder, ignore_errors=True)
            get_tree(storage, self.key, folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(folder))

    def metrics(self, step: int, data: dict) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=v) for k, v in metric_scalars(data).items()]
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        self.writer.flush()

    def save(self) -> list[Path]:
        """Upload the event files; their local paths."""
        self.writer.flush()
        put_tree(self.storage, self.key, self.folder)
        return sorted(self.folder.glob("events.out.tfevents.*"))

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------- the job's


class JobIntegrations:
    """What the runner holds for one job: feeds each integration and collects their warnings."""

    def __init__(self, job: Any, job_dir: Path, storage: Storage, *, floor: int) -> None:
        self._warnings: list[str] = []
        self._lock = threading.Lock()
        self.wandb: list[WandbRun] = []
        self.tensorboard: TensorBoardLog | None = None
        about = {"id": job.id, "model": job.model, "method": (job.method or {}).get("type"), "seed": job.seed,
                 "training_file": job.training_file, "validation_file": job.validation_file,
                 "suffix": job.suffix, "hyperparameters": job.hyperparameters}
        for i, spec in enumerate(job.integrations or ()):
            try:
                if spec.get("type") == "wandb":
                    self.wandb.append(WandbRun(settings=spec["wandb"], run_id=job.id if i == 0 else f"{job.id}-{i}",
                                               job=about, run_dir=job_dir, floor=floor, warn=self.warn))
                elif spec.get("type") == "tensorboard" and self.tensorboard is None:
                    self.tensorboard = TensorBoardLog(storage, job.id, job_dir / "output" / "tensorboard")
            except Exception as e:  # noqa: BLE001
                self.warn(f"The {spec.get('type')} integration could not start ({type(e).__name__}: {e}); "
                          "the job goes on without it")

    def warn(self, message: str) -> None:
        with self._lock:
            self._warnings.append(message)

    def drain_warnings(self) -> list[str]:
        with self._lock:
            out, self._warnings = self._warnings, []
        return out

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            self.warn(f"TensorBoard: {what} failed ({type(e).__name__}: {e}); the job goes on without it")
            self.tensorboard = None
            return None

    def metrics(self, step: int, data: dict) -> None:
        for run in self.wandb:
            run.metrics(step, data)
        if (tb := self.tensorboard) is not None:
            self._guard(f"writing step {step}", lambda: tb.metrics(step, data))

    def rollouts(self, step: int, split: str, records: list[dict]) -> None:
        for run in self.wandb:
            run.rollouts(step, split, records)

    def save(self) -> list[Path]:
        """Store the TensorBoard files (with a checkpoint, and at the end); the local files."""
        if (tb := self.tensorboard) is None:
            return []
        return self._guard("storing the event files", tb.save) or []

    def close(self, *, exit_code: int, timeout: float = WANDB_CLOSE_SECONDS) -> None:
        if (tb := self.tensorboard) is not None:
            self._guard("storing the event files", tb.save)
            self._guard("closing the event files", tb.close)
        deadline = time.monotonic() + timeout
        for run in self.wandb:
            run.close(exit_code, max(1.0, deadline - time.monotonic()))
