"""schemathesis (4.x) against a live server through its /openapi.json: every check, the examples, coverage,
fuzzing and stateful phases, bounded by tests/api/schemathesis.toml (a few minutes). The run must end with 0
failures: a schema that says what the API does, and an API that does what it says."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import MULTI_GRADER, LiveServer, jsonl, rl_row

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str, str]]:
    """A live server (SQLite, local storage, jobs left queued), its key, and a queued job of its project: the
    job endpoints get a real job to work on (schemathesis cannot make one: a job needs a processed file)."""
    home = tmp_path_factory.mktemp("vrft-schemathesis")
    model_dir = home / "models" / "tiny-qwen2-vl"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"model_type": "qwen2_vl"}')
    key = "sk-vrft-test-" + secrets.token_hex(8)
    # serving in external mode with no URL: chat answers a 404 for a model without a server instead of starting
    # a vLLM engine for the model folder (a config.json, no weights); the serving tests cover the engines
    server = LiveServer({"VRFT_API_KEY": key, "VRFT_WORKER_POLL_SECONDS": "0.2", "VRFT_WORKER_TRAIN": "false",
                         "VRFT_MAX_UPLOAD_BYTES": str(1024 * 1024), "VRFT_SERVING_MODE": "external"}, home).start()
    try:
        with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60) as h:
            f = h.post("/files", files={"file": ("rl.jsonl", jsonl([rl_row(0), rl_row(1)]))},
                       data={"purpose": "fine-tune"}).json()
            deadline = time.time() + 60
            while f["status"] == "uploaded" and time.time() < deadline:
                time.sleep(0.1)
                f = h.get(f"/files/{f['id']}").json()
            assert f["status"] == "processed", f
            job = h.post("/fine_tuning/jobs", json={
                "model": "tiny-qwen2-vl", "training_file": f["id"],
                "method": {"type": "reinforcement", "reinforcement": {"grader": MULTI_GRADER}}})
            assert job.status_code == 200, job.text
        yield server, key, job.json()["id"]
    finally:
        server.stop()


def test_schemathesis_finds_no_failure(live: tuple[LiveServer, str, str], tmp_path: Path) -> None:
    server, key, job_id = live
    # the repository's configuration, plus this server's job for the job endpoints' path parameter
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + f'\n[parameters]\n"path.fine_tuning_job_id" = "{job_id}"\n')
    report = tmp_path / "report.json"
    cmd = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{server.url}/openapi.json",
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--seed", "1", "--workers", "2",
           "--no-color", "--report", "json", "--report-json-path", str(report)]
    proc = subprocess.run([*cmd, "-H", f"Authorization: Bearer {key}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=480)
    out = proc.stdout + proc.stderr
    (tmp_path / "schemathesis.log").write_text(out)
    found = [i for i in (out.find("= FAILURES ="), out.find("= ERRORS =")) if i >= 0]
    assert proc.returncode == 0, out[min(found):][:12000] if found else out[-8000:]
    summary = json.loads(report.read_text())
    assert summary["failures"] == [] and summary["errors"] == [], summary
    assert summary["test_cases"]["with_failures"] == summary["test_cases"]["errored"] == 0, summary["test_cases"]
    assert summary["operations"]["tested"] == summary["operations"]["total"] > 0, summary["operations"]
    for phase in ("coverage", "fuzzing", "stateful"):  # examples: skipped, the schema has none
        assert summary["phases"][phase]["status"] == "success", summary["phases"]
    print(json.dumps({k: summary[k] for k in ("operations", "test_cases", "running_time")}))
