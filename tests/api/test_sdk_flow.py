"""The whole public flow through the real openai SDK (sync and async) against a live server, on SQLite +
local folder and on PostgreSQL + S3. Run once per SDK major version (see the Makefile)."""

from __future__ import annotations

import time

import openai
import pytest
from openai.types import FileDeleted, FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.checkpoints import PermissionCreateResponse, PermissionDeleteResponse
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from tests.api.sdk_checks import strict
from tests.helpers import MULTI_GRADER, jsonl, rl_row, sft_row

pytestmark = pytest.mark.sdk


def rft_method(**hp) -> dict:
    return {
        "type": "reinforcement",
        "reinforcement": {"grader": MULTI_GRADER, "hyperparameters": {"n_epochs": 1, "batch_size": 2, **hp}},
    }


@pytest.fixture
def client(deployment) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=deployment.base_url, api_key=deployment.key, max_retries=0, timeout=120)


def upload(client: openai.OpenAI, tmp_path, rows: list) -> FileObject:  # noqa: ANN001
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(rows))
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    strict(FileObject, f)
    assert f.status == "uploaded" and f.bytes == path.stat().st_size and f.filename == "train.jsonl"
    f = client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=60)
    strict(FileObject, f)
    return f


def wait_status(client: openai.OpenAI, job_id: str, status: str, timeout: float = 60) -> FineTuningJob:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status == status:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {job.status}, expected {status}")


def test_upload_create_events_pause_resume_cancel(client: openai.OpenAI, tmp_path) -> None:  # noqa: ANN001
    f = upload(client, tmp_path, [rl_row(i) for i in range(4)])
    assert f.status == "processed", f.status_details
    assert client.files.content(f.id).content == (tmp_path / "train.jsonl").read_bytes()
    assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]

    job = client.fine_tuning.jobs.create(
        model="tiny-qwen2-vl",
        training_file=f.id,
        validation_file=f.id,
        method=rft_method(eval_interval=2),
        suffix="flow",
        metadata={"run": "sync"},
        seed=7,
    )
    strict(FineTuningJob, job)
    assert job.status == "validating_files" and job.seed == 7 and job.metadata == {"run": "sync"}
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.type == "multi"
    assert job.method.reinforcement.hyperparameters.eval_interval == 2
    assert job.model == "tiny-qwen2-vl" and job.fine_tuned_model is None and job.result_files == []

    job = wait_status(client, job.id, "queued")
    strict(FineTuningJob, job)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1))  # one per page: auto-pagination
    for e in events:
        strict(FineTuningJobEvent, e)
    assert [e.message for e in events] == [
        "Files validated, moving job to queued state",
        f"Validating training file: {f.id} and validation file: {f.id}",
        f"Created fine-tuning job: {job.id}",
    ]
    assert strict(FineTuningJob, client.fine_tuning.jobs.pause(job.id))["status"] == "paused"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.pause(job.id)
    assert e.value.code == "invalid_state"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    with pytest.raises(openai.BadRequestError, match="Only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a job that already was cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[:3] == [
        "Job cancelled by the user",
        "Job resumed by the user, moving it to the queue",
        "Job paused by the user",
    ]
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []


def test_job_list_auto_pagination_and_metadata_filter(client: openai.OpenAI, tmp_path) -> None:  # noqa: ANN001
    f = upload(client, tmp_path, [sft_row(i) for i in range(3)])
    tag = f"page-{time.time_ns()}"
    made = [
        client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=f.id, metadata={"tag": tag, "i": str(i)}).id
        for i in range(5)
    ]
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=2, metadata={"tag": tag})]
    assert listed == made[::-1]  # newest first, across three pages
    first = client.fine_tuning.jobs.list(limit=2, metadata={"tag": tag})
    assert first.has_more is True and len(first.data) == 2
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=3)]
    assert everything[:5] == made[::-1]
    only = list(client.fine_tuning.jobs.list(metadata={"tag": tag, "i": "3"}))
    assert [j.id for j in only] == [made[3]]
    job = client.fine_tuning.jobs.retrieve(made[0])
    strict(FineTuningJob, job)
    assert job.method.type == "supervised" and job.hyperparameters.n_epochs == "auto"


