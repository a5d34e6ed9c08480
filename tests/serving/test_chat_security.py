"""The chat findings of the security audit (issue #27), against the fake vLLM of test_faults.py (which fetches
image URLs as vLLM does when nothing stops it): image URLs fetched by the proxy under the address policy and
handed to the engine as data URLs, decompression bombs, deeply nested JSON, the cap on `n`, and the fair
share of the engine budget between projects. One test runs vLLM's own argument parser and media connector on
the command line and environment the manager starts real engines with."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.engines import engine_command, engine_env  # the real ones: the fixture below patches the module
from tests.helpers import assert_openai_error
from tests.netfixtures import HTTPDouble, Tripwire, bomb_png, png, redirect, send
from tests.serving.support import ThreadServer, register_fine_tuned, serving_app
from tests.serving.test_faults import Env, _folder, chat, fake_command

PNG = png()
IMAGE_PARAM = "messages[1].content[0].image_url.url"


@pytest.fixture()
def secret() -> Iterator[Tripwire]:
    """A service inside the network that chat must never make anything contact."""
    tripwire = Tripwire()
    yield tripwire
    tripwire.close()


def url_of(secret: Tripwire) -> str:
    return f"http://127.0.0.1:{secret.port}/image.png"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Three projects a, b, c with keys (`env.models["key_a"]`...) and fine-tuned models a1, b1, b2, c1 (each
    its own engine), a budget of 2 engines."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope
    from api.settings import Settings

    home = tmp_path_factory.mktemp("chat-security")
    _folder(home / "models", "tiny-qwen2-vl")
    settings = Settings(home=home, serving_max_engines=2, serving_start_wait_seconds=30, serving_read_timeout_seconds=5,
                        serving_poll_seconds=0.2, serving_prewarm=False, serving_access_cache_seconds=1.0)
    migrate(settings)
    models: dict[str, str] = {}
    with session_scope(settings) as s:
        for name in "abc":
            project = get_or_create_project(s, name)
            models[f"key_{name}"], models[f"id_{name}"] = add_key(s, project), project.id
    for model in ("a1", "b1", "b2", "c1"):
        _, models[model] = register_fine_tuned(
            settings, models[f"id_{model[0]}"], "tiny-qwen2-vl", _folder(home / "src", model), suffix=model
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("serving.engines.engine_command", fake_command)
        server = ThreadServer(serving_app(settings)).start()
        try:
            yield Env(server, models["key_a"], models["key_b"], models, settings)
        finally:
            server.stop()


def image_chat(*urls: object, text: str = "Which colour?") -> dict:
    """A chat whose user message (messages[1]) holds an image part per URL, then `text`."""
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {
        "model": "tiny-qwen2-vl",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [*parts, {"type": "text", "text": text}]},
        ],
    }


# ------------------------------------------------------------------ image URLs (finding 4)


def test_image_urls_to_internal_addresses_are_refused_and_never_contacted(env: Env, secret: Tripwire) -> None:
    hop = HTTPDouble({"*": redirect(url_of(secret))})
    try:
        with env.http() as h:
            for url in (url_of(secret), hop.url("/image.png"), "http://169.254.169.254/latest/meta-data/"):
                err = assert_openai_error(h.post("/chat/completions", json=image_chat(url)), 400, param=IMAGE_PARAM)
                assert err["code"] == "image_url_not_allowed", err
            assert hop.hits == []
            # the redirecting server allowed by name: its answer is read, and the hop to the secret refused
            with env.setting(image_url_allowlist=["localhost"]):
                err = assert_openai_error(
                    h.post("/chat/completions", json=image_chat(hop.url("/image.png", host="localhost"))),
                    400,
                    param=IMAGE_PARAM,
                )
            assert err["code"] == "image_url_not_allowed" and hop.hits == ["/image.png"]
            # the other shapes vLLM takes an image URL in, and schemes that are not fetched
            for part in ({"image_url": url_of(secret)}, {"type": "input_image", "image_url": url_of(secret)}):
                body = {"model": "tiny-qwen2-vl", "messages": [{"role": "user", "content": [part]}]}
                assert_openai_error(
                    h.post("/chat/completions", json=body), 400, param="messages[0].content[0].image_url"
                )
            for url in (
                "file:///etc/passwd",
                "ftp://127.0.0.1/x.png",
                "data:text/plain,hi",
                "http://[::1",
                "http://é.com/",
                42,
            ):
                assert_openai_error(h.post("/chat/completions", json=image_chat(url)), 400, param=IMAGE_PARAM)
    finally:
        hop.close()
    assert secret.connections == 0


def test_too_many_images_are_refused_before_any_is_fetched(env: Env, secret: Tripwire) -> None:
    limit = env.settings.max_images_per_row
    with env.setting(image_url_allowlist=["127.0.0.0/8"]), env.http() as h:
        r = h.post("/chat/completions", json=image_chat(*[url_of(secret)] * (limit + 1)))
    err = assert_openai_error(r, 400, param=f"messages[1].content[{limit}].image_url.url")
    assert err["code"] == "too_many_images"
    assert secret.connections == 0


def test_allowed_image_url_reaches_the_engine_as_a_data_url(env: Env) -> None:
    images = HTTPDouble({"*": send(PNG)})
    sent = "data:image/png;base64," + base64.b64encode(PNG).decode()
    try:
        with env.setting(image_url_allowlist=["127.0.0.0/8"]), env.http() as h:
            r = h.post("/chat/completions", json=image_chat(images.url("/image.png"), sent, text="IMAGES"))
    finally:
        images.close()
    assert r.status_code == 200, r.text
    seen = json.loads(r.json()["choices"][0]["message"]["content"])  # what the engine got
    assert [u.split(",")[0] for u in seen] == ["data:image/png;base64"] * 2
    assert [base64.b64decode(u.split(",", 1)[1]) for u in seen] == [PNG, PNG]
    assert images.hits == ["/image.png"]  # by the proxy, not by the engine


# ------------------------------------------------------------------ decompression bombs (finding 6)


def test_decompression_bomb_is_400_naming_the_field(env: Env) -> None:
    bomb = bomb_png()
    images = HTTPDouble({"*": send(bomb)})
    try:
        with env.setting(image_url_allowlist=["127.0.0.0/8"]), env.http() as h:
            for url in ("data:image/png;base64," + base64.b64encode(bomb).decode(), images.url("/bomb.png")):
                err = assert_openai_error(h.post("/chat/completions", json=image_chat(url)), 400, param=IMAGE_PARAM,
                                          contains="13000 x 13000 pixels")
                assert err["code"] == "invalid_image"
    finally:
        images.close()


# ------------------------------------------------------------------ request shape (findings 7 and 15)


def test_deeply_nested_json_is_400(env: Env) -> None:
    depth = 100_000
    body = b'{"model": "tiny-qwen2-vl", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    with env.http() as h:
        err = assert_openai_error(h.post("/chat/completions", content=body), 400)
    assert err["code"] == "invalid_json"


def test_n_is_capped(env: Env) -> None:
    cap = env.settings.serving_max_n
    with env.http() as h:
        for n in (cap + 1, 16_384, str(cap + 1), float(cap + 1), True):
            err = assert_openai_error(
                h.post("/chat/completions", json={**chat("tiny-qwen2-vl"), "n": n}), 400, param="n"
            )
            assert err["code"] == "invalid_value"
        assert_openai_error(
            h.post("/completions", json={"model": "tiny-qwen2-vl", "prompt": "hi", "n": cap + 1}), 400, param="n"
        )
        r = h.post("/chat/completions", json={**chat("tiny-qwen2-vl"), "n": cap})
    assert r.status_code == 200 and len(r.json()["choices"]) == cap


def test_requests_cannot_change_how_images_are_processed(env: Env) -> None:
    """A processor's `min_pixels` from the request would upscale a small image past the pixel cap."""
    with env.http() as h:
        for name, value in (
            ("mm_processor_kwargs", {"min_pixels": 10**9}),
            ("media_io_kwargs", {"image": {"mode": "RGB"}}),
        ):
            err = assert_openai_error(
                h.post("/chat/completions", json={**chat("tiny-qwen2-vl"), name: value}), 400, param=name
            )
            assert err["code"] == "unknown_parameter"


