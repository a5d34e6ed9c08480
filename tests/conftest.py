"""Fixtures with real parts: a live server process per backend (SQLite + local folder, PostgreSQL + S3 on a
moto server), fresh databases, project keys."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.helpers import LiveServer, free_port

PG_ADMIN = os.environ.get("VRFT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def pg_database() -> Iterator:
    """A factory of fresh PostgreSQL databases on the machine's server, dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = "vrft_test_" + secrets.token_hex(4)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + name

    yield make
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint: moto in server mode, in its own process."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **AWS_ENV},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(log.read_text())
    os.environ.update(AWS_ENV)
    yield url
    proc.terminate()
    proc.wait(10)


def make_bucket(endpoint: str) -> str:
    import boto3

    name = "vrft-" + secrets.token_hex(4)
    boto3.client("s3", endpoint_url=endpoint, **_aws_kwargs()).create_bucket(Bucket=name)
    return name


def _aws_kwargs() -> dict:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


@dataclass
class Backend:
    name: str
    env: dict[str, str]


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def backend(request: pytest.FixtureRequest, pg_database, tmp_path_factory) -> Backend:  # noqa: ANN001
    if request.param == "sqlite-local":
        return Backend("sqlite-local", {})
    endpoint = request.getfixturevalue("s3_endpoint")
    return Backend("postgres-s3", {
        "VRFT_DATABASE_URL": pg_database(),
        "VRFT_STORAGE": f"s3://{make_bucket(endpoint)}/vrft",
        "VRFT_S3_ENDPOINT_URL": endpoint,
        **AWS_ENV,
    })


@dataclass
class Deployment:
    server: LiveServer
    key: str
    other_key: str
    """A key of a second project, for isolation checks."""
    other_project_id: str
    project_id: str
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=120)


def make_settings(env: dict[str, str], home: Path):  # noqa: ANN201
    from api.settings import Settings

    # JSON values (lists, dicts) as the environment source would parse them
    keys = {
        k.removeprefix("VRFT_").lower(): json.loads(v) if v[:1] in "[{" else v
        for k, v in env.items()
        if k.startswith("VRFT_")
    }
    keys.pop("home", None)
    return Settings(home=home, **keys)


@pytest.fixture(scope="module")
def deployment(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A live server on `backend`, with the tiny base model folder and two projects."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope

    home = tmp_path_factory.mktemp(f"vrft-{backend.name}")
    model_dir = home / "models" / "tiny-qwen2-vl"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"model_type": "qwen2_vl"}')
    key = "sk-vrft-test-" + secrets.token_hex(8)
    env = {
        **backend.env, "VRFT_API_KEY": key, "VRFT_WORKER_POLL_SECONDS": "0.2",
        # these deployments test the API: jobs wait in `queued` (the training tests run the trainer)
        "VRFT_WORKER_TRAIN": "false",
        # small limits so that the limit checks are cheap to hit
        "VRFT_MAX_UPLOAD_BYTES": str(1024 * 1024), "VRFT_MAX_IMAGE_BYTES": "200000", "VRFT_MAX_TRAINING_ROWS": "50",
    }
    settings = make_settings(env, home)
    migrate(settings)
    with session_scope(settings) as s:
        other = get_or_create_project(s, "other")
        other_key = add_key(s, other)
        other_id = other.id
    server = LiveServer(env, home).start()
    with session_scope(settings) as s:
        from api.auth import project_for_key

        project_id = project_for_key(s, key).id
    try:
        yield Deployment(server, key, other_key, other_id, project_id, env)
    finally:
        server.stop()


def pytest_report_header(config: pytest.Config) -> str:
    import openai

    return f"openai SDK {openai.__version__} ({openai.__file__})"
