"""The Uploads API (/v1/uploads) through the real openai SDK against a live server, on SQLite + local folder and
on PostgreSQL + S3 (moto): `upload_file_chunked` unchanged, part order, md5, the refusals, cancel, expiry,
isolation, and that no part outlives its upload. Run once per SDK major version (see the Makefile)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import FileObject, Upload
from openai.types.uploads import UploadPart

from tests.api.sdk_checks import strict
from tests.helpers import assert_openai_error, jsonl, sft_row

pytestmark = pytest.mark.sdk


@pytest.fixture
def client(deployment) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=deployment.base_url, api_key=deployment.key, max_retries=0, timeout=120)


def _storage(deployment):  # noqa: ANN001, ANN202
    from api.storage import storage_for
    from tests.conftest import make_settings

    settings = make_settings(deployment.env, deployment.server.home)
    return settings, storage_for(settings.storage_url, settings.s3_endpoint_url)


def parts_left(deployment, upload_id: str) -> list[str]:  # noqa: ANN001
    _, storage = _storage(deployment)
    return storage.list_keys(f"uploads/{deployment.project_id}/{upload_id}")


def big_jsonl(n: int, width: int) -> bytes:
    return jsonl([{"messages": [{"role": "user", "content": f"Say {i} " + "x" * width},
                                {"role": "assistant", "content": str(i)}]} for i in range(n)])


def test_upload_file_chunked_makes_a_file_validated_like_any_other(client: openai.OpenAI, deployment,
                                                                    tmp_path) -> None:  # noqa: ANN001
    data = big_jsonl(45, 30_000)  # 1.35 MB, past the 1 MB this deployment's /v1/files takes, in 21 parts
    assert len(data) > int(deployment.env["VRFT_MAX_UPLOAD_BYTES"])
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    up = client.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune",
                                            part_size=64 * 1024, md5=hashlib.md5(data).hexdigest())
    strict(Upload, up)
    assert up.status == "completed" and up.bytes == len(data) and up.filename == "big.jsonl"
    assert up.purpose == "fine-tune" and up.expires_at == up.created_at + 3600
    strict(FileObject, up.file)
    assert up.file.status == "uploaded" and up.file.bytes == len(data) and up.file.filename == "big.jsonl"
    f = client.files.wait_for_processing(up.file.id, poll_interval=0.1, max_wait_seconds=60)
    assert f.status == "processed", f.status_details
    assert client.files.content(f.id).content == data
    assert parts_left(deployment, up.id) == []
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=f.id)
    assert job.training_file == f.id

    # the same bad bytes get the same verdict through /v1/files and through an upload
    bad = jsonl([sft_row(0), "{not json", {"messages": []}])
    (tmp_path / "bad.jsonl").write_bytes(bad)
    via_files = client.files.create(file=(tmp_path / "bad.jsonl").open("rb"), purpose="fine-tune")
    via_upload = client.uploads.upload_file_chunked(file=bad, filename="bad.jsonl", bytes=len(bad),
                                                    mime_type="application/jsonl", purpose="fine-tune", part_size=7)
    a = client.files.wait_for_processing(via_files.id, poll_interval=0.1, max_wait_seconds=60)
    b = client.files.wait_for_processing(via_upload.file.id, poll_interval=0.1, max_wait_seconds=60)
    assert a.status == b.status == "error"
    assert a.status_details == b.status_details and "line 2" in a.status_details


def test_parts_are_joined_in_the_order_of_part_ids(client: openai.OpenAI, deployment) -> None:  # noqa: ANN001
    first, second = jsonl([sft_row(1)]), jsonl([sft_row(2)])
    up = client.uploads.create(bytes=len(first + second), filename="two.jsonl", mime_type="text/jsonl",
                               purpose="fine-tune")
    strict(Upload, up)
    assert up.status == "pending" and up.file is None and up.id.startswith("upload_")
    p2 = client.uploads.parts.create(up.id, data=second)  # sent first, placed second
    p1 = client.uploads.parts.create(up.id, data=first)
    strict(UploadPart, p1)
    assert p1.upload_id == up.id and p1.id.startswith("part_") and p1.id != p2.id
    assert len(parts_left(deployment, up.id)) == 2
    done = client.uploads.complete(up.id, part_ids=[p1.id, p2.id])
    assert done.status == "completed" and done.file.bytes == len(first + second)
    assert client.files.content(done.file.id).content == first + second
    assert parts_left(deployment, up.id) == []


def test_complete_refusals_name_the_field_and_store_nothing(client: openai.OpenAI, deployment) -> None:  # noqa: ANN001
    a, b = jsonl([sft_row(3)]), jsonl([sft_row(4)])
    up = client.uploads.create(bytes=len(a + b), filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    pa, pb = client.uploads.parts.create(up.id, data=a), client.uploads.parts.create(up.id, data=b)
    files_before = {f.id for f in client.files.list()}
    cases = [
        (dict(part_ids=[pa.id, "part_nope"]), "part_ids[1]", "part_not_found"),
        (dict(part_ids=[pa.id, pa.id]), "part_ids[1]", "duplicate_part"),
        (dict(part_ids=[pa.id]), "part_ids", "size_mismatch"),
        (dict(part_ids=[pa.id, pb.id], md5="0" * 32), "md5", "md5_mismatch"),
        (dict(part_ids=[pb.id, pa.id], md5=hashlib.md5(a + b).hexdigest()), "md5", "md5_mismatch"),  # wrong order
        (dict(part_ids=[pa.id, pb.id], md5="not-an-md5"), "md5", "invalid_value"),
    ]
    for kwargs, param, code in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.uploads.complete(up.id, **kwargs)
        assert (e.value.body["param"], e.value.body["code"]) == (param, code), e.value.body
    assert {f.id for f in client.files.list()} == files_before  # no File, not even a failed one
    _, storage = _storage(deployment)
    assert sorted(parts_left(deployment, up.id)) == sorted([pa.id, pb.id])  # the upload stays usable
    done = client.uploads.complete(up.id, part_ids=[pa.id, pb.id], md5=hashlib.md5(a + b).hexdigest())
    assert done.status == "completed"
    assert done.file.id in storage.list_keys(f"files/{deployment.project_id}")
    for call in (lambda: client.uploads.parts.create(up.id, data=b"x"),
                 lambda: client.uploads.complete(up.id, part_ids=[pa.id, pb.id]),
                 lambda: client.uploads.cancel(up.id)):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == "upload_id" and e.value.body["code"] == "upload_completed"


def test_create_and_part_refusals(client: openai.OpenAI, deployment) -> None:  # noqa: ANN001
    base = dict(bytes=10, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    for change, param in [
        (dict(bytes=8 * 1024**3 + 1), "bytes"),
        (dict(bytes=-1), "bytes"),
        (dict(bytes=0), "bytes"),  # an empty fine-tune file, as /v1/files refuses it
        (dict(purpose="nonsense"), "purpose"),
        (dict(mime_type="image/png"), "mime_type"),
        (dict(mime_type="not a type"), "mime_type"),
        (dict(extra_body={"expires_after": {"anchor": "created_at", "seconds": 5}}), "expires_after.seconds"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.uploads.create(**{**base, **change})
        assert e.value.body["param"] == param, e.value.body
    up = client.uploads.create(**base)
    with deployment.http() as h:
        empty = h.post(f"/uploads/{up.id}/parts", files={"data": ("blob", b"")})
        assert_openai_error(empty, 400, param="data", contains="empty")
        missing = h.post(f"/uploads/{up.id}/parts", files={"other": ("blob", b"abc")})
        assert_openai_error(missing, 400, param="data", contains="missing")
        not_multipart = h.post(f"/uploads/{up.id}/parts", content=b"abc", headers={"content-type": "text/plain"})
        assert_openai_error(not_multipart, 400, param="data")
        huge = h.post(f"/uploads/{up.id}/parts", files={"data": ("blob", b"\0" * (64 * 1024**2 + 1))})
        assert_openai_error(huge, 413, param="data")
        unknown = h.post("/uploads/upload_nope/parts", files={"data": ("blob", b"abc")})
        assert_openai_error(unknown, 404, param="upload_id")
    assert parts_left(deployment, up.id) == []
    assert list(Path(deployment.server.home, "tmp").glob("upload-*")) == []  # no spool left


def test_cancel_deletes_parts_and_closes_the_upload(client: openai.OpenAI, deployment) -> None:  # noqa: ANN001
    up = client.uploads.create(bytes=6, filename="c.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    p = client.uploads.parts.create(up.id, data=b"abc")
    assert len(parts_left(deployment, up.id)) == 1
    cancelled = client.uploads.cancel(up.id)
    strict(Upload, cancelled)
    assert cancelled.status == "cancelled" and cancelled.file is None
    assert parts_left(deployment, up.id) == []
    for call in (lambda: client.uploads.parts.create(up.id, data=b"def"),
                 lambda: client.uploads.complete(up.id, part_ids=[p.id]),
                 lambda: client.uploads.cancel(up.id)):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == "upload_id" and e.value.body["code"] == "upload_cancelled"
    assert parts_left(deployment, up.id) == []


def test_expired_uploads_are_refused_and_swept(client: openai.OpenAI, deployment) -> None:  # noqa: ANN001
    from sqlalchemy import update

    from api.db import session_scope
    from api.services.uploads import expire_due
    from api.tables import Upload as UploadRow

    settings, storage = _storage(deployment)
    touched = client.uploads.create(bytes=6, filename="e.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    idle = client.uploads.create(bytes=6, filename="f.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    p = client.uploads.parts.create(touched.id, data=b"abc")
    client.uploads.parts.create(idle.id, data=b"abc")
    with session_scope(settings) as s:  # an hour later
        s.execute(update(UploadRow).where(UploadRow.id.in_([touched.id, idle.id])).values(expires_at=1))
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.complete(touched.id, part_ids=[p.id])
    assert e.value.body["param"] == "upload_id" and e.value.body["code"] == "upload_expired"
    assert parts_left(deployment, touched.id) == []
    assert len(parts_left(deployment, idle.id)) == 1
    assert expire_due(settings, storage) >= 1  # what the server's sweeper runs every minute
    assert parts_left(deployment, idle.id) == []
    with pytest.raises(openai.BadRequestError) as e:
        client.uploads.parts.create(idle.id, data=b"def")
    assert e.value.body["code"] == "upload_expired"


def test_another_projects_upload_is_404(client: openai.OpenAI, deployment) -> None:  # noqa: ANN001
    up = client.uploads.create(bytes=3, filename="g.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    p = client.uploads.parts.create(up.id, data=b"abc")
    other = openai.OpenAI(base_url=deployment.base_url, api_key=deployment.other_key, max_retries=0, timeout=60)
    for call in (lambda: other.uploads.parts.create(up.id, data=b"abc"),
                 lambda: other.uploads.complete(up.id, part_ids=[p.id]),
                 lambda: other.uploads.cancel(up.id)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["param"] == "upload_id"
    done = client.uploads.complete(up.id, part_ids=[p.id])  # untouched by the other project
    assert done.status == "completed" and len(parts_left(deployment, up.id)) == 0


async def test_async_sdk_upload_file_chunked(deployment) -> None:  # noqa: ANN001
    client = openai.AsyncOpenAI(base_url=deployment.base_url, api_key=deployment.key, max_retries=0, timeout=120)
    data = jsonl([sft_row(i) for i in range(50)])
    up = await client.uploads.upload_file_chunked(file=data, filename="async.jsonl", bytes=len(data),
                                                  mime_type="application/jsonl", purpose="fine-tune", part_size=500)
    assert up.status == "completed"
    f = await client.files.wait_for_processing(up.file.id, poll_interval=0.1, max_wait_seconds=60)
    assert f.status == "processed" and (await client.files.content(f.id)).content == data
    await client.close()


def test_openapi_lists_the_upload_operations(deployment) -> None:  # noqa: ANN001
    doc = httpx.get(deployment.server.url + "/openapi.json", timeout=30).json()
    for path in ("/v1/uploads", "/v1/uploads/{upload_id}/parts", "/v1/uploads/{upload_id}/complete",
                 "/v1/uploads/{upload_id}/cancel"):
        assert "post" in doc["paths"][path], path
    parts = doc["paths"]["/v1/uploads/{upload_id}/parts"]["post"]
    assert "data" in parts["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"400", "404", "413"} <= set(parts["responses"])
    assert "403" in doc["paths"]["/v1/models/{model}"]["delete"]["responses"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_storage_concat_streams_sources_in_order(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:  # noqa: ANN001
    """`Storage.concat` joins objects in the order given, across S3 multipart parts (20 MiB: three of 8 MiB),
    and leaves nothing at the key when it fails halfway."""
    import os

    from api.storage import LocalStorage, S3Storage
    from tests.conftest import make_bucket

    if kind == "local":
        storage = LocalStorage(tmp_path / "store")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        storage = S3Storage(f"s3://{make_bucket(endpoint)}/p", endpoint)
    blobs = [os.urandom(n) for n in (9 * 1024**2 + 1, 3, 11 * 1024**2)]
    for i, blob in enumerate(blobs):
        (tmp_path / f"b{i}").write_bytes(blob)
        storage.put_file(f"uploads/u/{i}", tmp_path / f"b{i}")
    seen = hashlib.sha256()
    storage.concat("files/joined", ["uploads/u/2", "uploads/u/0", "uploads/u/1"], seen.update)
    joined = blobs[2] + blobs[0] + blobs[1]
    assert b"".join(storage.iter_bytes("files/joined")) == joined
    assert seen.hexdigest() == hashlib.sha256(joined).hexdigest()

    def boom(chunk: bytes) -> None:
        if len(chunk) and boom.n > 12 * 1024**2:
            raise RuntimeError("halfway")
        boom.n += len(chunk)

    boom.n = 0
    with pytest.raises(RuntimeError, match="halfway"):
        storage.concat("files/broken", ["uploads/u/2", "uploads/u/0"], boom)
    assert not storage.exists("files/broken")
    if kind == "s3":  # the multipart upload was aborted, not left to accumulate
        assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []
