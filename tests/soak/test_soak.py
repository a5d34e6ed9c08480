"""The soak test (infra/soak.py) in a smaller configuration: the compose topology as processes (2 API processes and
3 workers on PostgreSQL and S3 on moto, with infra/compose.yaml's settings), 8 short jobs of both methods, a worker
SIGKILLed or stopped every few seconds, the database's connections dropped once. Every job must end once, in
`succeeded`, with no event lost or repeated and storage and database agreeing (no orphaned checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from api.runner import _continue_numbering
from infra import soak


@pytest.mark.timeout(900)
def test_soak_jobs_end_once_under_worker_kills_and_a_database_drop(tmp_path: Path) -> None:
    res = soak.run(jobs=8, workers=3, apis=2, kill_every=5.0, db_drop_after=0.25, timeout=600, seed=1,
                   run_dir=tmp_path / "soak", keep=True)
    print(res.figures())
    assert res.violations == [], res.figures()
    assert res.statuses == {"succeeded": 8}
    assert res.methods == {"supervised": 4, "reinforcement": 4}
    assert res.kills + res.stops >= 3, res.figures()  # the faults did happen, and hit jobs
    assert res.retries >= 1 and res.takeovers + res.requeues >= 1, res.figures()  # hit jobs were claimed again
    assert res.db_drops == 1 and res.db_backends_dropped >= 5  # 2 APIs and 3 workers were connected
    assert res.checkpoints == res.checkpoint_prefixes > 0


def test_compose_settings_are_read_from_compose_yaml() -> None:
    api, worker = soak.compose_env()
    assert api["VRFT_WORKER_TRAIN"] == "false" and "VRFT_WORKER_TRAIN" not in worker
    for env in (api, worker):
        assert env["VRFT_STORAGE"].startswith("s3://") and env["VRFT_DATABASE_URL"].startswith("postgresql://")
        assert json.loads(env["VRFT_BASE_MODELS"])  # infra/Dockerfile's
    local = soak.localize(worker, database_url="postgresql://h/db", s3_endpoint="http://127.0.0.1:1", api_key="k",
                          home=Path("/h"), model=Path("/m/tiny-qwen2-vl"))
    assert {k: v for k, v in local.items() if local[k] != worker.get(k)}.keys() == {
        "VRFT_DATABASE_URL", "VRFT_S3_ENDPOINT_URL", "VRFT_API_KEY", "VRFT_HOME", "VRFT_BASE_MODELS", "HOST"}


def _seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def test_a_takeover_on_another_host_numbers_the_trainer_events_after_the_applied_ones(tmp_path: Path) -> None:
    """The soak's first find: a worker on another host has no events.jsonl (or an older one), so the trainer
    numbered its events from 1 and the runner skipped them as applied, the final one included."""
    events = tmp_path / "events.jsonl"
    _continue_numbering(events, 13)  # no file here: a line at 13, so the trainer goes on at 14
    assert _seqs(events) == [13]
    events.write_bytes(b'{"seq": 1, "type": "message"}\n{"seq": 2, "type": "message"}\n{"seq": 3, "ty')
    _continue_numbering(events, 9)  # an earlier turn here, cut short: the torn line goes, then 9
    assert _seqs(events) == [1, 2, 9]
    _continue_numbering(events, 9)  # the same again: nothing to do
    assert _seqs(events) == [1, 2, 9]


def test_a_takeover_on_the_same_host_drops_the_events_the_dead_worker_never_applied(tmp_path: Path) -> None:
    """The soak's third find: a worker was killed after its trainer had written its last steps and its final event
    but before it applied them; the worker that took the job over in the same folder applied them (the job
    succeeded) while its own trainer redid the work from the last stored checkpoint and ended the job again
    ("New fine-tuned model created" twice). The unapplied events are now cut off: the new trainer's count."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"seq": n, "type": "final" if n == 11 else "metrics"}) + "\n"
                              for n in range(1, 12)))
    _continue_numbering(events, 7)
    assert _seqs(events) == [1, 2, 3, 4, 5, 6, 7]
    events.write_text(events.read_text() + '{"seq": 8, "type": "metrics"}\n{"seq": 9, "ty')
    _continue_numbering(events, 7)  # a torn line after an unapplied one: both go
    assert _seqs(events) == [1, 2, 3, 4, 5, 6, 7]


def test_a_sampled_nul_character_is_stored_on_postgresql(tmp_path: Path, pg_database) -> None:  # noqa: ANN001
    """The soak's second find: the tiny model sampled a NUL, PostgreSQL refused the rollout record, and the runner
    crashed and failed the job ("internal error")."""
    from api.auth import get_or_create_project
    from api.db import migrate, session_scope
    from api.ids import new_id, now
    from api.services import rollouts
    from api.settings import Settings
    from api.tables import Job, Rollout

    settings = Settings(home=tmp_path / "home", database_url=pg_database())
    migrate(settings)
    with session_scope(settings) as s:
        p = get_or_create_project(s, "nul")
        job = Job(id=new_id("ftjob-"), project_id=p.id, created_at=now(), model="m", training_file="f",
                  status="running", method={"type": "reinforcement"}, hyperparameters={}, seed=0, result_files=[])
        s.add(job)
        s.flush()
        record = {"group": 0, "sample": 0, "completion": 'black {"\x00\x0b', "reward": 0.0, "error_message": "a\x00b"}
        assert rollouts.add_rollouts(s, job, step=1, split="train", records=[record]) == 1
    with session_scope(settings) as s:
        (row,) = s.exec(select(Rollout)).all()
        assert row.completion == 'black {"\ufffd\x0b' and row.error_message == "a\ufffdb"


def test_a_result_file_stored_again_after_a_crash_is_one_blob(tmp_path: Path) -> None:
    """The soak's fourth find: a worker killed after storing a finished job's metrics CSV and before committing its
    row left a blob no row names (its id was random); the worker that took over stored another. The id is now
    derived from the job and the file's name, so the second store overwrites the first."""
    import threading

    from api.auth import get_or_create_project
    from api.db import migrate, session_scope
    from api.ids import new_id, now
    from api.runner import JobRunner
    from api.settings import Settings
    from api.tables import File, Job

    settings = Settings(home=tmp_path / "home")
    migrate(settings)
    runner = JobRunner(settings, "w", threading.Event())
    with session_scope(settings) as s:
        p = get_or_create_project(s, "results")
        job = Job(id=new_id("ftjob-"), project_id=p.id, created_at=now(), model="m", training_file="f",
                  status="running", method={"type": "supervised"}, hyperparameters={}, seed=0, result_files=[])
        s.add(job)
        s.commit()
        project_id = p.id
        first = runner._result_file(s, job, "step_metrics.csv", b"step\n1\n")
        s.rollback()  # the worker died before the commit: the blob is stored, its row is not
        second = runner._result_file(s, job, "step_metrics.csv", b"step\n1\n")
        s.commit()
        other = runner._result_file(s, job, "events.out.tfevents.1", b"x")
        s.commit()
    assert first.id == second.id != other.id
    assert sorted(runner.storage.list_keys(f"files/{project_id}/")) == sorted([second.id, other.id])
    with session_scope(settings) as s:
        assert {f.id for f in s.exec(select(File)).all()} == {second.id, other.id}
