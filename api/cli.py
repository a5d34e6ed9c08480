"""The `vrft` command: serve the API (with an embedded worker), run a worker alone, manage keys."""

from __future__ import annotations

import logging

import typer

from api.settings import get_settings

app = typer.Typer(help="vrft: an OpenAI-compatible fine-tuning service for vision-language models.", no_args_is_help=True)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys, name="keys")
grader_cli = typer.Typer(help="The standalone grader service.", no_args_is_help=True)
app.add_typer(grader_cli, name="grader")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(host: str = typer.Option(None, help="default: HOST or 127.0.0.1"), port: int = typer.Option(None, help="default: PORT or 8000"),
          worker: bool | None = typer.Option(None, "--worker/--no-worker", help="run a job worker in the same process (default: VRFT_EMBEDDED_WORKER, true)")) -> None:
    """Start the API on the embedded defaults (SQLite and a local folder under VRFT_HOME)."""
    import uvicorn

    from api.main import create_app

    _logging()
    settings = get_settings()
    uvicorn.run(create_app(settings, embedded_worker=worker), host=host or settings.host, port=port or settings.port, log_level="info")


@app.command()
def worker() -> None:
    """Run a job worker alone (the API runs elsewhere and shares the database)."""
    import signal

    from api.db import migrate
    from api.worker import Worker

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
def grader_serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8100),
                 workers: int = typer.Option(None, help="python-sandbox workers per grader (default: CPU count)"),
                 token: str = typer.Option(None, help="bearer token to require (default: VRFT_GRADER_SERVICE_TOKEN)")) -> None:
    """Serve graders over HTTP (batch scoring), so rewards can be computed apart from the trainers."""
    from grader.service import serve as run

    _logging()
    run(host, port, token=token, workers=workers)


@keys.command("create")
def keys_create(project: str = typer.Option(..., help="project name (created if new)")) -> None:
    """Create an API key for PROJECT and print it (it is shown only once)."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate as run, session_scope

    settings = get_settings()
    run(settings)
    with session_scope(settings) as s:
        try:
            proj = get_or_create_project(s, project)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--project") from None
        key = add_key(s, proj)
        typer.echo(f"project {proj.name} ({proj.id})")
    typer.echo(key)


if __name__ == "__main__":
    app()
