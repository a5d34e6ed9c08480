"""Serving faults and life cycle, against a fake vLLM (tests/serving/fake_vllm.py) started by the real manager:
an engine still starting (503 + Retry-After), engine 500 and 400, silence before and during a stream, an engine
that dies mid-request (502, restarted by the next request), connection refused, the LRU budget, the idle
timeout, prewarming on job success, external mode, and who may call which model."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import assert_openai_error, free_port
from tests.serving.support import ThreadServer, register_fine_tuned, serving_app

FAKE = Path(__file__).with_name("fake_vllm.py")
STARTUP_DELAY: dict[str, float] = {}
"""Seconds a fake engine sleeps before it listens, by served model name (default 0)."""


def fake_command(settings, model_path: Path, served_name: str, port: int) -> list[str]:  # noqa: ANN001
    return [sys.executable, str(FAKE), "--port", str(port), "--served-model-name", served_name,
            "--startup-delay", str(STARTUP_DELAY.get(served_name, 0.0))]


class Env:
    def __init__(self, server: ThreadServer, key: str, other_key: str, models: dict[str, str], settings) -> None:  # noqa: ANN001
        self.server, self.key, self.other_key, self.models, self.settings = server, key, other_key, models, settings

    def client(self, key: str | None = None, **kw) -> openai.OpenAI:  # noqa: ANN003
        return openai.OpenAI(base_url=self.server.url + "/v1", api_key=key or self.key, max_retries=0, **kw)

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url + "/v1", headers={"Authorization": f"Bearer {key or self.key}"}, timeout=30
        )

    @contextlib.contextmanager
    def setting(self, **values) -> Iterator[None]:  # noqa: ANN003
        old = {k: getattr(self.settings, k) for k in values}
        for k, v in values.items():
            setattr(self.settings, k, v)
        try:
            yield
        finally:
            for k, v in old.items():
                setattr(self.settings, k, v)

    def engine(self, model_id: str):  # noqa: ANN201
        return next(e for e in self.server.manager.engines.values() if e.served_name == model_id)


def _folder(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope
    from api.settings import Settings

    home = tmp_path_factory.mktemp("serving-faults")
    _folder(home / "models", "tiny-qwen2-vl")
    weights = _folder(home / "src", "ft")
    settings = Settings(home=home, serving_max_engines=2, serving_start_wait_seconds=30, serving_read_timeout_seconds=2,
                        serving_poll_seconds=0.2, serving_prewarm=False, serving_access_cache_seconds=1.0)
    migrate(settings)
    with session_scope(settings) as s:
        proj, other = get_or_create_project(s, "proj"), get_or_create_project(s, "other")
        key, other_key = add_key(s, proj), add_key(s, other)
        proj_id, other_id = proj.id, other.id
    _, ft = register_fine_tuned(settings, proj_id, "tiny-qwen2-vl", weights, checkpoint_step=3)
    _, other_ft = register_fine_tuned(settings, other_id, "tiny-qwen2-vl", weights, suffix="theirs")
    running_job, running = register_fine_tuned(
        settings, proj_id, "tiny-qwen2-vl", weights, suffix="wip", status="running"
    )
    models = {"base": "tiny-qwen2-vl", "ft": ft, "ckpt": ft + ":ckpt-step-3", "other": other_ft, "running": running,
              "running_job": running_job, "proj_id": proj_id, "other_id": other_id}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("serving.engines.engine_command", fake_command)
        server = ThreadServer(serving_app(settings)).start()
        try:
            yield Env(server, key, other_key, models, settings)
        finally:
            server.stop()


def chat(model: str, text: str = "hello") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_base_and_fine_tuned_models_route_to_their_engines(env: Env) -> None:
    c = env.client()
    for name in ("base", "ft", "ckpt"):
        r = c.chat.completions.create(**chat(env.models[name]))
        assert r.model == env.models[name]
        assert r.choices[0].message.content.startswith(f"echo {env.models[name]} ")
    r = c.completions.create(model=env.models["base"], prompt="hi", n=2)
    assert [ch.text for ch in r.choices] == [r.choices[0].text] * 2 and r.choices[0].text.startswith(
        "echo tiny-qwen2-vl"
    )


def test_another_projects_model_is_404(env: Env) -> None:
    with env.http() as h:
        assert_openai_error(
            h.post("/chat/completions", json=chat(env.models["other"])), 404, param="model", contains="does not exist"
        )
    with env.http(env.other_key) as h:  # and the other way round, a checkpoint included
        for name in ("ft", "ckpt"):
            assert_openai_error(
                h.post("/chat/completions", json=chat(env.models[name])), 404, param="model", contains="does not exist"
            )
        assert h.post("/chat/completions", json=chat(env.models["other"])).status_code == 200


def test_revoked_checkpoint_permission_stops_chat_at_once(env: Env) -> None:
    """Access decisions are cached for chat; revoking a share on this server drops them."""
    ckpt = env.models["ckpt"]
    with env.http() as owner, env.http(env.other_key) as other:
        assert_openai_error(other.post("/chat/completions", json=chat(ckpt)), 404, param="model")
        r = owner.post(f"/fine_tuning/checkpoints/{ckpt}/permissions", json={"project_ids": [env.models["other_id"]]})
        assert r.status_code == 200, r.text
        permission = r.json()["data"][0]["id"]
        assert other.post("/chat/completions", json=chat(ckpt)).status_code == 200  # the denial was not cached
        assert other.post("/chat/completions", json=chat(ckpt)).status_code == 200  # served from the cache
        assert owner.delete(f"/fine_tuning/checkpoints/{ckpt}/permissions/{permission}").status_code == 200
        assert_openai_error(other.post("/chat/completions", json=chat(ckpt)), 404, param="model")


def test_revoked_key_stops_chat_within_the_cache_time(env: Env) -> None:
    from sqlmodel import select

    from api.auth import add_key, hash_key
    from api.db import session_scope
    from api.tables import ApiKey, Project

    with session_scope(env.settings) as s:
        key = add_key(s, s.exec(select(Project).where(Project.id == env.models["proj_id"])).one())
    access = env.server.app.state.authenticator
    assert access.projects.ttl == env.settings.serving_access_cache_seconds > 0
    with env.http(key) as h:
        assert h.post("/chat/completions", json=chat(env.models["base"])).status_code == 200
        with session_scope(env.settings) as s:  # revoked by another server: this one only learns when its cache expires
            s.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one().revoked = True
        assert h.post("/chat/completions", json=chat(env.models["base"])).status_code == 200
        time.sleep(access.projects.ttl + 0.1)
        assert_openai_error(
            h.post("/chat/completions", json=chat(env.models["base"])), 401, contains="Incorrect API key"
        )


def test_model_still_training_is_404_with_a_clear_message(env: Env) -> None:
    with env.http() as h:
        for model in (env.models["running"], env.models["running"] + ":ckpt-step-1"):
            err = assert_openai_error(
                h.post("/chat/completions", json=chat(model)), 404, param="model", contains="not ready"
            )
            assert env.models["running_job"] in err["message"] and "still running" in err["message"]
            assert err["code"] == "model_not_ready"


def test_bad_requests(env: Env) -> None:
    with env.http() as h:
        assert_openai_error(h.post("/chat/completions", json={"messages": []}), 400, param="model")
        assert_openai_error(h.post("/chat/completions", content=b"{nope"), 400)
        assert_openai_error(h.post("/chat/completions", json=chat("no-such-model")), 404, param="model")
    r = httpx.post(env.server.url + "/v1/chat/completions", json=chat(env.models["base"]))
    assert_openai_error(r, 401)


def test_engine_400_keeps_its_status_and_param(env: Env) -> None:
    with env.http() as h:
        err = assert_openai_error(
            h.post("/chat/completions", json=chat(env.models["base"], "BAD400")), 400, param="temperature"
        )
    assert err["type"] == "invalid_request_error" and "non-negative" in err["message"]


def test_engine_500_is_502(env: Env) -> None:
    with env.http() as h:
        err = assert_openai_error(
            h.post("/chat/completions", json=chat(env.models["base"], "FAIL500")), 502, contains="EngineCore"
        )
    assert err["type"] == "server_error" and err["code"] == "engine_error"
    with pytest.raises(openai.InternalServerError) as e:
        env.client().chat.completions.create(**chat(env.models["base"], "FAIL500"))
    assert e.value.status_code == 502


def test_silence_before_the_answer_is_504(env: Env) -> None:
    t = time.monotonic()
    with env.http() as h:
        err = assert_openai_error(h.post("/chat/completions", json=chat(env.models["base"], "STALL")), 504)
    assert err["code"] == "engine_timeout" and time.monotonic() - t < 10
    assert env.engine(env.models["base"]).in_flight == 0


def test_silence_mid_stream_ends_the_stream_with_an_error(env: Env) -> None:
    t = time.monotonic()
    stream = env.client().chat.completions.create(**chat(env.models["base"], "STALL"), stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        for ev in stream:
            got.append(ev.choices[0].delta.content)
    assert got == ["echo "], got
    assert "did not answer in time" in e.value.message
    assert time.monotonic() - t < 10
    assert env.engine(env.models["base"]).in_flight == 0


def test_stream_relays_every_event(env: Env) -> None:
    stream = env.client().chat.completions.create(**chat(env.models["ft"]), stream=True, n=2)
    by_index: dict[int, str] = {}
    for ev in stream:
        assert ev.model == env.models["ft"]
        by_index[ev.choices[0].index] = by_index.get(ev.choices[0].index, "") + ev.choices[0].delta.content
    assert sorted(by_index) == [0, 1] and all(v.startswith(f"echo {env.models['ft']}") for v in by_index.values())


def test_engine_that_dies_is_502_then_restarted(env: Env) -> None:
    model = env.models["ckpt"]
    c = env.client()
    first_pid = c.chat.completions.create(**chat(model)).choices[0].message.content.split()[-1]
    with env.http() as h:
        err = assert_openai_error(
            h.post("/chat/completions", json=chat(model, "DIE")), 502, contains="stopped unexpectedly"
        )
        assert err["code"] == "engine_died"
    r = c.chat.completions.create(**chat(model))  # restarts it (waits for it: start wait is 30 s)
    assert r.choices[0].message.content.split()[-1] != first_pid
    # and a streamed request that kills its engine ends with an error event, not a hung connection
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(**chat(model, "DIE"), stream=True):
            pass


def test_engine_crash_between_requests_is_noticed_and_restarted(env: Env) -> None:
    model = env.models["base"]
    c = env.client()
    c.chat.completions.create(**chat(model))
    engine = env.engine(model)
    engine.proc.kill()
    engine.proc.wait()
    deadline = time.time() + 5
    while engine.state != "dead" and time.time() < deadline:  # the monitor notices within serving_poll_seconds
        time.sleep(0.05)
    assert engine.state == "dead"
    assert c.chat.completions.create(**chat(model)).choices[0].message.content.split()[-1] != str(engine.proc.pid)


def test_engine_still_starting_is_503_with_retry_after(env: Env) -> None:
    model = env.models["ft"]
    env.server.call(_stop_engine(env, model))
    STARTUP_DELAY[model] = 2.0
    try:
        with env.setting(serving_start_wait_seconds=0.2), env.http() as h:
            r = h.post("/chat/completions", json=chat(model))
            err = assert_openai_error(r, 503, contains="starting")
            assert err["code"] == "model_starting" and int(r.headers["retry-after"]) >= 1
            r = (
                env.client().with_options(max_retries=4).chat.completions.create(**chat(model))
            )  # the SDK honours Retry-After
            assert r.choices[0].message.content.startswith("echo")
    finally:
        STARTUP_DELAY.pop(model)


async def _stop_engine(env: Env, model: str) -> None:
    m = env.server.manager
    for key, e in list(m.engines.items()):
        if e.served_name == model:
            del m.engines[key]
            await e.stop()


def test_budget_stops_the_least_recently_used_engine(env: Env) -> None:
    c = env.client()
    for name in ("base", "ft"):
        c.chat.completions.create(**chat(env.models[name]))
    lru = env.engine(env.models["base"])
    c.chat.completions.create(**chat(env.models["ckpt"]))  # a third model: the budget is 2 engines
    live = [e for e in env.server.manager.engines.values() if e.state in ("starting", "ready")]
    assert sorted(e.served_name for e in live) == sorted([env.models["ft"], env.models["ckpt"]])
    lru.proc.wait(20)
    assert lru.state == "stopped"


def test_idle_engines_are_stopped(env: Env) -> None:
    c = env.client()
    c.chat.completions.create(**chat(env.models["base"]))
    engine = env.engine(env.models["base"])
    with env.setting(serving_idle_seconds=0.5):
        engine.proc.wait(10)
    assert engine not in env.server.manager.engines.values()
    assert c.chat.completions.create(**chat(env.models["base"])).choices[0].message.content.startswith("echo")


def test_engine_of_a_new_fine_tuned_model_starts_before_its_first_request(env: Env, tmp_path: Path) -> None:
    for e in list(env.server.manager.engines.values()):  # prewarming only uses free room: make some
        env.server.call(_stop_engine(env, e.served_name))
    with env.setting(serving_prewarm=True):
        _, model = register_fine_tuned(
            env.settings, env.models["proj_id"], "tiny-qwen2-vl", _folder(tmp_path, "w"), suffix="fresh"
        )
        deadline = time.time() + 10
        while not any(e.served_name == model for e in env.server.manager.engines.values()) and time.time() < deadline:
            time.sleep(0.1)
    engine = env.engine(model)
    env.server.call(engine.ready.wait())
    assert engine.state == "ready"


def test_concurrent_requests_across_engines(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = env.client()
    models = [env.models["ft"], env.models["ckpt"]] * 8
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda m: c.chat.completions.create(**chat(m)).choices[0].message.content, models))
    assert all(o.startswith(f"echo {m} ") for o, m in zip(outs, models))
    assert all(e.in_flight == 0 for e in env.server.manager.engines.values())


# ------------------------------------------------------------------ external mode


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, int]]:
    """The service in external mode: the base model on a fake vLLM that serves it under another name, every
    other model on a port nothing listens on."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope
    from api.settings import Settings

    home = tmp_path_factory.mktemp("serving-external")
    _folder(home / "models", "tiny-qwen2-vl")
    port, dead_port = free_port(), free_port()
    settings = Settings(home=home, serving_mode="external", serving_read_timeout_seconds=2,
                        serving_external_urls={"tiny-qwen2-vl": f"http://127.0.0.1:{port}/v1", "*": f"http://127.0.0.1:{dead_port}"})
    migrate(settings)
    with session_scope(settings) as s:
        proj = get_or_create_project(s, "proj")
        key = add_key(s, proj)
        proj_id = proj.id
    _, ft = register_fine_tuned(settings, proj_id, "tiny-qwen2-vl", _folder(home / "src", "ft"))
    proc = subprocess.Popen([sys.executable, str(FAKE), "--port", str(port), "--served-model-name", "upstream-name"])
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            time.sleep(0.1)
        server = ThreadServer(serving_app(settings)).start()
        try:
            yield Env(server, key, "", {"base": "tiny-qwen2-vl", "ft": ft}, settings)
        finally:
            server.stop()
    finally:
        proc.terminate()
        proc.wait(10)


