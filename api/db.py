"""Database engine, sessions and schema migrations (Alembic, run at start)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, make_url, text
from sqlmodel import Session, create_engine

from api.settings import Settings


@lru_cache
def engine_for(url: str) -> Engine:
    """One engine per URL per process. SQLite gets WAL and a busy timeout so that the API, the
    embedded worker and the CLI can share the file."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            _private_sqlite_file(database)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _private_sqlite_file(path: str) -> None:
    """Create the SQLite file 0600, or tighten one made before the service's data was private (SQLite gives
    the -wal, -shm and -journal files it makes beside it the database file's mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        with suppress(FileNotFoundError):
            os.chmod(p, 0o600)


def private_home(settings: Settings) -> None:
    """Create VRFT_HOME 0700, or tighten one made before the service's data was private: it holds the
    database, the stored files and the staged job data (the umask of `vrft serve` and `vrft worker`, 077,
    keeps what is made inside it private)."""
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.home.chmod(0o700)


def get_engine(settings: Settings) -> Engine:
    if settings.sqlalchemy_url.startswith("sqlite"):
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return engine_for(settings.sqlalchemy_url)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(settings), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest revision. On PostgreSQL an advisory lock makes concurrent starts
    (several API processes and workers) take turns."""
    engine = get_engine(settings)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7263011)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
