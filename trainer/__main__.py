"""`python -m trainer JOB.json`: run one fine-tuning job (SFT, DPO or GRPO) described by a JobSpec.

Launched by DeepSpeed's launcher (`deepspeed --num_gpus N -m trainer JOB.json`, `--hostfile` for several
machines) or alone for one rank. Exit codes: 0 finished (`final` event) or paused (`paused` event),
1 failed (`error` event), 143 cancelled by SIGTERM.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

# Exit codes (the runner reads them together with the last event).
EXIT_OK = 0  # finished (`final` event) or paused (`paused` event)
EXIT_ERROR = 1  # `error` event written
EXIT_CANCELLED = 143  # SIGTERM


def _error_code(e: BaseException) -> tuple[str, str]:
    """(code, message a user can act on) for an exception that ended the run."""
    from trainer.data import DataError
    from trainer.job_spec import TrainerError

    if isinstance(e, TrainerError):
        return e.code, e.message
    if isinstance(e, DataError):
        code = "invalid_validation_file" if str(e).startswith("validation") else "invalid_training_file"
        return code, str(e)
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, MemoryError) or "out of memory" in text.lower() or "OutOfMemoryError" in text:
        return "out_of_memory", (
            "The trainer ran out of memory. Lower batch_size, num_generations or "
            f"max_completion_length, use LoRA, or a higher zero_stage with offload. ({text[:300]})"
        )
    from trainer.process import is_peer_lost

    if is_peer_lost(e):
        world = os.environ.get("WORLD_SIZE", "?")
        return "host_lost", (
            f"Rank {os.environ.get('RANK', '?')} of {world} lost contact with the other ranks: a host of the job "
            "stopped, or its network failed, or a collective waited longer than "
            f"VRFT_TRAINER_COLLECTIVE_TIMEOUT_SECONDS. ({text[:400]})"
        )
    if isinstance(e, FileNotFoundError):
        return "file_not_found", f"A file the job needs is missing: {e}"
    return "internal_error", f"The trainer failed: {text[:500]}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = [a for a in argv if not a.startswith("--local_rank") and not a.startswith("--local-rank")]
    if len(args) != 1:
        print("usage: python -m trainer JOB.json", file=sys.stderr)
        return 2

    from trainer.process import setup_environment

    setup_environment()  # before torch/vLLM/DeepSpeed are imported

    from trainer.events import EventLog
    from trainer.job_spec import JobSpec, TrainerError
    from trainer.process import Cancelled, Signals, init_distributed, write_pid

    job = JobSpec.read(Path(args[0]))
    output_dir = Path(job.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    events = EventLog(output_dir / "events.jsonl", enabled=rank == 0)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    signals = Signals()
    if rank == 0:
        write_pid(output_dir)
    try:
        dist = init_distributed(job.collective_timeout_seconds)
        if dist.main:
            events.message(f"Trainer started: job {job.job_id}, method {job.method}, {dist.world} rank(s) on "
                           f"{dist.device.type}" + (f", resuming from {job.resume_from}" if job.resume_from else ""))
        if job.method == "reinforcement":
            from trainer import grpo as algo
        elif job.method == "supervised":
            from trainer import sft as algo
        elif job.method == "dpo":
            from trainer import dpo as algo
        else:
            raise TrainerError("invalid_method",
                               f"method {job.method!r} is not supported (supervised, dpo, reinforcement)")
        outcome = algo.main(job, events, dist, signals)
        code = EXIT_OK
    except (Cancelled, KeyboardInterrupt):
        events.message("Trainer stopped by SIGTERM", level="warn")
        logging.getLogger("trainer").warning("cancelled")
        code = EXIT_CANCELLED
    except BaseException as e:  # noqa: BLE001 - every failure becomes an error event
        err, message = _error_code(e)
        traceback.print_exc()
        events.error(err, message)
        code = EXIT_ERROR
    else:
        logging.getLogger("trainer").info("%s", outcome)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: vLLM's and DeepSpeed's atexit hooks can hang on a half-torn process group.
    os._exit(code)


if __name__ == "__main__":
    main()
