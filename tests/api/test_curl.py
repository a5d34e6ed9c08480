"""The quickstart flow with curl, as the README shows it: multipart upload, JSON job creation, reads."""

from __future__ import annotations

import json
import subprocess
import time

from tests.helpers import jsonl, sft_row


def curl(dep, *args: str) -> tuple[int, dict]:  # noqa: ANN001
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {dep.key}", *args],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


def test_curl_flow(deployment, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl([sft_row(i) for i in range(3)]))
    code, f = curl(deployment, f"{deployment.base_url}/files", "-F", "purpose=fine-tune", "-F", f"file=@{path}")
    assert (
        code == 200 and f["object"] == "file" and f["filename"] == "train.jsonl" and f["bytes"] == path.stat().st_size
    )
    for _ in range(1200):
        code, f = curl(deployment, f"{deployment.base_url}/files/{f['id']}")
        if f["status"] != "uploaded":
            break
        time.sleep(0.05)
    assert f["status"] == "processed"
    body = json.dumps(
        {
            "model": "tiny-qwen2-vl",
            "training_file": f["id"],
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        }
    )
    code, job = curl(
        deployment, f"{deployment.base_url}/fine_tuning/jobs", "-H", "Content-Type: application/json", "-d", body
    )
    assert code == 200 and job["object"] == "fine_tuning.job" and job["hyperparameters"]["n_epochs"] == 2
    code, listed = curl(deployment, f"{deployment.base_url}/fine_tuning/jobs?limit=1")
    assert code == 200 and listed["object"] == "list" and listed["data"][0]["id"] == job["id"] and "has_more" in listed
    code, events = curl(deployment, f"{deployment.base_url}/fine_tuning/jobs/{job['id']}/events")
    assert code == 200 and events["data"][-1]["message"] == f"Created fine-tuning job: {job['id']}"
    code, cancelled = curl(deployment, "-X", "POST", f"{deployment.base_url}/fine_tuning/jobs/{job['id']}/cancel")
    assert code == 200 and cancelled["status"] == "cancelled"
    code, err = curl(deployment, "-X", "POST", f"{deployment.base_url}/fine_tuning/jobs/{job['id']}/cancel")
    assert code == 400 and err["error"]["code"] == "invalid_state"
    code, models = curl(deployment, f"{deployment.base_url}/models")
    assert code == 200 and "tiny-qwen2-vl" in [m["id"] for m in models["data"]]
