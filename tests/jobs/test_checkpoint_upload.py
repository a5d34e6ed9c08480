"""The job runner uploads a checkpoint while the trainer goes on writing newer ones and pruning older ones: files
that vanish mid-upload neither fail the job nor leave a half optimizer state to resume from."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from sqlmodel import select

from api.auth import get_or_create_project
from api.db import migrate, session_scope
from api.ids import new_id, now
from api.runner import JobRunner
from api.settings import Settings
from api.storage import LocalStorage
from api.tables import Checkpoint, Job


class PruningStorage(LocalStorage):
    """Local storage that, once the first file has arrived, deletes `victim` (what the trainer prunes meanwhile)."""

    def __init__(self, root: Path, victim: Path) -> None:
        super().__init__(root)
        self.victim = victim

    def put_file(self, key: str, path: Path) -> None:
        super().put_file(key, path)
        shutil.rmtree(self.victim, ignore_errors=True)


def checkpoint_folder(root: Path) -> Path:
    folder = root / "checkpoints" / "step-3"
    (folder / "trainer_state" / "ds").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w" * 64)
    (folder / "trainer_state" / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"o" * 64)
    (folder / "trainer_state" / "state.json").write_text("{}")
    return folder


@pytest.fixture
def runner_and_job(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    migrate(settings)
    with session_scope(settings) as s:
        project = get_or_create_project(s, "ckpt")
        job = Job(
            id=new_id("ftjob-"),
            project_id=project.id,
            created_at=now(),
            model="m",
            training_file="f",
            status="running",
            method={"type": "supervised", "supervised": {}},
            hyperparameters={},
            seed=0,
            result_files=[],
        )
        s.add(job)
    return JobRunner(settings, "w", threading.Event()), settings, job.id


@pytest.mark.parametrize("pruned", ["trainer_state", "whole checkpoint"])
def test_checkpoint_pruned_during_upload(runner_and_job, tmp_path: Path, pruned: str) -> None:
    runner, settings, job_id = runner_and_job
    folder = checkpoint_folder(tmp_path / "out")
    runner.storage = PruningStorage(
        tmp_path / "storage", folder / "trainer_state" if pruned == "trainer_state" else folder
    )
    with session_scope(settings) as s:
        job = s.exec(select(Job).where(Job.id == job_id)).one()
        runner._register_checkpoint(s, job, 3, folder, {"train_loss": 1.0})
    with session_scope(settings) as s:
        rows = s.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
    keys = runner.storage.list_keys(f"checkpoints/{job_id}/step-3")
    assert not any(k.startswith("trainer_state/") for k in keys)  # nothing half-uploaded to resume from
    if pruned == "trainer_state":  # the weights are a checkpoint still, without optimizer state
        assert [r.step_number for r in rows] == [3] and {"config.json", "model.safetensors"} <= set(keys)
    else:  # pruned as a whole: nothing recorded, nothing left in storage
        assert rows == [] and keys == []