# ------------------------------------------------------------------ the engine budget's fair share (finding 15)


async def _stop_all(env: Env) -> None:
    m = env.server.manager
    for key, e in list(m.engines.items()):
        del m.engines[key]
        await e.stop()


def _ask(env: Env, project: str, model: str) -> httpx.Response:
    with env.http(env.models[f"key_{project}"]) as h:
        return h.post("/chat/completions", json=chat(env.models[model]))


def _live(env: Env) -> set[str]:
    names = {e.served_name for e in env.server.manager.engines.values() if e.state in ("starting", "ready")}
    return {m for m in ("a1", "b1", "b2", "c1") if env.models[m] in names}


def test_a_project_cannot_evict_the_engine_of_a_project_holding_no_more(env: Env) -> None:
    env.server.call(_stop_all(env))
    for project, model in (("a", "a1"), ("b", "b1")):
        assert _ask(env, project, model).status_code == 200
    assert _ask(env, "b", "b2").status_code == 200  # b's own engine makes room, not a's (the least recently used)
    assert _live(env) == {"a1", "b2"}
    b2 = env.engine(env.models["b2"])
    b2.in_flight += 1  # b's engine busy: b may not take a's
    try:
        err = assert_openai_error(_ask(env, "b", "b1"), 503)
    finally:
        b2.in_flight -= 1
    assert err["code"] == "serving_capacity"
    assert _live(env) == {"a1", "b2"}


