"""The standalone grader service and RemoteGrader: same batch interface, identical rewards."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

import grader
from grader.service import RemoteGrader, create_app
from tests.grader.visual_rft_port import make_detection_samples

SPEC = {
    "type": "multi",
    "name": "visual-rft",
    "calculate_output": "fmt + 2 * det + cls",
    "graders": {
        "fmt": {"type": "format", "name": "fmt"},
        "det": {"type": "iou", "name": "det", "reference": "{{item.solution}}", "confidence_weight": 0.5},
        "cls": {
            "type": "string_check",
            "name": "cls",
            "input": "{{sample.answer}}",
            "reference": "{{item.missing}}",
            "operation": "eq",
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service():
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(token="t0ken", workers=2), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


def batch():
    contents, sols = make_detection_samples(64, boxes=5, seed=11)
    contents[3] = "<think>x</think><answer>No Objects</answer>"
    contents[5] = "garbage"
    items = [{"solution": s} for s in sols]
    groups = [items[i // 8 * 8] for i in range(64)]  # 8 completions per prompt share their row, as in GRPO
    return contents, groups


def test_remote_equals_in_process(service, monkeypatch):
    monkeypatch.setenv("VRFT_GRADER_SERVICE_TOKEN", "t0ken")  # what the trainer's environment carries
    contents, items = batch()
    local = grader.compile(SPEC).grade(contents, items)
    with grader.compile(SPEC, service_url=service) as remote_g:
        assert isinstance(remote_g, RemoteGrader)
        remote = remote_g.grade(contents, items)
    assert remote.rewards == local.rewards
    assert remote.sub_rewards == local.sub_rewards
    assert remote.error_counts == local.error_counts
    assert [r.errors for r in remote.results] == [r.errors for r in local.results]
    assert remote.scores == local.scores


def test_remote_python_grader_equals_in_process(service):
    spec = {
        "type": "python",
        "name": "py",
        "source": "def grade(s, i):\n    return len(s['answer']) / (1 + len(i['solution']))\n",
    }
    contents, items = batch()
    with grader.compile(spec, workers=2) as g:
        local = g.grade(contents, items)
    remote = RemoteGrader(service, spec, token="t0ken").grade(contents, items)
    assert remote.rewards == local.rewards and max(local.rewards) > 0


def test_auth_and_errors(service):
    r = httpx.post(service + "/v1/grade", json={"grader": SPEC, "samples": [], "items": []})
    assert r.status_code == 401
    h = {"Authorization": "Bearer t0ken"}
    r = httpx.post(service + "/v1/grade", headers=h, json={"grader": {"type": "nope"}, "samples": ["x"], "items": [{}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader.type"
    r = httpx.post(
        service + "/v1/grade",
        headers=h,
        json={"grader": SPEC, "samples": ["x", "y"], "items": [{}], "item_index": [0, 3]},
    )
    assert r.status_code == 400
    with pytest.raises(grader.GraderValidationError):
        RemoteGrader(service, {"type": "multi", "name": "m", "graders": {}, "calculate_output": "a"}, token="t0ken")
    r = httpx.post(service + "/v1/fine_tuning/alpha/graders/run", headers=h, json={
        "grader": SPEC["graders"]["fmt"], "model_sample": "<think>a</think><answer>b</answer>"})
    assert r.status_code == 200 and r.json()["reward"] == 1.0
    r = httpx.post(service + "/v1/fine_tuning/alpha/graders/validate", headers=h, json={"grader": SPEC})
    assert r.status_code == 200 and r.json()["grader"]["type"] == "multi"
    for path, extra in (
        ("/v1/fine_tuning/alpha/graders/validate", {}),
        ("/v1/fine_tuning/alpha/graders/run", {"model_sample": "x"}),
    ):
        r = httpx.post(
            service + path,
            headers=h,
            json={
                "grader": {
                    "type": "string_check",
                    "name": "s",
                    "input": "{{sample.output_text}}",
                    "reference": "a",
                    "operation": "nope",
                },
                **extra,
            },
        )
        assert r.status_code == 400, path
        assert r.json()["error"]["code"] == "invalid_grader" and r.json()["error"]["param"] == "grader.operation", (
            r.json()
        )


def test_items_are_sent_once_per_batch(service):
    from grader.service import _pack

    contents, items = batch()
    packed = _pack(contents, items)
    assert len(packed["items"]) == 8 and len(packed["item_index"]) == 64
