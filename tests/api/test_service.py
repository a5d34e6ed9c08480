"""Service-level behaviour: sanitised 500s, streamed uploads, a worker running alone beside the API."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from fastapi.testclient import TestClient

from tests.helpers import REPO, LiveServer, assert_openai_error, jsonl, sft_row


def test_unhandled_error_is_a_sanitised_500_with_request_id(tmp_path) -> None:  # noqa: ANN001
    from api.main import create_app
    from api.settings import Settings

    app = create_app(Settings(home=tmp_path / "home", api_key="sk-test"), embedded_worker=False)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals: /etc/passwd at 0xdeadbeef")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    err = assert_openai_error(r, 500)
    assert err["type"] == "server_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert r.headers["x-request-id"] in err["message"]


def _peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_upload_is_streamed_not_held_in_memory(tmp_path) -> None:  # noqa: ANN001
    """A 300 MB upload raises the server's peak memory by far less than its size."""
    server = LiveServer(
        {"VRFT_API_KEY": "sk-big", "VRFT_MAX_UPLOAD_BYTES": str(400 * 2**20)}, tmp_path / "home"
    ).start()
    try:
        big = tmp_path / "big.bin"
        with open(big, "wb") as f:
            block = os.urandom(2**20)
            for _ in range(300):
                f.write(block)
        before = _peak_rss_kib(server.proc.pid)
        with open(big, "rb") as fh:
            r = httpx.post(server.url + "/v1/files", headers={"Authorization": "Bearer sk-big"},
                           files={"file": ("big.bin", fh)}, data={"purpose": "user_data"}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["bytes"] == 300 * 2**20
        growth_mib = (_peak_rss_kib(server.proc.pid) - before) / 1024
        assert growth_mib < 60, f"server peak memory grew by {growth_mib:.0f} MiB for a 300 MiB upload"
        stored = tmp_path / "home" / "storage" / "files"
        assert sum(p.stat().st_size for p in stored.rglob("*") if p.is_file()) == 300 * 2**20
    finally:
        server.stop()


def test_worker_alone_beside_an_api_without_one(tmp_path, pg_database) -> None:  # noqa: ANN001
    """`vrft serve --no-worker` plus a separate `vrft worker` on a shared PostgreSQL: the worker moves jobs on."""
    env = {
        "VRFT_API_KEY": "sk-split",
        "VRFT_DATABASE_URL": pg_database(),
        "VRFT_WORKER_POLL_SECONDS": "0.2",
        "VRFT_WORKER_TRAIN": "false",
    }
    (tmp_path / "home" / "models" / "tiny-qwen2-vl").mkdir(parents=True)
    (tmp_path / "home" / "models" / "tiny-qwen2-vl" / "config.json").write_text("{}")
    server = LiveServer(env, tmp_path / "home")
    server.env["VRFT_EMBEDDED_WORKER"] = "false"
    server.start()
    worker = None
    try:
        h = httpx.Client(base_url=server.url + "/v1", headers={"Authorization": "Bearer sk-split"})
        f = h.post("/files", files={"file": ("a.jsonl", jsonl([sft_row(0)]))}, data={"purpose": "fine-tune"}).json()
        for _ in range(1200):
            if h.get(f"/files/{f['id']}").json()["status"] == "processed":
                break
            time.sleep(0.05)
        job = h.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": f["id"]}).json()
        time.sleep(1.0)
        assert h.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "validating_files"  # no worker yet
        worker = subprocess.Popen([sys.executable, "-m", "api", "worker"], cwd=REPO, env={**server.env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(1200):
            if h.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "queued":
                break
            time.sleep(0.05)
        assert h.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "queued"
        worker.terminate()
        assert worker.wait(10) == 0  # SIGTERM stops it cleanly
    finally:
        if worker and worker.poll() is None:
            worker.kill()
        server.stop()


def test_job_on_a_file_deleted_before_validation_fails_cleanly(deployment) -> None:  # noqa: ANN001
    """If the training file disappears between creation and the worker's check, the job fails with an
    OpenAI-style error naming the file, instead of hanging."""
    from sqlmodel import select

    from api.db import session_scope
    from api.tables import File, Job
    from tests.conftest import make_settings

    with deployment.http() as h:
        f = h.post("/files", files={"file": ("a.jsonl", jsonl([sft_row(0)]))}, data={"purpose": "fine-tune"}).json()
        for _ in range(1200):
            if h.get(f"/files/{f['id']}").json()["status"] == "processed":
                break
            time.sleep(0.05)
        settings = make_settings(deployment.env, deployment.server.home)
        # Create the job row as the API does, then delete the file before any worker looks at it.
        from api.schemas import JobCreate
        from api.services.jobs import create_job
        from api.tables import Project

        with session_scope(settings) as s:
            proj = s.exec(select(Project).where(Project.id == deployment.project_id)).one()
            job = create_job(s, settings, proj, JobCreate(model="tiny-qwen2-vl", training_file=f["id"]))
            s.delete(s.exec(select(File).where(File.id == f["id"])).one())
        for _ in range(1200):
            got = h.get(f"/fine_tuning/jobs/{job.id}").json()
            if got["status"] != "validating_files":
                break
            time.sleep(0.05)
        assert got["status"] == "failed", got
        assert got["error"]["code"] == "invalid_training_file" and f["id"] in got["error"]["message"]
        assert got["finished_at"] is not None
        with session_scope(settings) as s:
            assert s.exec(select(Job).where(Job.id == job.id)).one().claimed_by is None
