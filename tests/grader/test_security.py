"""Security audit #27, grader findings: each test failed on the code before its fix.

1. the judge's URL never comes from the request's Host header;
2. grader runs hold no shared threads, have a deadline (504) and a per-project limit (429);
8. sandbox uids are unique host-wide, so RLIMIT_NPROC budgets are not shared across processes;
10. the grader service refuses to serve beyond loopback without a token, and compares it in constant time;
11. warm python-grader pools are per project, /tmp is emptied after each call and counts against memory.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from api.errors import APIError
from api.routes.graders import GraderRuns, judge_endpoint, own_v1
from api.settings import Settings
from grader.errors import SampleError
from grader.model_graders import ModelEndpoint
from grader.sandbox import PythonGraderPool, SandboxConfig, SandboxUnavailable, launcher
from grader.sandbox.launcher import count_uid_tasks, lease_uid
from tests.helpers import REPO, LiveServer, assert_openai_error
from tests.netfixtures import Tripwire

RUN = "/fine_tuning/alpha/graders/run"
JUDGE_KEY = "sk-judge-" + secrets.token_hex(4)
SM = {
    "type": "score_model",
    "name": "judge",
    "model": "judge-model",
    "input": [{"role": "user", "content": "{{sample.output_text}}"}],
}
SC = {"type": "string_check", "name": "sc", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}


# ----------------------------------------------------------------------------------------- servers


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI chat completion that says 1, after sleeping N s when the prompt is `sleep N`."""

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append(self.headers.get("authorization"))
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("sleep "):
            time.sleep(float(prompt.split()[1]))
        data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": '{"steps": [], "result": 1}'}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the caller gave up at its deadline
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def judge():
    """A slow fake judge on 127.0.0.1: `.url` (a /v1 base URL), `.seen` (the Authorization headers it got)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.daemon_threads = True
    server.seen = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def live_api(tmp_path, env: dict[str, str], projects: list[str]) -> tuple[LiveServer, dict[str, str]]:
    """`vrft serve` in a subprocess (no job worker), with one key per project: (server, {project: key})."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope

    settings = Settings(home=tmp_path)
    migrate(settings)
    with session_scope(settings) as s:
        keys = {name: add_key(s, get_or_create_project(s, name)) for name in projects}
    server = LiveServer({"VRFT_EMBEDDED_WORKER": "false", **env}, tmp_path).start()
    return server, keys


