"""DELETE /v1/models/{model} through the real openai SDK: a project's fine-tuned models and checkpoints go (weights
out of storage, engines stopped, chat 404), their jobs stay; base models and other projects' models do not.
On a live server per backend (SQLite + local folder, PostgreSQL + S3), and on an in-process server whose
manager starts fake vLLM engines (tests/serving/fake_vllm.py) to show the engine stops."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types import ModelDeleted

from tests.api.sdk_checks import strict
from tests.serving.support import ThreadServer, register_fine_tuned, serving_app

pytestmark = pytest.mark.sdk

FAKE = Path(__file__).parents[1] / "serving" / "fake_vllm.py"


def _weights(root: Path) -> Path:
    d = root / "weights"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    return d


def chat(client: openai.OpenAI, model: str):  # noqa: ANN201
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_delete_fine_tuned_model_and_checkpoint(deployment, tmp_path) -> None:  # noqa: ANN001
    from api.storage import storage_for
    from tests.conftest import make_settings

    settings = make_settings(deployment.env, deployment.server.home)
    storage = storage_for(settings.storage_url, settings.s3_endpoint_url)
    job_id, name = register_fine_tuned(settings, deployment.project_id, "tiny-qwen2-vl", _weights(tmp_path),
                                       suffix="del", checkpoint_step=2)
    ckpt = f"{name}:ckpt-step-2"
    client = openai.OpenAI(base_url=deployment.base_url, api_key=deployment.key, max_retries=0, timeout=60)
    other = openai.OpenAI(base_url=deployment.base_url, api_key=deployment.other_key, max_retries=0, timeout=60)
    assert client.models.retrieve(name).id == name
    assert storage.list_keys(f"models/{job_id}") and storage.list_keys(f"checkpoints/{job_id}/step-2")
    client.fine_tuning.checkpoints.permissions.create(ckpt, project_ids=[deployment.other_project_id])
    assert ckpt in [m.id for m in other.models.list()]

    # not theirs: another project gets 404 (its own view), or 403 for a checkpoint shared with it
    with pytest.raises(openai.NotFoundError) as e:
        other.models.delete(name)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        other.models.delete(ckpt)
    # a base model cannot be deleted
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.models.delete("tiny-qwen2-vl")
    assert e.value.body["code"] == "model_not_deletable" and e.value.body["type"] == "permission_error"
    assert client.models.retrieve(name).id == name  # all of that changed nothing

    deleted = client.models.delete(name)
    strict(ModelDeleted, deleted)
    assert deleted.to_dict() == {"id": name, "object": "model", "deleted": True}
    assert storage.list_keys(f"models/{job_id}") == []
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(name)
    assert name not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, name)
    assert e.value.body["code"] == "model_not_found" and "deleted" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.delete(name)
    job = client.fine_tuning.jobs.retrieve(job_id)  # the job keeps its history
    assert job.status == "succeeded" and job.fine_tuned_model == name
    assert job_id in [j.id for j in client.fine_tuning.jobs.list()]
    with pytest.raises(openai.BadRequestError) as e:  # nor can a new job start from it
        client.fine_tuning.jobs.create(model=name, training_file="file-x")
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"

    # the checkpoint is a model of its own: still there, then deleted with its shares
    assert client.models.retrieve(ckpt).id == ckpt
    assert client.models.delete(ckpt).deleted is True
    assert storage.list_keys(f"checkpoints/{job_id}/step-2") == []
    assert ckpt not in [m.id for m in other.models.list()]
    assert list(client.fine_tuning.jobs.checkpoints.list(job_id)) == []
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, ckpt)
    assert e.value.body["code"] == "model_not_found"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadServer, str, object]]:
    """The API in this process, its serving manager starting fake vLLM engines; (server, key, settings)."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope
    from api.settings import Settings

    home = tmp_path_factory.mktemp("model-delete")
    base = home / "models" / "tiny-qwen2-vl"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "qwen2_vl"}')
    settings = Settings(home=home, serving_prewarm=False, serving_poll_seconds=0.2, serving_access_cache_seconds=60)
    migrate(settings)
    with session_scope(settings) as s:
        key = add_key(s, get_or_create_project(s, "proj"))

    def fake(settings, model_path: Path, served_name: str, port: int) -> list[str]:  # noqa: ANN001
        return [sys.executable, str(FAKE), "--port", str(port), "--served-model-name", served_name]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("serving.engines.engine_command", fake)
        server = ThreadServer(serving_app(settings)).start()
        try:
            yield server, key, settings
        finally:
            server.stop()


def test_delete_stops_the_models_engine(served, tmp_path) -> None:  # noqa: ANN001
    from sqlmodel import select

    from api.db import session_scope
    from api.tables import Project

    server, key, settings = served
    with session_scope(settings) as s:
        project_id = s.exec(select(Project).where(Project.name == "proj")).one().id
    job_id, name = register_fine_tuned(settings, project_id, "tiny-qwen2-vl", _weights(tmp_path))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=5, timeout=60)
    assert chat(client, name).choices[0].message.content.startswith(f"echo {name} ")
    assert chat(client, "tiny-qwen2-vl").choices[0].message.content.startswith("echo tiny-qwen2-vl ")
    engine = next(e for e in server.manager.engines.values() if e.served_name == name)
    cache = engine.model_path
    assert engine.alive() and cache is not None and cache.is_dir()

    assert client.models.delete(name).deleted is True
    assert engine.proc.poll() is not None  # the engine's process is gone
    assert [e.served_name for e in server.manager.engines.values()] == ["tiny-qwen2-vl"]  # the base one stays
    assert not cache.exists()  # the local serving copy of the weights too
    with pytest.raises(openai.NotFoundError) as e:  # at once, although access decisions are cached for 60 s
        chat(client, name)
    assert e.value.body["code"] == "model_not_found"
    assert chat(client, "tiny-qwen2-vl").choices[0].message.content.startswith("echo tiny-qwen2-vl ")
    assert client.fine_tuning.jobs.retrieve(job_id).fine_tuned_model == name
