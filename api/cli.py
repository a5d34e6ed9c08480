"""The `vrft` command: serve the API (with an embedded worker), run a worker alone, manage keys."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from sqlmodel import Session

from api.jobs_cli import jobs as jobs_cli
from api.settings import get_settings

app = typer.Typer(
    help="vrft: an OpenAI-compatible fine-tuning service for vision-language models.", no_args_is_help=True
)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys, name="keys")
grader_cli = typer.Typer(help="The standalone grader service.", no_args_is_help=True)
app.add_typer(grader_cli, name="grader")
app.add_typer(jobs_cli, name="jobs")  # list, watch, rollouts: over the HTTP API (api/jobs_cli.py)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _private_files() -> None:
    """Files and folders made from now on are the service user's alone (0600, 0700): the database, uploads,
    staged job data and checkpoints hold the users' data."""
    os.umask(0o077)


@app.command()
def serve(
    host: str = typer.Option(None, help="default: HOST or 127.0.0.1"),
    port: int = typer.Option(None, help="default: PORT or 8000"),
    worker: bool | None = typer.Option(
        None, "--worker/--no-worker", help="run a job worker in the same process (default: VRFT_EMBEDDED_WORKER, true)"
    ),
) -> None:
    """Start the API on the embedded defaults (SQLite and a local folder under VRFT_HOME)."""
    import uvicorn

    from api.main import create_app

    _private_files()
    _logging()
    # the app learns where it listens (model graders call its own /v1 there, never at a request's Host)
    settings = get_settings()
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    uvicorn.run(create_app(settings, embedded_worker=worker), host=settings.host, port=settings.port, log_level="info")


@app.command()
def worker() -> None:
    """Run a job worker alone (the API runs elsewhere and shares the database)."""
    import signal

    from api.db import migrate
    from api.worker import Worker

    _private_files()
    _logging()
    settings = get_settings()
    migrate(settings)
    w = Worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    try:
        w.run()
    except KeyboardInterrupt:
        w.stop()


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    from api.db import migrate as run

    run(get_settings())
    typer.echo("database is up to date")


@grader_cli.command("serve")
def grader_serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8100),
    workers: int = typer.Option(None, help="python-sandbox workers per grader (default: CPU count)"),
    token: str = typer.Option(None, help="bearer token to require (default: VRFT_GRADER_SERVICE_TOKEN)"),
) -> None:
    """Serve graders over HTTP (batch scoring), so rewards can be computed apart from the trainers."""
    from grader.service import serve as run

    _private_files()
    _logging()
    try:
        run(host, port, token=token, workers=workers)
    except ValueError as e:  # no token on an address beyond loopback
        raise typer.BadParameter(str(e), param_hint="--token") from None


@contextmanager
def _database(param_hint: str) -> Iterator[Session]:
    """A session for a command that manages keys, on a schema brought up to date; a ValueError raised inside
    is a usage error of the parameter `param_hint`."""
    from api.db import migrate, session_scope

    settings = get_settings()
    migrate(settings)
    with session_scope(settings) as s:
        try:
            yield s
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint=param_hint) from None


@keys.command("create")
def keys_create(project: str = typer.Option(..., help="project name (created if new)")) -> None:
    """Create an API key for PROJECT and print it (it is shown only once)."""
    from api.auth import add_key, get_or_create_project

    with _database("--project") as s:
        proj = get_or_create_project(s, project)
        key = add_key(s, proj)
        typer.echo(f"project {proj.name} ({proj.id})")
    typer.echo(key)


@keys.command("list")
def keys_list(project: str = typer.Option(None, help="only this project's keys")) -> None:
    """List the API keys of each project: key id, prefix, creation time, status. Only a hash of a key is
    stored, so a whole key is never shown again."""
    import time

    from api.auth import list_keys

    with _database("--project") as s:
        rows = list_keys(s, project)
    shown = None
    for proj, key in rows:
        if proj.id != shown:
            typer.echo(f"project {proj.name} ({proj.id})")
            shown = proj.id
        created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(key.created_at))
        typer.echo(f"  {key.id}  {key.prefix:<12}  {created}  {'revoked' if key.revoked else 'active'}")


@keys.command("revoke")
def keys_revoke(
    key: str = typer.Argument(..., metavar="KEY_ID_OR_PREFIX", help="as `vrft keys list` shows it"),
) -> None:
    """Revoke a key: requests made with it get a 401 from then on (chat requests once the server's access
    cache, `VRFT_SERVING_ACCESS_CACHE_SECONDS`, has expired)."""
    from api.auth import revoke_key

    with _database("KEY_ID_OR_PREFIX") as s:
        proj, row = revoke_key(s, key)
        typer.echo(f"revoked {row.id} ({row.prefix}) of project {proj.name}")


if __name__ == "__main__":
    app()
