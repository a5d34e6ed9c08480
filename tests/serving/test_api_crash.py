"""An API killed outright (SIGKILL: no shutdown runs) leaves no engine behind: engines die with the API that
started them (serving/engines.py `_die_with_the_api`), or they would hold their memory and GPU until a person
found them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.helpers import free_port
from tests.serving.test_faults import _folder

API = Path(__file__).with_name("api_process.py")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.split(")")[-1].split()[0] != "Z"  # a zombie is dead, waiting to be reaped


def test_a_killed_api_leaves_no_engine_running(tmp_path: Path) -> None:
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope
    from api.settings import Settings

    home = tmp_path / "home"
    _folder(home / "models", "tiny-qwen2-vl")
    migrate(Settings(home=home))
    with session_scope(Settings(home=home)) as s:
        key = add_key(s, get_or_create_project(s, "proj"))
    port = free_port()
    api = subprocess.Popen([sys.executable, str(API), str(home), str(port)], start_new_session=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
        deadline = time.time() + 90
        while True:  # the API starting, then the engine (503 while it starts)
            try:
                answer = client.chat.completions.create(
                    model="tiny-qwen2-vl", messages=[{"role": "user", "content": "hello"}])
                break
            except (openai.APIConnectionError, openai.InternalServerError):
                assert time.time() < deadline, "no answer from the engine"
                time.sleep(0.5)
        name, pid = answer.choices[0].message.content.split()[1:]  # the fake engine answers "echo <name> <pid>"
        engine = int(pid)
        assert name == "tiny-qwen2-vl" and engine != api.pid and _alive(engine)
        os.kill(api.pid, signal.SIGKILL)
        api.wait(10)
        deadline = time.time() + 20
        while _alive(engine) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(engine), "the engine outlived the API that started it"
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
