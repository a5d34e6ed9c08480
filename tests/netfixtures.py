"""Network doubles for the tests of what tenants make the service fetch: a listener that must never be
contacted, and small HTTP servers (images, redirects, slow drips) on 127.0.0.1."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from collections.abc import Callable

from PIL import Image


class Tripwire:
    """A TCP listener on 127.0.0.1 that records every connection made to it: a test asserts it stays at 0."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class HTTPDouble:
    """An HTTP server on 127.0.0.1 whose paths answer with the given handlers; `hits` lists the paths asked."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        double = self
        self.hits: list[str] = []
        self.closed_early = threading.Event()
        """set when a client hung up while a handler was still writing"""

        class _Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                double.hits.append(self.path)
                route = routes.get(self.path.split("?")[0]) or routes.get("*")
                try:
                    route(self) if route else self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    double.closed_early.set()

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def png(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    """13,000 x 13,000 pixels in about 20 KB: the decompression bomb of the audit."""
    return png((13_000, 13_000), mode="1")


def send(body: bytes, content_type: str = "image/png") -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handle


def redirect(location: str, status: int = 302) -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handle


def drip(every_s: float, total_bytes: int = 10_000) -> Handler:
    """Answers 200 and then one byte every `every_s` seconds: a per-read timeout never fires on it."""
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(total_bytes))
        h.end_headers()
        for _ in range(total_bytes):
            h.wfile.write(b"\0")
            h.wfile.flush()
            time.sleep(every_s)

    return handle
