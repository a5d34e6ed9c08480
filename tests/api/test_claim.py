"""The atomic claim: concurrent workers on SQLite and on PostgreSQL each get distinct jobs, every job is
claimed exactly once, and a job whose worker's lease ran out can be taken over."""

from __future__ import annotations

import threading
import time

import pytest
from sqlmodel import select

from api.auth import get_or_create_project
from api.db import get_engine, migrate, session_scope
from api.ids import new_id, now
from api.services import jobs as svc
from api.settings import Settings
from api.tables import Job


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path, pg_database) -> Settings:  # noqa: ANN001
    url = None if request.param == "sqlite" else pg_database()
    s = Settings(home=tmp_path / "home", database_url=url)
    migrate(s)
    return s


def _add_jobs(settings: Settings, n: int) -> list[str]:
    ids = []
    with session_scope(settings) as s:
        p = get_or_create_project(s, "claims")
        for _ in range(n):
            j = Job(
                id=new_id("ftjob-"),
                project_id=p.id,
                created_at=now(),
                model="m",
                training_file="f",
                status="queued",
                method={"type": "supervised", "supervised": {}},
                hyperparameters={},
                seed=0,
                result_files=[],
            )
            s.add(j)
            ids.append(j.id)
    return ids


def test_concurrent_workers_never_share_a_job(settings: Settings) -> None:
    ids = _add_jobs(settings, 30)
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        start.wait()
        while True:
            with session_scope(settings) as s:
                job = svc.claim_job(s, worker_id=name, status="queued", lease_seconds=60)
            if job is None:
                return
            with lock:
                claimed.setdefault(job.id, []).append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)
    assert all(len(v) == 1 for v in claimed.values()), {k: v for k, v in claimed.items() if len(v) > 1}
    with session_scope(settings) as s:
        holders = {j.id: j.claimed_by for j in s.exec(select(Job)).all()}
    assert holders == {k: v[0] for k, v in claimed.items()}
    get_engine(settings).dispose()


def test_expired_lease_is_taken_over_and_renewal_fails_for_the_old_worker(settings: Settings) -> None:
    [job_id] = _add_jobs(settings, 1)
    with session_scope(settings) as s:
        job = svc.claim_job(s, worker_id="dead", status="queued", lease_seconds=0.5)
        assert job is not None and job.id == job_id
        assert svc.claim_job(s, worker_id="alive", status="queued", lease_seconds=60) is None  # lease still live
    time.sleep(0.7)
    with session_scope(settings) as s:
        taken = svc.claim_job(s, worker_id="alive", status="queued", lease_seconds=60)
        assert taken is not None and taken.id == job_id and taken.claimed_by == "alive"
        assert svc.renew_lease(s, taken, worker_id="dead", lease_seconds=60) is False
        assert svc.renew_lease(s, taken, worker_id="alive", lease_seconds=60) is True
        svc.release(s, taken, worker_id="alive")
        again = svc.claim_job(s, worker_id="next", status="queued", lease_seconds=60)
        assert again is not None and again.claimed_by == "next"


def test_user_action_racing_a_worker_is_decided_on_the_new_status(settings: Settings) -> None:
    """The user's request read the job in one status; a worker (or another request) then moved it. The action
    is decided on the status the job really has: cancel and pause still apply to a job that just started,
    and resume of a job cancelled meanwhile is refused naming its real status."""
    ids = _add_jobs(settings, 3)
    cases = [  # (job, status the request read, concurrent change, action, resulting status or None for refused)
        (ids[0], "queued", "running", "cancel", "cancelled"),
        (ids[1], "queued", "running", "pause", "paused"),
        (ids[2], "paused", "cancelled", "resume", None),
    ]
    for job_id, read, concurrent, action, expected in cases:
        with session_scope(settings) as s:
            job = s.exec(select(Job).where(Job.id == job_id)).one()
            if job.status != read:
                svc.transition(s, job, read, "set up")
        with session_scope(settings) as user, session_scope(settings) as worker:
            stale = user.exec(select(Job).where(Job.id == job_id)).one()
            svc.transition(
                worker, worker.exec(select(Job).where(Job.id == job_id)).one(), concurrent, "concurrent change"
            )
            if expected is None:
                with pytest.raises(svc.APIError, match=f"Only a paused job can be resumed; this one is {concurrent}"):
                    svc.user_action(user, stale, action)
            else:
                assert svc.user_action(user, stale, action).status == expected
        with session_scope(settings) as s:
            assert s.exec(select(Job).where(Job.id == job_id)).one().status == (expected or concurrent)
    get_engine(settings).dispose()
