"""Alembic environment: runs on the connection `api.db.migrate` hands over, or on VRFT_DATABASE_URL."""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import api.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def run() -> None:
    conn = context.config.attributes.get("connection")
    if conn is None:
        from api.settings import get_settings

        with create_engine(get_settings().sqlalchemy_url).begin() as c:
            context.configure(connection=c, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
