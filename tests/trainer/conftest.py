"""Fixtures for the trainer tests: the tiny model (built once), a synthetic image dataset, job files, and a
helper that runs `python -m trainer JOB.json` (or DeepSpeed's launcher) in a subprocess. No mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.synth import COLOUR_GRADER, make_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def shared_caches(tmp_path_factory) -> Path:
    """One vLLM/inductor cache folder for the session: vLLM inspects a model class in a subprocess once and
    caches the answer there (~10-30 s on 2 cores when cold)."""
    folder = tmp_path_factory.mktemp("caches")
    os.environ["VRFT_TEST_CACHES"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Qwen2-VL, built once per session."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", seed=0)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """8 training rows (one in three with a data: URL image), 4 validation rows, with assistant answers."""
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(d / "train.jsonl", make_rows(d / "img", 8, seed=0, assistant=True, data_url_every=3)),
        "valid": write_jsonl(d / "valid.jsonl", make_rows(d / "img", 4, seed=1, assistant=True)),
    }


def trainer_env(tmp: Path, threads: int = 2) -> dict[str, str]:
    """What a trainer process needs here: CPU, no hub, caches in a temporary folder."""
    env = dict(os.environ)
    caches = Path(os.environ.get("VRFT_TEST_CACHES", tmp))
    env.update({
        "DS_ACCELERATOR": "cpu", "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": str(threads),
        "HF_HOME": str(caches / "hf"), "VLLM_CACHE_ROOT": str(caches / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "TRITON_CACHE_DIR": str(caches / "triton"),
        "PYTHONPATH": str(REPO),
    })
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def write_job(folder: Path, model: Path, data: dict, method: str = "reinforcement", **over) -> Path:
    from trainer.job_spec import JobSpec

    folder.mkdir(parents=True, exist_ok=True)
    hp = {"n_epochs": 1, "batch_size": 2, "num_generations": 4, "max_completion_length": 12, "eval_interval": 2} \
        if method == "reinforcement" else {"n_epochs": 1, "batch_size": 2, "eval_interval": 2}
    hp.update(over.pop("hyperparameters", {}))
    spec = JobSpec(job_id="ftjob-test", method=method, model_path=str(model), train_file=str(data["train"]),
                   validation_file=str(data["valid"]), output_dir=str(folder / "out"), hyperparameters=hp,
                   grader=COLOUR_GRADER if method == "reinforcement" else None, seed=7,
                   rollout_engine=over.pop("rollout_engine", "hf"))
    for k, v in over.items():
        setattr(spec, k, v)
    spec.write(folder / "job.json")
    return folder / "job.json"


def read_events(job: Path) -> list[dict]:
    path = Path(json.loads(job.read_text())["output_dir"]) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_trainer(job: Path, env: dict, log: Path, launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = (launcher or [sys.executable]) + (
        ["--module", "trainer", str(job)] if launcher else ["-m", "trainer", str(job)]
    )
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_trainer(job: Path, tmp: Path, timeout: float = 300, launcher: list[str] | None = None,
                env_extra: dict | None = None) -> tuple[int, list[dict], str]:
    """Run the trainer to its end: (exit code, events, log text)."""
    log = job.parent / "trainer.log"
    proc = start_trainer(job, {**trainer_env(tmp), **(env_extra or {})}, log, launcher)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"trainer timed out:\n{log.read_text()[-5000:]}")
    return rc, read_events(job), log.read_text()


def wait_for_event(job: Path, proc: subprocess.Popen, pred, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in read_events(job):
            if pred(e):
                return e
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode} before the event")
        time.sleep(0.1)
    raise AssertionError("timed out waiting for an event")


def pause_then_resume(job: Path, tmp: Path) -> tuple[dict, list[dict], Path]:
    """The job again, into `tmp`: paused (SIGUSR1, as the job runner pauses) once GRPO has started, then resumed
    from the checkpoint the pause wrote. (the paused event, the events of both runs, the resumed output dir)"""
    spec = json.loads(job.read_text())
    spec["output_dir"] = str(tmp / "out")
    again = tmp / "job.json"
    again.write_text(json.dumps(spec))
    proc = start_trainer(again, trainer_env(tmp), tmp / "trainer.log")
    wait_for_event(again, proc, lambda e: e["type"] == "message" and e["message"].startswith("GRPO:"))
    os.kill(int((tmp / "out" / "trainer.pid").read_text()), signal.SIGUSR1)
    assert proc.wait(300) == 0, (tmp / "trainer.log").read_text()[-4000:]
    paused = read_events(again)[-1]
    assert paused["type"] == "paused", paused
    assert (tmp / "out" / paused["path"] / "trainer_state").is_dir()
    spec["resume_from"] = str(tmp / "out" / paused["path"])
    again.write_text(json.dumps(spec))
    rc, events, log = run_trainer(again, tmp)
    assert rc == 0, log[-4000:]
    return paused, events, tmp / "out"


def assert_same_weights(a: Path, b: Path) -> None:
    """The two folders' model.safetensors hold the same tensors (to 1e-6)."""
    import torch

    x, y = load_safetensors(a), load_safetensors(b)
    assert x.keys() == y.keys()
    for k in x:
        assert torch.allclose(x[k], y[k], rtol=0, atol=1e-6), k


def load_safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="session")
def qwen25_3b_l1(tmp_path_factory):
    """`python -m trainer.tiny_model --like qwen2.5-vl-3b --layers 1` into a VRFT_HOME: its folder, output, time
    and environment (built once for the session: the family builds and the real-shape jobs share it)."""
    home = tmp_path_factory.mktemp("vrft-home")
    env = dict(os.environ, VRFT_HOME=str(home), DS_ACCELERATOR="cpu")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "trainer.tiny_model", "--like", "qwen2.5-vl-3b", "--layers", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home / "models" / "qwen2.5-vl-3b-L1", proc.stdout, elapsed, env