def call(server: LiveServer, key: str, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(
        method,
        server.url + "/v1" + path,
        headers={"Authorization": f"Bearer {key}", **kw.pop("headers", {})},
        timeout=60,
        **kw,
    )


# ----------------------------------------------------------------------------------------- 1. judge URL


def test_judge_url_never_comes_from_the_host_header(tmp_path):
    listener = Tripwire()
    server, keys = live_api(tmp_path, {}, ["a"])
    try:
        r = call(server, keys["a"], "POST", RUN, json={"grader": SM, "model_sample": "x"},
                 headers={"Host": f"127.0.0.1:{listener.port}"})
        time.sleep(0.5)
        assert listener.connections == 0, "the server called the address in the Host header"
        assert r.status_code == 200, r.text
        errors = r.json()["metadata"]["errors"]
        # the judge was this service itself, on the port `vrft serve --port` bound, as the caller: the caller's
        # key was accepted and the model is not one of the caller's
        assert errors["model_grader_server_error"] and "HTTP 404" in errors["model_grader_server_error_details"]
    finally:
        server.stop()
        listener.close()


def test_judge_endpoint_comes_from_settings():
    request = type("R", (), {"headers": {"authorization": "Bearer sk-caller"}})()
    for host, url in (("0.0.0.0", "http://127.0.0.1:8123/v1"), ("::", "http://[::1]:8123/v1"),
                      ("10.0.0.5", "http://10.0.0.5:8123/v1"), ("::1", "http://[::1]:8123/v1")):
        assert own_v1(Settings(host=host, port=8123)) == url
    ep = judge_endpoint(Settings(host="0.0.0.0", port=8123), request, deadline=0.0)
    assert (ep.base_url, ep.api_key) == ("http://127.0.0.1:8123/v1", "sk-caller")
    ep = judge_endpoint(
        Settings(grader_model_base_url="http://judge.test/v1", grader_model_api_key="sk-j"), request, 0.0
    )
    assert (ep.base_url, ep.api_key) == ("http://judge.test/v1", "sk-j")  # never the caller's key elsewhere
    ep = judge_endpoint(Settings(grader_model_base_url="http://judge.test/v1"), request, 0.0)
    assert ep.api_key is None


# ----------------------------------------------------------------------------------------- 2. threads, deadline, limit


@pytest.fixture(scope="module")
def slow_api(tmp_path_factory, judge):
    """The API with the slow judge, an 8 s deadline, 4 runs in flight per project, ten busy projects and b."""
    env = {"VRFT_GRADER_MODEL_BASE_URL": judge.url, "VRFT_GRADER_MODEL_API_KEY": JUDGE_KEY,
           "VRFT_GRADER_RUN_TIMEOUT_SECONDS": "8", "VRFT_GRADER_RUN_CONCURRENCY_PER_PROJECT": "4"}
    server, keys = live_api(tmp_path_factory.mktemp("slow-api"), env, [f"a{i}" for i in range(10)] + ["b"])
    yield server, keys
    server.stop()


def test_slow_grader_runs_leave_the_service_answering(slow_api, judge):
    server, keys = slow_api
    judge.seen.clear()
    busy = [keys[f"a{i}"] for i in range(10)]
    with ThreadPoolExecutor(40) as pool:
        runs = [pool.submit(call, server, key, "POST", RUN, json={"grader": SM, "model_sample": "sleep 4"})
                for key in busy for _ in range(4)]
        deadline = time.time() + 20
        while len(judge.seen) < 40:  # all 40 runs wait on the judge now
            assert time.time() < deadline, f"only {len(judge.seen)} runs reached the judge"
            time.sleep(0.05)
        for path in ("/models", "/files"):
            t = time.monotonic()
            r = call(server, keys["b"], "GET", path)
            assert r.status_code == 200 and time.monotonic() - t < 2, (path, r.status_code, time.monotonic() - t)
        r = call(server, keys["b"], "POST", RUN, json={"grader": SC, "model_sample": "x"})
        assert r.status_code == 200 and r.json()["reward"] == 1.0  # another project's run is not refused
        r = call(server, busy[0], "POST", RUN, json={"grader": SC, "model_sample": "x"})
        assert_openai_error(r, 429)
        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        answers = [f.result() for f in runs]
    assert [a.status_code for a in answers] == [200] * 40 and all(a.json()["reward"] == 1.0 for a in answers)
    assert set(judge.seen) == {f"Bearer {JUDGE_KEY}"}  # the configured key, never a caller's


def test_run_past_its_deadline_is_a_504(slow_api):
    server, keys = slow_api
    t = time.monotonic()
    r = call(server, keys["b"], "POST", RUN, json={"grader": SM, "model_sample": "sleep 30"})
    err = assert_openai_error(r, 504)
    assert err["code"] == "grader_timeout" and 7.5 < time.monotonic() - t < 11


def test_runs_of_a_project_are_limited_until_their_work_ends():
    async def scenario():
        runs = GraderRuns(limit=1)
        release = threading.Event()
        with pytest.raises(APIError) as e:  # answered at its deadline; the work goes on
            await runs.run("a", lambda: release.wait(10) and {"r": 0}, time.monotonic() + 0.2)
        assert e.value.status_code == 504 and e.value.code == "grader_timeout"
        with pytest.raises(APIError) as e:
            await runs.run("a", lambda: {"r": 1}, time.monotonic() + 5)
        assert e.value.status_code == 429 and e.value.headers["Retry-After"] == "1"
        assert await runs.run("b", lambda: {"r": 2}, time.monotonic() + 5) == {"r": 2}
        release.set()
        for _ in range(100):
            if not runs.in_flight["a"]:
                break
            await asyncio.sleep(0.02)
        assert await runs.run("a", lambda: {"r": 3}, time.monotonic() + 5) == {"r": 3}

    asyncio.run(scenario())


@respx.mock
def test_endpoint_makes_no_retry_that_cannot_finish_in_time():
    route = respx.post("http://judge.test/v1/chat/completions").mock(return_value=httpx.Response(503, text="busy"))
    ep = ModelEndpoint(base_url="http://judge.test/v1", retries=2, deadline=time.monotonic() + 1.2)
    with pytest.raises(SampleError, match="no time left to retry"):
        ep.chat("m", {})
    assert route.call_count == 1


def test_endpoint_cuts_each_attempt_to_the_deadline(judge):
    ep = ModelEndpoint(base_url=judge.url, retries=2, deadline=time.monotonic() + 1)
    t = time.monotonic()
    with pytest.raises(SampleError, match="Timeout"):
        ep.chat("m", {"model": "m", "messages": [{"role": "user", "content": "sleep 5"}]})
    assert time.monotonic() - t < 1.8
    ep.close()


# ----------------------------------------------------------------------------------------- 8. sandbox uids


UID_BASE = 300_000  # a range of its own, so the test finds its workers' uids among the host's processes


def holder(args: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.grader.sandbox_holder", json.dumps(args)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "VRFT_SANDBOX_UID_BASE": str(UID_BASE)})


def result(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, "the holder process died"
    return json.loads(line)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait(10)


def test_two_processes_get_different_sandbox_uids():
    source = "import os\ndef grade(sample, item):\n    return float(os.getuid())\n"
    a = holder({"source": source})
    try:
        uid_a = result(a)["score"]
        b = holder({"source": source})  # while a still holds its worker
        try:
            uid_b = result(b)["score"]
        finally:
            stop(b)
    finally:
        stop(a)
    assert UID_BASE <= uid_a < UID_BASE + 4096 and UID_BASE <= uid_b < UID_BASE + 4096
    assert uid_a != uid_b


HOG = """
import os, time
def grade(sample, item):
    while True:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
    time.sleep(60)
    return 1.0
"""


def test_a_grader_holding_its_process_budget_does_not_starve_another_process():
    a = holder({"source": HOG, "max_processes": 8, "timeout_s": 90})
    try:
        deadline = time.time() + 30
        while not any(count_uid_tasks(uid) >= 8 for uid in range(UID_BASE, UID_BASE + 16)):
            assert time.time() < deadline and a.poll() is None, "the hog never filled its budget"
            time.sleep(0.1)
        b = holder(
            {
                "source": "import subprocess\ndef grade(sample, item):\n"
                "    return float(subprocess.run(['/usr/bin/true']).returncode == 0)\n",
                "max_processes": 8,
            }
        )
        try:
            res = result(b)
        finally:
            stop(b)
    finally:
        stop(a)
    assert res["score"] == 1.0, res


def test_uids_run_out_with_a_clear_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "UID_RANGE", 2)
    cfg = SandboxConfig(uid_base=UID_BASE, uid_lock_dir=str(tmp_path))
    (u1, f1), (u2, f2) = lease_uid(cfg), lease_uid(cfg)
    assert {u1, u2} == {UID_BASE, UID_BASE + 1}
    with pytest.raises(SandboxUnavailable, match="all 2 sandbox uids"):
        lease_uid(cfg)
    os.close(f1)  # a dead holder's lock goes with it
    u3, f3 = lease_uid(cfg)
    assert u3 == u1
    os.close(f2), os.close(f3)


# ----------------------------------------------------------------------------------------- 10. grader service


def test_grader_service_needs_a_token_beyond_loopback(monkeypatch, caplog):
    import uvicorn
    from typer.testing import CliRunner

    from api.cli import app
    from grader.service import serve

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw["host"]))
    monkeypatch.delenv("VRFT_GRADER_SERVICE_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "grader.example.com"):
        with pytest.raises(ValueError, match="VRFT_GRADER_SERVICE_TOKEN"):
            serve(host, 8100)
    umask = os.umask(0o022)  # the command sets the process's umask: keep the test process's
    try:
        out = CliRunner().invoke(app, ["grader", "serve", "--host", "0.0.0.0"])
    finally:
        os.umask(umask)
    assert out.exit_code == 2 and "token" in out.output and not started
    with caplog.at_level(logging.WARNING, logger="grader.service"):
        serve("127.0.0.1", 8100)
    assert started == ["127.0.0.1"] and "requires no token" in caplog.text
    serve("0.0.0.0", 8100, token="t0ken")
    assert started == ["127.0.0.1", "0.0.0.0"]


def test_grader_service_token_is_compared_in_constant_time(monkeypatch):
    from grader.service import create_app

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with TestClient(create_app(token="t0ken")) as http:
        body = {"grader": SC, "model_sample": "x"}
        assert http.post("/v1" + RUN, json=body, headers={"Authorization": "Bearer t0ken"}).status_code == 200
        for wrong in ("Bearer t0ke", "Bearer t0kenn", "t0ken", "Bearer t0kén".encode()):  # not ASCII: no 500
            assert http.post("/v1" + RUN, json=body, headers={"Authorization": wrong}).status_code == 401, wrong
    assert len(compared) == 5


# ----------------------------------------------------------------------------------------- 11. pools and /tmp


TMP_PROBE = """
import os
def grade(sample, item):
    seen = os.path.exists('/tmp/secret')
    if sample['output_text'] == 'write':
        open('/tmp/secret', 'w').write('project data')
    return 10.0 * seen + os.path.exists('/tmp/secret')
"""
STATE_PROBE = (
    "SEEN = set()\ndef grade(sample, item):\n    SEEN.add(sample['output_text'])\n    return float(len(SEEN))\n"
)


def test_python_graders_see_no_file_another_call_left(tmp_path):
    from api.auth import add_key, get_or_create_project
    from api.db import session_scope
    from api.main import create_app

    settings = Settings(home=tmp_path, api_key="sk-test-a-" + secrets.token_hex(4))
    with TestClient(create_app(settings, embedded_worker=False)) as http:
        with session_scope(settings) as s:
            key_b = add_key(s, get_or_create_project(s, "b"))

        def reward(key: str, sample: str, source: str = TMP_PROBE) -> float:
            r = http.post("/v1" + RUN, headers={"Authorization": f"Bearer {key}"},
                          json={"grader": {"type": "python", "name": "p", "source": source}, "model_sample": sample})
            assert r.status_code == 200, r.text
            return r.json()["reward"]

        key_a = settings.api_key.get_secret_value()
        assert reward(key_a, "write") == 1.0  # a wrote /tmp/secret during its call
        assert reward(key_b, "read") == 0.0  # another project, the same source: not a's worker
        assert reward(key_a, "read") == 0.0  # a's next call: its /tmp was emptied
        # the warm worker's module state stays within its project
        assert [
            reward(key_a, "a1", STATE_PROBE),
            reward(key_b, "b1", STATE_PROBE),
            reward(key_a, "a2", STATE_PROBE),
        ] == [1, 1, 2]


def test_tmpfs_counts_against_the_memory_budget():
    cfg = SandboxConfig(workers=1, memory_bytes=1 << 30, disk_bytes=256 << 20, timeout_s=10)
    source = ("import os, resource\ndef grade(sample, item):\n    st = os.statvfs('/tmp')\n"
              "    return float(resource.getrlimit(resource.RLIMIT_AS)[0] + st.f_blocks * st.f_frsize)\n")
    with PythonGraderPool(source, cfg) as pool:
        res = pool.grade([{}], [{}])[0]
    assert res.kind is None, res
    assert res.score <= cfg.memory_bytes


def test_the_wipe_keeps_a_python_that_lives_in_tmp(tmp_path):
    """A checkout under /tmp (CI's fresh clone) has its virtualenv bound inside the sandbox's /tmp: the wipe after
    each call empties everything else there, or the worker would be replaced after every call."""
    from grader.sandbox import worker

    venv = tmp_path / "checkout" / ".venv"
    (venv / "bin").mkdir(parents=True)
    (tmp_path / "checkout" / "left-by-a-grader").write_text("x")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "f").write_text("x")
    assert worker._wipe(str(tmp_path), frozenset({str(venv)}))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "checkout", "checkout/.venv", "checkout/.venv/bin"]
