"""Driving the service through the openai SDK: start or find a `vrft serve`, upload rows, follow a job (what
the demo and the learning benchmark, research/learning.py, share)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import openai
from tqdm import tqdm

import synthetic

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")
"""Job statuses after which a job no longer changes."""
BASE = "tiny-qwen2-vl"
"""The base model the service lists when nothing else is installed (built by `start_server` if missing)."""

__all__ = ["BASE", "TERMINAL", "api_key", "follow", "healthy", "start_server", "stop_server", "upload", "vrft_home"]


# ---------------------------------------------------------------- the service

def healthy(url: str) -> bool:
    """Whether a service answers /health on `url`."""
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def vrft_home() -> Path:
    """``$VRFT_HOME``, or ./.vrft in the repository."""
    return Path(os.environ.get("VRFT_HOME") or REPO / ".vrft").resolve()


def start_server(url: str, home: Path) -> subprocess.Popen:
    """`vrft serve` on the URL's host and port; waits for /health. Builds the tiny model first if it is missing."""
    model = home / "models" / BASE
    if not model.exists():
        print(f"building the tiny model in {model}", flush=True)
        subprocess.run([sys.executable, "-m", "trainer.tiny_model", "--out", str(model)], cwd=REPO, check=True)
    u = urlparse(url)
    log = home / "demo-server.log"
    home.mkdir(parents=True, exist_ok=True)
    # no engine start-ahead of finished jobs: on a small CPU machine it would compete with the next job's training
    env = {"VRFT_SERVING_PREWARM": "false", "VRFT_SERVING_ENFORCE_EAGER": "true", **os.environ, "VRFT_HOME": str(home)}
    print(f"no service answers on {url}: starting `vrft serve` (VRFT_HOME={home}, log {log})", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "api", "serve", "--host", u.hostname or "127.0.0.1",
                             "--port", str(u.port or 8000)],
                            cwd=REPO, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}; see {log}")
        if healthy(url):
            return proc
        time.sleep(0.3)
    stop_server(proc)
    raise SystemExit(f"the server did not answer within 120 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server `start_server` started: terminate, wait 30 s, then kill."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_key(arg: str | None, home: Path) -> str:
    """`arg`, else VRFT_API_KEY, else the key the server wrote to `home`/api_key, else OPENAI_API_KEY."""
    if arg:
        return arg
    if os.environ.get("VRFT_API_KEY"):
        return os.environ["VRFT_API_KEY"]
    path = home / "api_key"
    if path.exists():
        return path.read_text().strip()
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"]
    raise SystemExit(f"no API key: pass --api-key, set VRFT_API_KEY, or keep the key the server wrote to {path}")


# ---------------------------------------------------------------- jobs

def upload(client: openai.OpenAI, folder: Path, rows: list[dict], name: str) -> str:
    """Write `rows` as JSONL to `folder`/`name`, upload it for fine-tuning, wait until it is processed; its file id."""
    path = folder / name
    path.write_bytes(synthetic.to_jsonl(rows))
    with path.open("rb") as fh:
        f = client.files.create(file=fh, purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.5, max_wait_seconds=300)
    if f.status != "processed":
        raise SystemExit(f"{name} was not accepted: {f.status_details}")
    return f.id


def follow(client: openai.OpenAI, job_id: str, label: str, poll: float = 1.0) -> tuple[object, list[dict]]:
    """Poll the job and its events until it ends; a tqdm bar over metrics steps; other events printed once.
    Returns the final job and its metrics events' data (oldest first)."""
    seen: set[str] = set()
    metrics: dict[int, dict] = {}
    bar = tqdm(total=None, desc=label, unit="step", dynamic_ncols=True, file=sys.stdout)
    try:
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            new = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data if e.id not in seen][::-1]
            for e in new:
                seen.add(e.id)
                if e.type == "metrics" and e.data:
                    step = int(e.data.get("step", 0))
                    metrics[step] = dict(e.data)
                    if e.data.get("total_steps"):
                        bar.total = int(e.data["total_steps"])
                    bar.n = max(metrics)
                    post = {}
                    if "train_loss" in e.data:
                        post["loss"] = f"{e.data['train_loss']:.3f}"
                    scores = e.data.get("scores") or {}
                    if scores.get("train_reward_mean") is not None:
                        post["reward"] = f"{scores['train_reward_mean']:.3f}"
                    if scores.get("valid_reward_mean") is not None:
                        post["valid"] = f"{scores['valid_reward_mean']:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.refresh()
                else:
                    tqdm.write(f"  [{label}] {e.message}", file=sys.stdout)
            if job.status in TERMINAL:
                break
            time.sleep(poll)
    finally:
        bar.close()
    if job.status != "succeeded":
        raise SystemExit(f"{label} job {job_id} ended {job.status}: {job.error}")
    return job, [metrics[k] for k in sorted(metrics)]
