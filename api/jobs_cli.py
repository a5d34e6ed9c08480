"""`vrft jobs ...`: follow fine-tuning jobs on a running server, over its HTTP API as the SDK does.

    vrft jobs list                      the project's jobs, newest first
    vrft jobs watch ftjob-...           a progress bar, the latest metrics and the events as they come; exits
                                        when the job ends (0 if it succeeded, 1 otherwise)
    vrft jobs rollouts ftjob-... --step 3   the step's rollout records as a table

The server and the key come as the SDK's do: `--base-url` / OPENAI_BASE_URL (default http://HOST:PORT/v1 of
`vrft serve`) and `--api-key` / OPENAI_API_KEY (default VRFT_API_KEY, then the key `vrft serve` saved in
VRFT_HOME/api_key). Only the key's project is visible.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import typer

TERMINAL = ("succeeded", "failed", "cancelled")

jobs = typer.Typer(help="Follow fine-tuning jobs on a running server (OPENAI_BASE_URL, OPENAI_API_KEY).",
                   no_args_is_help=True)

BaseUrl = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", show_envvar=True,
                       help="the API's base URL (default: http://HOST:PORT/v1 of `vrft serve`)")
ApiKey = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
                      help="an API key (default: VRFT_API_KEY, else VRFT_HOME/api_key)")


class Api:
    """The server's /v1, with the caller's key; an error answer or an unreachable server ends the command."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float = 30):
        key = api_key
        if not (base_url and key):  # the local `vrft serve`'s address and key
            from api.settings import get_settings

            settings = get_settings()
            base_url = base_url or f"http://{settings.host}:{settings.port}/v1"
            key = key or (settings.api_key.get_secret_value() if settings.api_key else None)
            if not key and (settings.home / "api_key").is_file():
                key = (settings.home / "api_key").read_text().strip()
        self.base_url = base_url.rstrip("/")
        if not key:
            _fail("no API key: pass --api-key or set OPENAI_API_KEY")
        self.http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def get(self, path: str, **params: Any) -> dict:
        try:
            r = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as e:
            _fail(f"cannot reach {self.base_url}: {e}")
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                _fail(f"{err['message']}" + (f" (param: {err['param']})" if err.get("param") else ""))
            except (ValueError, KeyError, TypeError):
                _fail(f"{r.status_code} from {self.base_url}{path}")
        return r.json()

    def pages(self, path: str, limit: int | None = None, **params: Any) -> Iterator[dict]:
        """The objects of a list, page after page (`after` the last id), at most `limit` of them."""
        after, n = None, 0
        while True:
            page = self.get(path, after=after, limit=min(100, limit - n) if limit else 100, **params)
            for obj in page["data"]:
                yield obj
                n += 1
            if not page["has_more"] or not page["data"] or (limit and n >= limit):
                return
            after = page["data"][-1]["id"]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _when(t: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell."""
    cells = [header] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


# ------------------------------------------------------------------------------------------- list


@jobs.command("list")
def list_jobs(limit: int = typer.Option(20, help="at most this many, newest first"), base_url: str = BaseUrl,
              api_key: str = ApiKey) -> None:
    """The project's fine-tuning jobs: id, status, method, model, creation time, fine-tuned model."""
    api = Api(base_url, api_key)
    rows = [[j["id"], j["status"], (j.get("method") or {}).get("type"), j["model"], _when(j["created_at"]),
             j.get("fine_tuned_model")] for j in api.pages("/fine_tuning/jobs", limit=limit)]
    typer.echo(table(["ID", "STATUS", "METHOD", "MODEL", "CREATED (UTC)", "FINE-TUNED MODEL"], rows)
               if rows else "no jobs")


# ------------------------------------------------------------------------------------------- watch


def progress_bar(step: int, total: int | None, width: int = 30) -> str:
    """`[#########.....................]  3/10  30%`

    >>> progress_bar(3, 10, 10)
    '[###.......]  3/10  30%'
    """
    if not total:
        return f"step {step}"
    done = round(width * min(step, total) / total)
    return f"[{'#' * done}{'.' * (width - done)}]  {step}/{total}  {100 * step // total}%"


def metrics_line(data: dict) -> str:
    """The latest metrics of a metrics event, in one line (RFT rewards per grader and health signals; SFT loss)."""
    parts = []
    scores = data.get("scores") or {}
    for key, label in (("train_reward_mean", "train reward"), ("valid_reward_mean", "valid reward")):
        if scores.get(key) is not None:
            parts.append(f"{label} {scores[key]:.4f}")
    for g in scores.get("graders") or []:
        parts.append(f"{g['name']} {g.get('train_reward_mean', 0):.3f}")
    train = data.get("train") or {}
    for key, label, fmt in (("kl", "kl", ".4g"), ("clip_ratio", "clip", ".3f"),
                            ("frac_reward_zero_std", "zero-std groups", ".2f"),
                            ("completion_length_mean", "length", ".1f"), ("learning_rate", "lr", ".2e")):
        if train.get(key) is not None:
            parts.append(f"{label} {train[key]:{fmt}}")
    for key, label in (("train_loss", "train loss"), ("valid_loss", "valid loss"),
                       ("train_mean_token_accuracy", "accuracy")):
        if data.get(key) is not None:
            parts.append(f"{label} {data[key]:.4f}")
    return "  ".join(parts)


def _new_events(api: Api, job_id: str, seen: set[str]) -> list[dict]:
    """Events not printed yet, oldest first (the list is newest first: read until a printed one)."""
    fresh = []
    for e in api.pages(f"/fine_tuning/jobs/{job_id}/events"):
        if e["id"] in seen:
            break
        fresh.append(e)
    return fresh[::-1]


@jobs.command("watch")
def watch(job_id: str = typer.Argument(..., metavar="ID"),
          interval: float = typer.Option(2.0, help="seconds between polls"),
          base_url: str = BaseUrl, api_key: str = ApiKey) -> None:
    """Follow a job: its events as they come, a progress bar and the latest metrics at each step. Exits when the
    job ends: 0 if it succeeded, 1 if it failed or was cancelled."""
    api = Api(base_url, api_key)
    seen: set[str] = set()
    job = api.get(f"/fine_tuning/jobs/{job_id}")
    typer.echo(f"{job['id']}  {job['model']}  {job['status']}")
    while True:
        for e in _new_events(api, job_id, seen):
            seen.add(e["id"])
            data = e.get("data") or {}
            if e.get("type") == "metrics" and "step" in data:
                typer.echo(f"{progress_bar(data['step'], data.get('total_steps'))}  {metrics_line(data)}")
            else:
                typer.echo(f"{_when(e['created_at'])}  {e['level']:<5}  {e['message']}")
        if job["status"] in TERMINAL:
            break
        time.sleep(interval)
        job = api.get(f"/fine_tuning/jobs/{job_id}")
    if job["status"] == "succeeded":
        typer.echo(f"succeeded: {job['fine_tuned_model']}")
        return
    error = job.get("error") or {}
    typer.echo(f"{job['status']}" + (f": {error.get('code')}: {error.get('message')}" if error else ""), err=True)
    raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- rollouts


def one_line(text: str, width: int) -> str:
    """The text on one line of at most `width` characters: line breaks shown as ⏎, other unprintable characters
    (tabs, a terminal's escape codes) as ·.

    >>> one_line("<answer>\\r\\n[1, 2]\\t\\x1b[0m</answer>", 30)
    '<answer>⏎[1, 2]··[0m</answer>'
    >>> one_line("abcdef", 4)
    'abc…'
    """
    flat = "⏎".join(text.splitlines())
    flat = "".join(c if c.isprintable() else "·" for c in flat)
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def _score(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@jobs.command("rollouts")
def rollouts(job_id: str = typer.Argument(..., metavar="ID"),
             step: int = typer.Option(None, help="only this step's records"),
             split: str = typer.Option(None, help="train or validation"),
             grader: str = typer.Option(None, help="--min-reward / --max-reward bound this grader's score"),
             min_reward: float = typer.Option(None), max_reward: float = typer.Option(None),
             limit: int = typer.Option(100, help="at most this many records"),
             width: int = typer.Option(60, help="characters of each completion shown"),
             base_url: str = BaseUrl, api_key: str = ApiKey) -> None:
    """A job's rollout records as a table: step, split, file line, group and sample, the reward and each grader's
    score, the advantage, tokens (+ when truncated), the grader's errors and the completion's text."""
    api = Api(base_url, api_key)
    records = list(api.pages(f"/fine_tuning/jobs/{job_id}/rollouts", limit=limit, step=step, split=split,
                             grader=grader, min_reward=min_reward, max_reward=max_reward))
    if not records:
        typer.echo("no rollout records" + (f" at step {step}" if step is not None else ""))
        return
    names = sorted({k for r in records for k in r["sub_rewards"]})
    rows = [[r["step"], r["split"], r.get("line"), r["group"], r["sample"], _score(r["reward"]),
             *[_score(r["sub_rewards"].get(n)) for n in names],
             "-" if r.get("advantage") is None else f"{r['advantage']:+.3f}",
             f"{r['completion_tokens']}{'+' if r['truncated'] else ''}", ",".join(r["errors"]) or "-",
             one_line(r["completion"], width)] for r in records]
    typer.echo(table(["STEP", "SPLIT", "LINE", "GROUP", "SAMPLE", "REWARD", *[n.upper() for n in names], "ADV",
                      "TOKENS", "ERRORS", "COMPLETION"], rows))
