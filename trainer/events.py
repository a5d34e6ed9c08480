"""events.jsonl: the trainer's only channel back to the job runner (format in trainer/job_spec.py).

One JSON object per line, appended and flushed line by line, each with a strictly increasing `seq`. A resumed
run continues the numbering after the last complete line already in the file, so the runner neither loses
nor repeats an event. Only rank 0 writes; on other ranks every call is a no-op.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainer.job_spec import EVENT_TYPES


def _last_seq(path: Path) -> int:
    """The `seq` of the last complete line of `path` (0 when there is none); a torn last line is dropped."""
    if not path.exists():
        return 0
    last = 0
    good_bytes = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # a line cut short by a crash: truncate it below
            try:
                last = max(last, int(json.loads(line)["seq"]))
            except (ValueError, KeyError, TypeError):
                pass
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return last


class EventLog:
    """Appends events to `output_dir/events.jsonl` (rank 0 only)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.seq = _last_seq(self.path) if enabled else 0

    def emit(self, type: str, **fields: Any) -> dict | None:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        if not self.enabled:
            return None
        self.seq += 1
        event = clean({"seq": self.seq, "type": type, "created_at": int(time.time()), **fields})
        line = json.dumps(event, allow_nan=False) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return event

    # the event types, spelled out
    def message(self, message: str, level: str = "info", data: dict | None = None) -> None:
        self.emit("message", level=level, message=message, **({"data": data} if data else {}))

    def metrics(self, step: int, data: dict, message: str | None = None) -> None:
        self.emit("metrics", step=step, data=data, **({"message": message} if message else {}))

    def rollouts(self, step: int, split: str, records: list[dict]) -> None:
        """A sample of the step's completions with their grades (trainer/rollout_records.py); none: no event."""
        if records:
            self.emit("rollouts", step=step, split=split, records=records)

    def checkpoint(self, step: int, path: str, metrics: dict) -> None:
        self.emit("checkpoint", step=step, path=path, metrics=metrics)

    def checkpoint_deleted(self, step: int, path: str) -> None:
        self.emit("checkpoint_deleted", step=step, path=path)

    def paused(self, step: int, path: str) -> None:
        self.emit("paused", step=step, path=path)

    def final(self, step: int, path: str, trained_tokens: int, metrics: dict) -> None:
        self.emit("final", step=step, path=path, trained_tokens=trained_tokens, metrics=metrics)

    def error(self, code: str, message: str) -> None:
        self.emit("error", level="error", code=code, message=message)


def clean(d: Any) -> Any:
    """Recursively turn tensors/numpy scalars into floats and non-finite floats into None."""
    if isinstance(d, dict):
        return {k: clean(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [clean(v) for v in d]
    if hasattr(d, "item"):
        d = d.item()
    if isinstance(d, float) and (d != d or d in (float("inf"), float("-inf"))):
        return None
    return d
