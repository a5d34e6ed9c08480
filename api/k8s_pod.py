"""`python -m api.k8s_pod JOB.json --ranks N`: the first process of a training pod under the `kubernetes` launcher.

It does inside the pod what the worker's `process` launcher (api/runner.py) does on the worker's host, so that the
trainer itself is the same and the runner reads the job folder (on the shared volume) exactly as before:

- starts the trainer, `python -m trainer JOB.json` for one rank or DeepSpeed's launcher with `--num_gpus N`, in a
  process group of its own, its output appended to the job folder's trainer.log and echoed to the pod's log;
- forwards SIGTERM, which Kubernetes sends when the worker deletes the Job (a cancel), to every rank: the trainer
  stops at once and exits 143; the pod's terminationGracePeriodSeconds bounds how long that may take;
- turns the worker's pause request, the file `output/pause.request`, into SIGUSR1 to rank 0 (its pid is in
  `output/trainer.pid`; DeepSpeed's launcher would not forward it): the trainer writes a checkpoint at the next
  step boundary, emits `paused` and exits 0;
- exits with the trainer's exit code (a rank killed by a signal: 128 + the signal), which the worker reads from the
  pod's status.

Torch-free, so that it starts in a moment and stays small next to the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from serving.engines import free_port

PAUSE_FILE = "pause.request"
"""In the job's output folder: written by the worker to ask for a pause (api/k8s_launcher.py)."""
POLL_SECONDS = 0.5


def trainer_command(job_file: str, ranks: int, hostfile: str | None = None, python: str = sys.executable) -> list[str]:
    """The trainer's command line: `python -m trainer JOB.json` for one rank, else DeepSpeed's launcher for `ranks`
    ranks here or across the hosts of a DeepSpeed `hostfile`. The worker's process launcher (api/runner.py) runs
    the same on its host."""
    if ranks > 1 or hostfile:
        where = ["--hostfile", hostfile] if hostfile else ["--num_gpus", str(ranks)]
        return [python, "-m", "deepspeed.launcher.runner", *where, "--master_port", str(free_port()),
                "--module", "trainer", job_file]
    return [python, "-m", "trainer", job_file]


def _pump(src, log_path: Path) -> None:  # noqa: ANN001
    """The trainer's output, line by line, to trainer.log on the shared volume and to this pod's log."""
    with open(log_path, "ab") as log:
        for line in iter(src.readline, b""):
            log.write(line)
            log.flush()
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.k8s_pod")
    parser.add_argument("job_file")
    parser.add_argument("--ranks", type=int, default=1)
    args = parser.parse_args(argv)
    job_file = Path(args.job_file)
    job_dir = job_file.parent
    out_dir = Path(json.loads(job_file.read_text())["output_dir"])  # JobSpec's, read without the trainer's imports
    out_dir.mkdir(parents=True, exist_ok=True)
    pid_file, pause_file = out_dir / "trainer.pid", out_dir / PAUSE_FILE
    pid_file.unlink(missing_ok=True)  # a stale pid must never be signalled
    cmd = trainer_command(str(job_file), args.ranks)
    print(f"[vrft k8s_pod] starting {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=job_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc.stdout, job_dir / "trainer.log"), daemon=True)
    pump.start()

    def forward(signum: int, frame) -> None:  # noqa: ANN001
        # PID 1 of a container ignores signals it has no handler for: this one is the cancel.
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    paused = False
    while proc.poll() is None:
        if not paused and pause_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGUSR1)
                paused = True
                print("[vrft k8s_pod] pause requested: SIGUSR1 to rank 0", flush=True)
            except (OSError, ValueError):
                pass  # rank 0 has not written its pid yet: next round
        time.sleep(POLL_SECONDS)
    pump.join(10)
    code = proc.returncode
    code = 128 - code if code < 0 else code
    print(f"[vrft k8s_pod] trainer exited with code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
