"""Project isolation (B sees nothing of A's) and durability (a restart of the server keeps everything)."""

from __future__ import annotations

import time

from tests.helpers import assert_openai_error, jsonl, sft_row


def _wait(h, path: str, field: str, value: str) -> dict:  # noqa: ANN001
    for _ in range(1200):
        obj = h.get(path).json()
        if obj.get(field) == value:
            return obj
        time.sleep(0.05)
    raise AssertionError(f"{path}: {field} never became {value}")


def test_other_project_sees_nothing_and_restart_keeps_everything(deployment) -> None:  # noqa: ANN001
    a, b = deployment.http(), deployment.http(deployment.other_key)
    f = a.post(
        "/files", files={"file": ("a.jsonl", jsonl([sft_row(1), sft_row(2)]))}, data={"purpose": "fine-tune"}
    ).json()
    _wait(a, f"/files/{f['id']}", "status", "processed")
    job = a.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": f["id"], "suffix": "iso"}).json()
    job = _wait(a, f"/fine_tuning/jobs/{job['id']}", "status", "queued")

    # B: every read and write on A's objects is a 404, and A's objects are in none of B's lists.
    for method, path in [
        ("GET", f"/files/{f['id']}"), ("GET", f"/files/{f['id']}/content"), ("GET", f"/files/{f['id']}/rows"),
        ("GET", f"/files/{f['id']}/rows?line=1"), ("DELETE", f"/files/{f['id']}"),
        ("GET", f"/fine_tuning/jobs/{job['id']}"), ("GET", f"/fine_tuning/jobs/{job['id']}/events"),
        ("GET", f"/fine_tuning/jobs/{job['id']}/checkpoints"), ("GET", f"/fine_tuning/jobs/{job['id']}/rollouts"),
        ("POST", f"/fine_tuning/jobs/{job['id']}/cancel"),
        ("POST", f"/fine_tuning/jobs/{job['id']}/pause"), ("POST", f"/fine_tuning/jobs/{job['id']}/resume"),
    ]:
        assert_openai_error(b.request(method, path), 404)
    boxes = {"grader": {"type": "iou", "name": "box"}, "rows": [{"line": 1, "sample": "[1, 2, 3, 4]"}]}
    assert_openai_error(b.post(f"/files/{f['id']}/boxes", json=boxes), 404)
    assert f["id"] not in [x["id"] for x in b.get("/files").json()["data"]]
    assert job["id"] not in [x["id"] for x in b.get("/fine_tuning/jobs").json()["data"]]
    r = b.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": f["id"]})
    assert_openai_error(r, 400, param="training_file")

    events = a.get(f"/fine_tuning/jobs/{job['id']}/events").json()["data"]
    files_before = a.get("/files").json()["data"]
    jobs_before = a.get("/fine_tuning/jobs", params={"limit": 1000}).json()["data"]
    content = a.get(f"/files/{f['id']}/content").content
    a.close()
    b.close()

    deployment.server.restart()
    with deployment.http() as a2:
        assert a2.get("/files").json()["data"] == files_before
        assert a2.get("/fine_tuning/jobs", params={"limit": 1000}).json()["data"] == jobs_before
        assert a2.get(f"/fine_tuning/jobs/{job['id']}/events").json()["data"] == events
        assert a2.get(f"/fine_tuning/jobs/{job['id']}/rollouts").json()["data"] == []  # an SFT job has none
        assert a2.get(f"/files/{f['id']}/content").content == content
        # and the restarted server goes on working
        assert a2.post(f"/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_first_start_creates_a_key_file(tmp_path) -> None:  # noqa: ANN001
    """With no key configured and none stored, the first start makes one, prints it once, and writes it 0600."""
    import stat

    import httpx

    from tests.helpers import LiveServer

    server = LiveServer({"VRFT_API_KEY": ""}, tmp_path / "home")
    server.env.pop("VRFT_API_KEY")
    server.start()
    try:
        key_file = tmp_path / "home" / "api_key"
        key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key.startswith("sk-vrft-") and key in server.log.read_text()
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        server.restart()
        assert server.log.read_text().count(key) == 1  # printed once, not on every start
        assert key_file.read_text().strip() == key
    finally:
        server.stop()


def test_keys_create_cli(tmp_path) -> None:  # noqa: ANN001
    """`vrft keys create --project NAME` makes a working key of a new project; only its hash is stored."""
    import os
    import sqlite3
    import subprocess
    import sys

    from tests.helpers import REPO, LiveServer

    env = {**os.environ, "VRFT_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "api", "keys", "create", "--project", "team-b"], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("sk-vrft-")
    db = sqlite3.connect(tmp_path / "home" / "vrft.db")
    assert key not in str(db.execute("select * from apikey").fetchall())
    bad = subprocess.run(
        [sys.executable, "-m", "api", "keys", "create", "--project", "Bad Name!"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "project names" in bad.stderr + bad.stdout
    server = LiveServer({}, tmp_path / "home").start()
    try:
        import httpx

        r = httpx.get(server.url + "/v1/files", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["data"] == []
    finally:
        server.stop()
