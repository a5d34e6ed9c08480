"""A stand-in for the Hugging Face Hub's file API, on 127.0.0.1 in a thread (real sockets), for repos a test
builds from local folders. Point `HF_ENDPOINT` (or `Settings.hf_endpoint`) at `FakeHub.url`.

It answers what huggingface_hub 2.x asks (huggingface_hub/file_download.py, hf_api.py, utils/_http.py):
- `GET /api/models/{org}/{name}/revision/{rev}` -> `{"id", "sha", "siblings": [{"rfilename", "size",
  "blobId"}], ...}`; a missing repo is a 404 with `X-Error-Code: RepoNotFound`, a missing revision a 404 with
  `RevisionNotFound`.
- `HEAD` / `GET /{org}/{name}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` (the sha256 of the bytes),
  `Content-Length`, `Accept-Ranges`; a `Range: bytes=N-` GET gets a 206 with `Content-Range`. A gated repo
  answers 401 with `X-Error-Code: GatedRepo` unless `Authorization: Bearer <its token>`; a missing file is a 404
  `EntryNotFound`.
- `drop_once(repo, path)`: the next GET of that file sends its headers and half its bytes, then closes the
  connection (a network drop mid-file).

It counts what it served: `body_bytes` (file bytes sent), `gets` (GETs of files, with their Range header).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """sha -> {path: bytes}"""
    refs: dict[str, str] = field(default_factory=dict)
    """branch or tag -> sha"""
    token: str | None = None
    """Set: the repo is gated, and only this bearer token may download from it."""


@dataclass
class Get:
    repo: str
    path: str
    range: str | None
    status: int


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def commit_sha(files: dict[str, bytes], salt: str = "") -> str:
    h = hashlib.sha1(salt.encode())
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.body_bytes = 0
        self.gets: list[Get] = []
        self.api_calls: list[str] = []
        self._drops: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                hub._handle(self, body=False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # ------------------------------------------------------------ set-up

    def add(self, repo: str, files: dict[str, bytes], *, refs: tuple[str, ...] = ("main",),
            token: str | None = None) -> str:
        """Add a commit of `repo` holding `files`, named by `refs`; returns its sha."""
        r = self.repos.setdefault(repo, Repo())
        if token is not None:
            r.token = token
        sha = commit_sha(files, salt=repo)
        r.commits[sha] = dict(files)
        for ref in refs:
            r.refs[ref] = sha
        return sha

    def drop_once(self, repo: str, path: str) -> None:
        self._drops.add((repo, path))

    def file_gets(self, repo: str | None = None) -> list[Get]:
        return [g for g in self.gets if repo is None or g.repo == repo]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ answers

    def _handle(self, h: http.server.BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            self.api_calls.append(h.path)
            return self._model_info(h, f"{parts[2]}/{parts[3]}", "/".join(parts[5:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(h, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body=body)
        self._error(h, 404, "RepoNotFound", "Not found")

    def _commit(self, h: http.server.BaseHTTPRequestHandler, repo: str, rev: str) -> str | None:
        r = self.repos.get(repo)
        if r is None:
            self._error(h, 404, "RepoNotFound", "Repository not found")
            return None
        sha = rev if rev in r.commits else r.refs.get(rev)
        if sha is None:
            self._error(h, 404, "RevisionNotFound", "Invalid rev id: " + rev)
        return sha

    def _model_info(self, h: http.server.BaseHTTPRequestHandler, repo: str, rev: str) -> None:
        sha = self._commit(h, repo, rev)
        if sha is None:
            return
        r = self.repos[repo]
        files = r.commits[sha]
        siblings = [{"rfilename": n, "size": len(d), "blobId": hashlib.sha1(d).hexdigest()}
                    for n, d in sorted(files.items())]
        self._json(h, {"_id": repo, "id": repo, "modelId": repo, "sha": sha, "private": False,
                       "gated": "manual" if r.token else False, "disabled": False, "siblings": siblings,
                       "tags": [], "downloads": 0, "likes": 0})

    def _resolve(self, h: http.server.BaseHTTPRequestHandler, repo: str, rev: str, name: str, *, body: bool) -> None:
        sha = self._commit(h, repo, rev)
        if sha is None:
            return
        r = self.repos[repo]
        if r.token is not None and h.headers.get("Authorization") != f"Bearer {r.token}":
            return self._error(h, 401, "GatedRepo", "Access to model " + repo + " is restricted.")
        data = r.commits[sha].get(name)
        if data is None:
            return self._error(h, 404, "EntryNotFound", "Entry not found", commit=sha)
        start, status = 0, 200
        rng = h.headers.get("Range")
        if body and rng and rng.startswith("bytes="):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            status = 206
        h.send_response(status)
        h.send_header("X-Repo-Commit", sha)
        h.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        with self._lock:
            drop = (repo, name) in self._drops
            self._drops.discard((repo, name))
        self.gets.append(Get(repo, name, rng, status))
        chunk = data[start:]
        if drop:
            half = chunk[: len(chunk) // 2]
            h.wfile.write(half)
            h.wfile.flush()
            self.body_bytes += len(half)
            h.close_connection = True
            h.connection.shutdown(2)  # SHUT_RDWR: the client sees the body end early
            return
        h.wfile.write(chunk)
        self.body_bytes += len(chunk)

    @staticmethod
    def _json(h: http.server.BaseHTTPRequestHandler, obj: object) -> None:
        raw = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    @staticmethod
    def _error(h: http.server.BaseHTTPRequestHandler, status: int, code: str, message: str,
               commit: str | None = None) -> None:
        raw = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(raw)


def main() -> None:
    """`python -m tests.hubserver REPO=FOLDER ...`: serve folders as repos (main) until killed; prints the URL."""
    import sys
    import time

    hub = FakeHub()
    for arg in sys.argv[1:]:
        repo, folder = arg.split("=", 1)
        hub.add(repo, folder_files(Path(folder)))
    print(hub.url, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