def test_a_project_holding_none_may_evict_from_one_holding_two(env: Env) -> None:
    env.server.call(_stop_all(env))
    for model in ("b1", "b2"):
        assert _ask(env, "b", model).status_code == 200
    assert _ask(env, "c", "c1").status_code == 200
    assert _live(env) == {"b2", "c1"}  # b's least recently used
    assert _ask(env, "a", "a1").status_code == 200  # b and c hold one each, a none: the least recently used of both
    assert _live(env) == {"c1", "a1"}


# ------------------------------------------------------------------ engines fetch nothing themselves (finding 4)

VLLM_CHECK = """
import json, sys
from vllm import envs
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.multimodal.media.connector import MediaConnector
from vllm.multimodal.media.image import ImageMediaIO
from vllm.utils.argparse_utils import FlexibleArgumentParser

args = make_arg_parser(FlexibleArgumentParser()).parse_args(json.loads(sys.argv[1]))
connector = MediaConnector(allowed_media_domains=args.allowed_media_domains)
try:
    connector.load_from_url(sys.argv[2], ImageMediaIO())
    error = None
except ValueError as e:
    error = str(e)
print(json.dumps({"domains": args.allowed_media_domains, "redirects": envs.VLLM_MEDIA_URL_ALLOW_REDIRECTS,
                  "error": error}))
"""


def test_managed_engines_fetch_no_media_url(tmp_path: Path, secret: Tripwire) -> None:
    """vLLM 0.32's own parser and media connector, given the command line and environment of a managed engine."""
    from api.settings import Settings

    settings = Settings(home=tmp_path, serving_device="cpu")
    cmd = engine_command(settings, _folder(tmp_path, "model"), "m", 8000)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    out = subprocess.run(
        [sys.executable, "-c", VLLM_CHECK, json.dumps(cmd[3:]), url_of(secret)],
        env=engine_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["domains"] == ["vrft.invalid"] and got["redirects"] is False
    assert "allowed domains" in got["error"]
    assert secret.connections == 0