def test_external_server_gets_its_own_name_and_the_caller_sees_ours(external: Env) -> None:
    c = external.client()
    r = c.chat.completions.create(**chat("tiny-qwen2-vl"))
    assert r.model == "tiny-qwen2-vl" and r.choices[0].message.content.startswith("echo upstream-name")
    events = list(c.chat.completions.create(**chat("tiny-qwen2-vl"), stream=True))
    assert events and all(ev.model == "tiny-qwen2-vl" for ev in events)
    assert "".join(ev.choices[0].delta.content for ev in events).startswith("echo upstream-name")


def test_external_server_refusing_connections_is_502(external: Env) -> None:
    with external.http() as h:
        t = time.monotonic()
        err = assert_openai_error(
            h.post("/chat/completions", json=chat(external.models["ft"])), 502, contains="not reachable"
        )
    assert err["code"] == "engine_unreachable" and time.monotonic() - t < 10


def test_client_leaving_mid_stream_frees_the_engine(env: Env) -> None:
    model = env.models["ft"]
    with (
        httpx.Client(timeout=30) as h,
        h.stream(
            "POST",
            env.server.url + "/v1/chat/completions",
            json={**chat(model, "STALL"), "stream": True},
            headers={"Authorization": f"Bearer {env.key}"},
        ) as r,
    ):
        assert r.status_code == 200
        next(r.iter_raw())  # the first event, then the engine stalls and the client goes away
    engine = env.engine(model)
    deadline = time.time() + 1.5  # well before the read timeout (2 s) would end it
    while engine.in_flight and time.time() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0
