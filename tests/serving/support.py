"""Test support for serving: the API with the serving router and manager, run by uvicorn in a thread of the
test process (so tests can look at and poke the manager), and a fine-tuned model registered as the job
runner would register it."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from api.settings import Settings
from tests.helpers import free_port


def serving_app(settings: Settings) -> FastAPI:
    """The API app with its serving manager and no embedded job worker."""
    from api.main import create_app

    return create_app(settings, embedded_worker=False)


class ThreadServer:
    """uvicorn serving `app` on a free port in a thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=5)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def manager(self):  # noqa: ANN201
        return self.app.state.serving

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        self.loop = self.manager._task.get_loop()
        return self

    def call(self, coro, timeout: float = 60):  # noqa: ANN001, ANN201
        """Run a coroutine on the server's event loop (the manager lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def register_fine_tuned(settings: Settings, project_id: str, base: str, weights: Path, *, suffix: str = "shapes",
                        checkpoint_step: int | None = None, status: str = "succeeded") -> tuple[str, str]:
    """A job of `project_id` that produced `weights`, stored and recorded as the job runner does (api/runner.py
    `_succeed`: the folder put under `models/{job.id}`, `output_key`, `fine_tuned_model`). With
    `checkpoint_step`, also a checkpoint row whose weights are the same folder stored under `checkpoints/`.
    Returns (job id, the fine-tuned model id or, for a job not succeeded, the id it would get)."""
    from sqlmodel import select

    from api.db import session_scope
    from api.ids import new_id, now
    from api.services.jobs import fine_tuned_model_name
    from api.storage import put_tree, storage_for
    from api.tables import Checkpoint, Job, Project

    storage = storage_for(settings.storage_url, settings.s3_endpoint_url)
    with session_scope(settings) as s:
        project = s.exec(select(Project).where(Project.id == project_id)).one()
        job = Job(
            id=new_id("ftjob-"),
            project_id=project_id,
            created_at=now(),
            model=base,
            training_file="file-x",
            status=status,
            method={"type": "reinforcement", "reinforcement": {}},
            hyperparameters={},
            seed=0,
            suffix=suffix,
            result_files=[],
        )
        name = fine_tuned_model_name(job, project)
        if status == "succeeded":
            key = f"models/{job.id}"
            put_tree(storage, key, weights)
            job.output_key, job.fine_tuned_model, job.finished_at = key, name, now()
        s.add(job)
        s.flush()
        if checkpoint_step is not None:
            ckey = f"checkpoints/{job.id}/step-{checkpoint_step}"
            put_tree(storage, ckey, weights)
            s.add(
                Checkpoint(
                    id=new_id("ftckpt_"),
                    job_id=job.id,
                    project_id=project_id,
                    created_at=now(),
                    fine_tuned_model_checkpoint=f"{name}:ckpt-step-{checkpoint_step}",
                    step_number=checkpoint_step,
                    metrics={},
                    storage_key=ckey,
                )
            )
        return job.id, name


def tiny_model(root: Path, seed: int) -> Path:
    """The tiny Qwen2-VL with weights from `seed`, built once per test session under `root`."""
    from trainer.tiny_model import build_tiny_model

    out = root / f"tiny-seed{seed}"
    if not (out / "config.json").exists():
        build_tiny_model(out, seed=seed)
    return out


def link_base(home: Path, folder: Path, name: str = "tiny-qwen2-vl") -> Path:
    dest = home / "models" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, dest, dirs_exist_ok=True)
    return dest
