"""Findings 12, 13 and 16 of the security audit (issue #27): file names in download headers, whole-string
patterns that let a trailing newline through, `vrft keys list` and `vrft keys revoke`, and the modes of the
service's data (0600 files in 0700 folders)."""

from __future__ import annotations

import email.message
import email.utils
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.helpers import MULTI_GRADER, REPO, LiveServer, assert_openai_error, jsonl, sft_row

# ---------------------------------------------------------------- 12: download file names


def _upload_named(h: httpx.Client, name: str, content: bytes = b"hello") -> httpx.Response:
    """Upload with `name` in the part header as it is (httpx would percent-encode quotes and control
    characters), quoted the way RFC 7578 parsers read it."""
    boundary = "vrft-" + secrets.token_hex(8)
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n\r\n'
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return h.post("/files", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def _download_name(header: str) -> str:
    """The name a client reads from a content-disposition header: it must hold one printable-ASCII `filename`
    and one RFC 5987 `filename*`, and nothing else."""
    msg = email.message.Message()
    msg["content-disposition"] = header
    params = msg.get_params(header="content-disposition")
    assert params[0] == ("attachment", ""), params
    assert [k for k, _ in params[1:]] == ["filename", "filename"], params
    (_, plain), (_, extended) = params[1:]
    assert isinstance(plain, str) and plain.isascii() and plain.isprintable(), params
    assert isinstance(extended, tuple) and extended[0] == "UTF-8", params
    return email.utils.collapse_rfc2231_value(extended)


NAMES = [  # (sent, stored and downloaded)
    ("naïve 文件.jsonl", "naïve 文件.jsonl"),
    ('a"; filename=evil.jsonl', 'a"; filename=evil.jsonl'),
    ("back\\slash.jsonl", "back\\slash.jsonl"),
    ("nul\x00and\nnewline.jsonl", "nulandnewline.jsonl"),
    ("rtl\u202elnosj.exe", "rtllnosj.exe"),
]


@pytest.mark.parametrize(
    ("sent", "stored"), NAMES, ids=["non-latin", "quote", "backslash", "nul-newline", "rtl-override"]
)
def test_download_keeps_the_file_name_and_a_sound_header(deployment, sent: str, stored: str) -> None:  # noqa: ANN001
    with deployment.http() as h:
        r = _upload_named(h, sent)
        assert r.status_code == 200, r.text
        file_id = r.json()["id"]
        assert r.json()["filename"] == stored
        assert h.get(f"/files/{file_id}").json()["filename"] == stored
        r = h.get(f"/files/{file_id}/content")
    assert r.status_code == 200, r.text
    assert r.content == b"hello"
    assert _download_name(r.headers["content-disposition"]) == stored


# ---------------------------------------------------------------- 13: a trailing newline


def test_suffix_with_a_trailing_newline_is_refused(deployment) -> None:  # noqa: ANN001
    with deployment.http() as h:
        r = h.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": "file-any", "suffix": "x\n"})
    assert_openai_error(r, 400, param="suffix", contains="letters")


def test_schema_name_with_a_trailing_newline_is_refused(deployment) -> None:  # noqa: ANN001
    rf = {"type": "json_schema", "json_schema": {"name": "answer\n", "schema": {"type": "object"}}}
    method = {"type": "reinforcement", "reinforcement": {"grader": MULTI_GRADER, "response_format": rf}}
    with deployment.http() as h:
        r = h.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": "file-any", "method": method})
    assert_openai_error(r, 400, param="method.reinforcement.response_format.json_schema.name", contains="1-64")


def _vrft(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VRFT_HOME": str(home)}
    env.pop("VRFT_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "api", *args], env=env, cwd=REPO, capture_output=True, text=True)


def test_project_name_with_a_trailing_newline_is_refused(tmp_path) -> None:  # noqa: ANN001
    r = _vrft(tmp_path / "home", "keys", "create", "--project", "team\n")
    assert r.returncode != 0 and "project names" in r.stdout + r.stderr
    assert "team" not in _vrft(tmp_path / "home", "keys", "list").stdout


# ---------------------------------------------------------------- 16: keys list and revoke


def _status(server: LiveServer, key: str) -> int:
    return httpx.get(server.url + "/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code


def test_keys_list_shows_prefixes_and_revoke_locks_a_key_out(tmp_path) -> None:  # noqa: ANN001
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope

    home = tmp_path / "home"
    team_key = _vrft(home, "keys", "create", "--project", "team").stdout.strip().splitlines()[-1]
    lab_key = _vrft(home, "keys", "create", "--project", "lab").stdout.strip().splitlines()[-1]
    settings = make_settings({}, home)
    migrate(settings)
    with session_scope(settings) as s:  # two keys chosen by hand, with one prefix
        lab = get_or_create_project(s, "lab")
        twins = [add_key(s, lab, "sk-vrft-same-" + secrets.token_hex(16)) for _ in range(2)]
    everything = [team_key, lab_key, *twins]

    listing = _vrft(home, "keys", "list")
    assert listing.returncode == 0, listing.stderr
    assert "project team" in listing.stdout and "project lab" in listing.stdout
    for key in everything:
        assert key not in listing.stdout  # prefixes only, never a whole key
    assert team_key[:12] in listing.stdout and lab_key[:12] in listing.stdout
    assert listing.stdout.count("sk-vrft-same ") == 2 and listing.stdout.count("active") == 4
    team_only = _vrft(home, "keys", "list", "--project", "team").stdout
    assert team_key[:12] in team_only and lab_key[:12] not in team_only
    assert _vrft(home, "keys", "list", "--project", "nobody").returncode != 0

    server = LiveServer({}, home).start()
    try:
        assert all(_status(server, key) == 200 for key in everything)

        ambiguous = _vrft(home, "keys", "revoke", "sk-vrft-same")
        assert ambiguous.returncode != 0 and "2 keys" in ambiguous.stdout + ambiguous.stderr
        unknown = _vrft(home, "keys", "revoke", "sk-vrft-none")
        assert unknown.returncode != 0 and "no key" in unknown.stdout + unknown.stderr
        assert all(_status(server, key) == 200 for key in everything)

        by_prefix = _vrft(home, "keys", "revoke", team_key[:12])
        assert by_prefix.returncode == 0, by_prefix.stderr
        r = httpx.get(server.url + "/v1/files", headers={"Authorization": f"Bearer {team_key}"})
        assert_openai_error(r, 401, contains="Incorrect API key")

        lab_line = next(line for line in _vrft(home, "keys", "list").stdout.splitlines() if lab_key[:12] in line)
        assert _vrft(home, "keys", "revoke", lab_line.split()[0]).returncode == 0  # by key id
        assert _status(server, lab_key) == 401
        assert all(_status(server, key) == 200 for key in twins)
        assert _vrft(home, "keys", "list").stdout.count("revoked") == 2
    finally:
        server.stop()


# ---------------------------------------------------------------- 16: modes of the service's data


def _modes(home: Path) -> dict[str, str]:
    """Every path under `home` (itself included) that is not 0700 (a folder) or 0600 (a file), with its mode;
    the test's own server log aside."""
    wrong = {}
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.name.startswith("server-") and path.suffix == ".log":
            continue
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path.relative_to(home))] = oct(mode)
    return wrong


def test_serve_keeps_its_data_private(tmp_path) -> None:  # noqa: ANN001
    """An install made before the data was private (a 0755 home, a 0644 database) is tightened at start, and
    what the server writes (the database, its journal, uploads, temporary files) is 0600 in 0700 folders."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "vrft.db").touch()  # an empty file is an empty SQLite database
    (home / "vrft.db").chmod(0o644)
    key = "sk-vrft-test-" + secrets.token_hex(8)
    server = LiveServer({"VRFT_API_KEY": key}, home).start()
    try:
        with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {key}"}) as h:
            r = h.post("/files", files={"file": ("a.jsonl", jsonl([sft_row(0)]))}, data={"purpose": "fine-tune"})
            assert r.status_code == 200, r.text
            file_id = r.json()["id"]
        stored = [p for p in (home / "storage").rglob("*") if p.name == file_id]
        assert len(stored) == 1 and stored[0].is_file()
        assert _modes(home) == {}
    finally:
        server.stop()


def test_worker_start_tightens_home(tmp_path) -> None:  # noqa: ANN001
    """`vrft worker` alone (no API in the process) tightens a home made before the data was private."""
    from api.db import migrate
    from api.worker import Worker

    home = tmp_path / "home"
    settings = make_settings({"VRFT_WORKER_TRAIN": "false"}, home)
    migrate(settings)
    home.chmod(0o755)
    worker = Worker(settings)
    worker.start()
    worker.stop()
    worker.join(10)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_a_revoked_bootstrap_key_stays_revoked_across_restarts(tmp_path) -> None:  # noqa: ANN001
    """Revoking the key of VRFT_API_KEY used to stop the server from starting again (the start tried to add
    it anew: a unique-constraint error); now it starts and the key stays refused."""
    key = "sk-boot-" + secrets.token_hex(8)
    server = LiveServer({"VRFT_API_KEY": key, "VRFT_WORKER_TRAIN": "false"}, tmp_path).start()
    try:
        env = {**os.environ, "VRFT_HOME": str(tmp_path)}
        out = subprocess.run([sys.executable, "-m", "api", "keys", "revoke", key[:12]], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        server.restart()
        with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30) as h:
            assert_openai_error(h.get("/models"), 401)
    finally:
        server.stop()
