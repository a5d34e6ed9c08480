"""Request bodies (issue #27, finding 7): a key is checked before any body is read, each route caps its body
(a declared length at once, a chunked one as it arrives), a deep-nested body is a 400, and errors never echo a
caller's huge value back. A live `vrft serve`, spoken to over raw sockets where it matters what the server
reads before it answers."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import LiveServer, assert_openai_error

KEY = "sk-limits-" + secrets.token_hex(6)
JSON_CAP, CHAT_CAP = 100_000, 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("limits")
    s = LiveServer({"VRFT_API_KEY": KEY, "VRFT_WORKER_TRAIN": "false", "VRFT_SERVING_PREWARM": "false",
                    "VRFT_MAX_JSON_BODY_BYTES": str(JSON_CAP), "VRFT_MAX_CHAT_BODY_BYTES": str(CHAT_CAP)}, home).start()
    yield s
    s.stop()


def head_only(server: LiveServer, path: str, length: int, key: str | None) -> tuple[int, dict]:
    """Send a request's head declaring `length` body bytes and not one of them; the answer the server gives
    without reading the body (a server that waits for the body times out here)."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                     f"Content-Length: {length}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next(int(line.split(":")[1]) for line in head.split("\r\n") if line.startswith("content-length:"))


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_no_body_is_read_before_the_key_is_checked(server: LiveServer, key: str | None) -> None:
    start = time.monotonic()
    status, body = head_only(server, "/v1/fine_tuning/jobs", 120 * 2**20, key)
    assert status == 401 and body["error"]["code"] in ("missing_api_key", "invalid_api_key")
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    ("path", "cap"),
    [
        ("/v1/fine_tuning/jobs", JSON_CAP),
        ("/v1/fine_tuning/alpha/graders/run", JSON_CAP),
        ("/v1/chat/completions", CHAT_CAP),
    ],
)
def test_a_declared_length_past_the_cap_is_refused_unread(server: LiveServer, path: str, cap: int) -> None:
    status, body = head_only(server, path, cap + 1, KEY)
    assert status == 413 and body["error"]["code"] == "request_too_large" and str(cap) in body["error"]["message"]


def test_a_chunked_body_is_cut_at_the_cap(server: LiveServer) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "tiny-qwen2-vl", "training_file": "'
        for _ in range(10_000):  # 640 MB if nobody stops it
            sent += 65536
            yield b"x" * 65536

    with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as h:
        try:
            assert_openai_error(
                h.post("/fine_tuning/jobs", content=chunks(), headers={"content-type": "application/json"}), 413
            )
        except (httpx.WriteError, httpx.RemoteProtocolError):
            pass  # the server answered 413 and closed the connection while we still wrote
    assert sent < 64 * 2**20


def test_a_deep_nested_body_is_a_400(server: LiveServer) -> None:
    body = '{"model": "tiny-qwen2-vl", "training_file": "f", "metadata": ' + "[" * 20_000 + "]" * 20_000 + "}"
    with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as h:
        r = h.post("/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


def test_errors_do_not_echo_huge_values(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as h:
        err = assert_openai_error(
            h.post("/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "p" * 60_000}), 400, param="purpose"
        )
        assert len(err["message"]) < 300 and "(60000 characters)" in err["message"]
        err = assert_openai_error(h.get("/files/file-" + "z" * 6000), 404)
        assert len(err["message"]) < 300
        err = assert_openai_error(h.get("/models/m" + "q" * 6000), 404)
        assert len(err["message"]) < 400
