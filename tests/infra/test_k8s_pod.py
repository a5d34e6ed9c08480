"""api/k8s_pod.py, the training pod's first process, with two CPU ranks under DeepSpeed's launcher (as a pod with
two GPUs runs them): the worker's pause request (output/pause.request) reaches rank 0 as SIGUSR1 and both ranks
checkpoint and exit 0; the run resumed from that checkpoint is stopped by one SIGTERM to the pod's first process
alone (what Kubernetes sends when the Job is deleted), which it forwards to every rank: exit 143, no rank left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import REPO
from tests.trainer.conftest import read_events, trainer_env, write_job
from tests.trainer.synth import make_rows, write_jsonl


def _start(job: Path, tmp: Path, log: Path) -> subprocess.Popen:
    env = {**trainer_env(tmp, threads=1), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "api.k8s_pod", str(job), "--ranks", "2"], cwd=REPO, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _wait_event(job: Path, proc: subprocess.Popen, pred, log: Path, timeout: float = 240) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in read_events(job):
            if pred(e):
                return e
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no such event: {log.read_text()[-3000:]}")


def _alive(procs: list) -> list:  # noqa: ANN001
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_pause_request_and_sigterm_reach_both_ranks(tiny_model: Path, tmp_path: Path) -> None:
    data = {"train": write_jsonl(tmp_path / "train.jsonl", make_rows(tmp_path / "img", 4, seed=0, assistant=True)),
            "valid": write_jsonl(tmp_path / "valid.jsonl", make_rows(tmp_path / "img", 2, seed=1, assistant=True))}
    folder = tmp_path / "job"
    job = write_job(folder, tiny_model, data, "supervised", output_dir=str(folder / "output"), num_ranks=2,
                    hyperparameters={"n_epochs": 30, "batch_size": 2, "eval_interval": 1000})
    out = folder / "output"
    log = tmp_path / "pod.log"

    proc = _start(job, tmp_path, log)
    try:
        _wait_event(job, proc, lambda e: e["type"] == "metrics", log)
        (out / "pause.request").write_text("now\n")
        assert proc.wait(180) == 0, log.read_text()[-3000:]
        paused = [e for e in read_events(job) if e["type"] == "paused"]
        assert len(paused) == 1, log.read_text()[-3000:]
        assert (out / paused[0]["path"] / "trainer_state").is_dir()
        assert "2 rank(s)" in read_events(job)[0]["message"]
        assert "pause requested: SIGUSR1 to rank 0" in log.read_text()
        assert "[rank 1]" in (folder / "trainer.log").read_text()  # both ranks' output in the job folder's log

        (out / "pause.request").unlink()  # as the launcher does before the next Job
        resumed = write_job(folder, tiny_model, data, "supervised", output_dir=str(out), num_ranks=2,
                            resume_from=str(out / paused[0]["path"]),
                            hyperparameters={"n_epochs": 30, "batch_size": 2, "eval_interval": 1000})
        proc = _start(resumed, tmp_path, log)
        step = paused[0]["step"]
        _wait_event(resumed, proc, lambda e: e["type"] == "metrics" and e["step"] > step, log)
        ranks = psutil.Process(proc.pid).children(recursive=True)  # the launcher and its two ranks
        assert len([p for p in ranks if "trainer" in " ".join(p.cmdline())]) >= 2, [p.cmdline() for p in ranks]
        proc.send_signal(signal.SIGTERM)  # to the first process only, as the kubelet does
        assert proc.wait(60) == 143, log.read_text()[-3000:]
        deadline = time.monotonic() + 15
        while _alive(ranks):
            assert time.monotonic() < deadline, [p.cmdline() for p in _alive(ranks)]
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
