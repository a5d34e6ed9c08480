"""Fixtures for multi-host training: namespace hosts (tests/multihost/netns.py), the tiny model, an API server that
trains nothing itself, and workers started with the hostfile or rank count a test needs (the product's path: the
worker's runner launches DeepSpeed's launcher, which reaches the hosts over ssh with pdsh)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers import REPO, LiveServer
from tests.multihost.netns import NetnsHosts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", seed=0)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsHosts]:
    """Three namespace hosts (the third stands in for a replacement machine). No skip: pdsh and sshd come from
    `make testdeps`, and a machine that cannot make namespaces fails here."""
    for tool in ("pdsh", "ssh-keygen", "ip"):
        assert shutil.which(tool), f"{tool} is missing: `make testdeps` installs pdsh and openssh-server"
    assert os.path.exists("/usr/sbin/sshd"), "sshd is missing: `make testdeps` installs openssh-server"
    with NetnsHosts(3, tmp_path_factory.mktemp("netns")) as h:
        yield h


@pytest.fixture(scope="module")
def api(tiny_model: Path, hosts: NetnsHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`vrft serve` whose embedded worker trains nothing: each test starts the workers it needs."""
    from tests.jobs.conftest import training_env

    home = tmp_path_factory.mktemp("mh-home")
    server = LiveServer(training_env(home, tiny_model, VRFT_WORKER_TRAIN="false"), home).start()
    yield server
    server.stop()


@pytest.fixture
def client(api: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key=api.env["VRFT_API_KEY"], max_retries=0, timeout=60)


@pytest.fixture
def worker(api: LiveServer, hosts: NetnsHosts):  # noqa: ANN201
    """`worker(name, **env)`: a context that runs `vrft worker` (training) with `env` added to the server's, our
    `ssh` first in PATH and one intra-op thread per rank, and stops it at the end."""

    @contextlib.contextmanager
    def run(name: str, **env: str) -> Iterator[subprocess.Popen]:
        full = {**api.env, **hosts.env(), "VRFT_WORKER_TRAIN": "true", "OMP_NUM_THREADS": "1", **env}
        log = api.home / f"worker-{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "api", "worker"], cwd=REPO, env=full,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)

    return run