def test_checkpoints_permissions_and_models(client: openai.OpenAI, deployment, tmp_path) -> None:  # noqa: ANN001
    from sqlmodel import select

    from api.db import session_scope
    from api.services import jobs as svc
    from api.tables import Job, Project
    from tests.conftest import make_settings

    f = upload(client, tmp_path, [rl_row(0)])
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=f.id, method=rft_method(), suffix="ck")
    # Checkpoints are written by the trainer's job runner; register two here the way it does.
    settings = make_settings(deployment.env, deployment.server.home)
    with session_scope(settings) as s:
        row = s.exec(select(Job).where(Job.id == job.id)).one()
        proj = s.exec(select(Project).where(Project.id == row.project_id)).one()
        for step in (2, 4):
            svc.register_checkpoint(
                s, row, proj, step=step, metrics={"step": step, "train_loss": 1.0 / step}, storage_key=None
            )
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    for c in ckpts:
        strict(FineTuningJobCheckpoint, c)
    assert [c.step_number for c in ckpts] == [4, 2]
    name = ckpts[0].fine_tuned_model_checkpoint
    assert name.startswith("ft:tiny-qwen2-vl:default:ck:") and name.endswith(":ckpt-step-4")
    assert strict(Model, client.models.retrieve(name))["id"] == name

    other = openai.OpenAI(base_url=deployment.base_url, api_key=deployment.other_key, max_retries=0, timeout=120)
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(name)
    perms = client.fine_tuning.checkpoints.permissions.create(name, project_ids=[deployment.other_project_id])
    perm = perms.data[0]
    strict(PermissionCreateResponse, perm)
    assert perm.project_id == deployment.other_project_id
    assert name in [m.id for m in other.models.list()]
    listed = client.fine_tuning.checkpoints.permissions.list(name)
    assert [p.id for p in listed.data] == [perm.id] and listed.has_more is False
    with pytest.raises(openai.NotFoundError):  # only the owner manages permissions
        other.fine_tuning.checkpoints.permissions.list(name)
    deleted = client.fine_tuning.checkpoints.permissions.delete(perm.id, fine_tuned_model_checkpoint=name)
    strict(PermissionDeleteResponse, deleted)
    assert deleted.deleted is True
    assert name not in [m.id for m in other.models.list()]

    models = list(client.models.list())
    for m in models:
        strict(Model, m)
    assert "tiny-qwen2-vl" in [m.id for m in models]


def test_file_list_delete_and_request_id(client: openai.OpenAI, tmp_path) -> None:  # noqa: ANN001
    a = upload(client, tmp_path, [sft_row(1)])
    b = upload(client, tmp_path, [sft_row(2)])
    listed = [x.id for x in client.files.list(limit=1, order="asc")]
    assert listed.index(a.id) < listed.index(b.id)
    raw = client.files.with_raw_response.retrieve(a.id)
    assert raw.headers["x-request-id"].startswith("req_")
    deleted = client.files.delete(a.id)
    strict(FileDeleted, deleted)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve(a.id)
    assert e.value.request_id and e.value.request_id.startswith("req_")


async def test_async_client_flow(deployment, tmp_path) -> None:  # noqa: ANN001
    client = openai.AsyncOpenAI(base_url=deployment.base_url, api_key=deployment.key, max_retries=0, timeout=120)
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl([rl_row(i, "blue") for i in range(3)]))
    f = await client.files.create(file=path.open("rb"), purpose="fine-tune")
    f = await client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=60)
    assert f.status == "processed"
    job = await client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=f.id, method=rft_method())
    strict(FineTuningJob, job)
    ids = [j.id async for j in client.fine_tuning.jobs.list(limit=1)]
    assert job.id in ids
    events = [e.message async for e in client.fine_tuning.jobs.list_events(job.id, limit=1)]
    assert events[-1] == f"Created fine-tuning job: {job.id}"
    assert (await client.fine_tuning.jobs.cancel(job.id)).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        await client.fine_tuning.jobs.resume(job.id)
    await client.close()
