"""Shared test helpers: a live server process, data builders, OpenAI-shape assertions."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_data_url(color: str = "red", size: tuple[int, int] = (32, 32), fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def rl_row(i: int = 0, color: str = "red") -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You answer with a colour."},
            {"role": "user", "content": [{"type": "text", "text": f"Which colour is image {i}?"},
                                         {"type": "image_url", "image_url": {"url": image_data_url(color)}}]},
        ],
        "solution": color,
        "boxes": [[1, 2, 10, 12]],
    }


def sft_row(i: int = 0) -> dict:
    return {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]}


def jsonl(rows: list) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode()


MULTI_GRADER = {
    "type": "multi",
    "graders": {
        "colour": {
            "type": "string_check",
            "name": "colour",
            "input": "{{sample.output_text}}",
            "reference": "{{item.solution}}",
            "operation": "eq",
        },
        "close": {
            "type": "text_similarity",
            "name": "close",
            "input": "{{sample.output_text}}",
            "reference": "{{item.solution}}",
            "evaluation_metric": "fuzzy_match",
        },
    },
    "calculate_output": "0.5 * colour + 0.5 * close",
    "name": "colour-multi",
}


def assert_openai_error(
    resp: httpx.Response, status: int, *, param: str | None = None, contains: str | None = None
) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if contains is not None:
        assert contains.lower() in err["message"].lower(), err
    assert resp.headers.get("x-request-id", "").startswith("req_")
    return err


class LiveServer:
    """`vrft serve` in a subprocess on a free port (vLLM's RemoteOpenAIServer pattern)."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env = {**os.environ, **env, "VRFT_HOME": str(home)}
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = home / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--port", str(self.port)], cwd=REPO, env=self.env,
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()
