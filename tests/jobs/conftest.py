"""Fixtures for training through the API: the real tiny model, a server whose worker trains."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers import LiveServer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", seed=0)


def training_env(home: Path, tiny_model: Path, **extra: str) -> dict[str, str]:
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / "tiny-qwen2-vl").exists():
        os.symlink(tiny_model, models / "tiny-qwen2-vl")
    # no engine start-ahead for finished jobs here: tests/serving covers serving
    return {
        "VRFT_API_KEY": "sk-train-" + secrets.token_hex(6),
        "VRFT_WORKER_POLL_SECONDS": "0.2",
        "VRFT_SERVING_PREWARM": "false",
        **extra,
    }


@pytest.fixture(scope="module")
def trainer_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`vrft serve` with its embedded worker training jobs, on SQLite and a local folder."""
    home = tmp_path_factory.mktemp("train-home")
    server = LiveServer(training_env(home, tiny_model), home).start()
    yield server
    server.stop()


@pytest.fixture
def client(trainer_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=trainer_server.url + "/v1", api_key=trainer_server.env["VRFT_API_KEY"], max_retries=0, timeout=60
    )
