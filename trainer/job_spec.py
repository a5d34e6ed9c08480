"""The contract between the job runner (api side, owns the database) and the trainer (owns the maths).

The runner writes one `JOB.json` (a `JobSpec`) into the job's folder and launches
`deepspeed ... -m trainer JOB.json`. The trainer reads nothing else, writes only under `output_dir`, and
talks back through files and its exit code:

    output_dir/events.jsonl        one JSON object per line, appended, each with a strictly increasing `seq`
    output_dir/checkpoints/step-N/ HF-format model folder (+ `trainer_state/` for an exact resume)
    output_dir/final/              the finished model, HF format

Event lines (`TrainerEvent` documents the fields):
    {"seq": 7, "type": "message", "level": "info", "message": "..."}
    {"seq": 8, "type": "metrics", "step": 3, "data": {...}}      # OpenAI's metrics layout (RFT, SFT, DPO)
    {"seq": 9, "type": "rollouts", "step": 3, "split": "train", "records": [...]}  # trainer/rollout_records.py
    {"seq": 10, "type": "checkpoint", "step": 4, "path": "checkpoints/step-4", "metrics": {...}}
    {"seq": 11, "type": "checkpoint_deleted", "step": 2, "path": "checkpoints/step-2"}  # not in the best 3
    {"seq": 12, "type": "paused", "step": 5, "path": "checkpoints/step-5"}   # then exit 0
    {"seq": 13, "type": "final", "step": 10, "path": "final", "trained_tokens": 1234, "metrics": {...}}
    {"seq": 14, "type": "error", "code": "...", "message": "..."}            # then exit non-zero

Signals from the runner: SIGUSR1 = pause (save a checkpoint at the next step boundary, emit `paused`, exit 0);
SIGTERM = cancel (stop as soon as possible, exit). On resume the runner passes `resume_from` (a checkpoint
folder) and the trainer continues from that step, appending to the same events.jsonl with `seq` continuing
after the last line already there, so the runner neither loses nor repeats an event.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


class TrainerError(Exception):
    """A failure a user can act on: becomes an `error` event with this code (trainer/README.md lists them),
    then exit 1."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class JobSpec:
    job_id: str
    """The API's job id, for logs."""
    method: Literal["supervised", "dpo", "reinforcement"]
    model_path: str
    """Absolute path of the HF model folder to start from (a base model or a fine-tuned one)."""
    train_file: str
    """Absolute path of the staged training JSONL: OpenAI chat rows (DPO: preference rows), images rewritten to
    `file://` paths."""
    output_dir: str
    """Absolute path the trainer writes into (events.jsonl, checkpoints/, final/)."""
    validation_file: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """`method.<type>.hyperparameters` as the API stored them ("auto" left for the trainer to resolve)."""
    grader: dict[str, Any] | None = None
    """The reinforcement grader spec (validated by `grader.validate_grader`)."""
    response_format: dict[str, Any] | None = None
    seed: int = 0
    resume_from: str | None = None
    """A checkpoint folder under output_dir/checkpoints to continue from, or None for a fresh start."""
    grader_url: str | None = None
    """Grade through a remote grader service instead of in-process."""
    rollout_engine: Literal["vllm", "hf"] = "vllm"
    rollout_compile: bool = False
    """`hf` engine: torch.compile its decode step (see trainer/README.md for what it costs and saves)."""
    num_ranks: int = 1
    collective_timeout_seconds: float = 600.0
    """Longest wait of one rank for the others in a collective (and at start-up), `trainer_collective_timeout_seconds`:
    a rank whose host died or whose network failed ends the job with a `host_lost` error instead of a hang."""

    def write(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        return cls(**json.loads(Path(path).read_text()))


EVENT_TYPES = ("message", "metrics", "rollouts", "checkpoint", "checkpoint_deleted", "paused", "final", "error")
