"""Storage backends (local folder, real S3 endpoint) and migrations on an existing database."""

from __future__ import annotations

import os

import pytest

from api.storage import LocalStorage, S3Storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):  # noqa: ANN001, ANN201
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    from tests.conftest import make_bucket

    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(f"s3://{make_bucket(endpoint)}/some/prefix", endpoint)


def test_put_stream_download_delete(storage, tmp_path) -> None:  # noqa: ANN001
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one chunk
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    storage.put_file("files/p1/file-1", src)
    assert not src.exists()  # consumed
    assert storage.exists("files/p1/file-1") and not storage.exists("files/p1/file-2")
    chunks = list(storage.iter_bytes("files/p1/file-1"))
    assert len(chunks) > 1 and b"".join(chunks) == data
    storage.download("files/p1/file-1", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    storage.delete("files/p1/file-1")
    assert not storage.exists("files/p1/file-1")


def test_a_stream_is_opened_by_the_call_and_outlives_a_delete(storage, tmp_path) -> None:  # noqa: ANN001
    """A missing object fails at iter_bytes, before a response could start (the content route answers 404, not a
    broken chunked body); an object deleted after the call still streams whole (a concurrent DELETE)."""
    with pytest.raises(FileNotFoundError):
        storage.iter_bytes("files/p1/absent")
    data = os.urandom(2 * 1024 * 1024 + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    storage.put_file("files/p1/file-1", src)
    chunks = storage.iter_bytes("files/p1/file-1")
    storage.delete("files/p1/file-1")
    assert b"".join(chunks) == data


def test_local_storage_refuses_keys_outside_its_root(tmp_path) -> None:  # noqa: ANN001
    s = LocalStorage(tmp_path / "store")
    with pytest.raises(ValueError, match="escapes"):
        s.exists("../../etc/passwd")


def test_migrate_is_idempotent_and_keeps_data(tmp_path, pg_database) -> None:  # noqa: ANN001
    from sqlmodel import select

    from api.auth import add_key, get_or_create_project, project_for_key
    from api.db import migrate, session_scope
    from api.settings import Settings
    from api.tables import Project

    for url in (None, pg_database()):
        settings = Settings(home=tmp_path / ("h" + str(bool(url))), database_url=url)
        migrate(settings)
        with session_scope(settings) as s:
            key = add_key(s, get_or_create_project(s, "keep"))
        migrate(settings)  # an upgrade of the service runs this again on start
        with session_scope(settings) as s:
            assert project_for_key(s, key).name == "keep"
            assert len(s.exec(select(Project)).all()) == 1


def test_upgrade_from_the_first_schema_keeps_rows(tmp_path, pg_database) -> None:  # noqa: ANN001
    """A database made by the first release (revision 0001) upgrades to the newest schema with its rows."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    import api.db
    from api.db import get_engine, migrate
    from api.settings import Settings

    for url in (None, pg_database()):
        settings = Settings(home=tmp_path / ("u" + str(bool(url))), database_url=url)
        engine = get_engine(settings)
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(api.db.__file__).parent / "migrations"))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
            conn.execute(text("INSERT INTO project (id, name, created_at) VALUES ('proj_old', 'old', 1)"))
            conn.execute(
                text(
                    "INSERT INTO job (id, project_id, created_at, model, training_file, status, method, "
                    "hyperparameters, seed, result_files) VALUES ('ftjob-old', 'proj_old', 1, 'm', 'file-1', "
                    "'queued', '{\"type\": \"supervised\"}', '{}', 3, '[]')"
                )
            )
        migrate(settings)
        with engine.begin() as conn:
            head = ScriptDirectory.from_config(cfg).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
            row = conn.execute(text("SELECT id, status, seed, progress, output_key FROM job")).one()
        assert tuple(row) == ("ftjob-old", "queued", 3, None, None)


def test_content_of_a_file_whose_blob_went_is_a_404_not_a_broken_body(deployment) -> None:  # noqa: ANN001
    """A DELETE that lands between the content route's row lookup and its read removes the blob first: the read
    answers the OpenAI-shaped 404 a deleted file gets, not a 200 whose chunked body breaks off (found by
    schemathesis with 2 workers)."""
    from sqlmodel import select

    from api.db import session_scope
    from api.storage import storage_for
    from api.tables import File
    from tests.conftest import make_settings
    from tests.helpers import assert_openai_error

    settings = make_settings(deployment.env, deployment.server.home)
    with deployment.http() as h:
        file_id = h.post("/files", files={"file": ("a.txt", b"hello")}, data={"purpose": "assistants"}).json()["id"]
        with session_scope(settings) as s:
            key = s.exec(select(File).where(File.id == file_id)).one().storage_key
        storage_for(settings.storage_url, settings.s3_endpoint_url).delete(key)
        r = h.get(f"/files/{file_id}/content")
    assert assert_openai_error(r, 404, contains="No file found")["code"] == "file_not_found"
