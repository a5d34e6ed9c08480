"""Models named by a Hugging Face Hub id (`org/name`, `org/name@revision`), resolved with `huggingface_hub` into
the service's hub cache (`Settings.hub_cache_dir`: `{home}/hub`, or `$HF_HOME/hub`).

- At job creation, `check_for_job` fetches the repo's config.json only (one HEAD and one small GET), checks that
  the trainer supports the model (`trainer.families.family_of`), and pins the commit the revision names then:
  the job trains exactly that commit whatever the branch does later.
- The worker downloads the whole snapshot at the pinned commit (`download`), reporting bytes done and total.
  huggingface_hub resumes a file whose connection dropped from the bytes it already has (a `Range` request);
  files already complete are never fetched again, so a worker that dies mid-download loses at most the file it
  was writing, and the worker that takes the job over goes on from there.
- Chat uses `local_folder`: a cached snapshot, or a download on first use for the ids configured in
  `VRFT_BASE_MODELS`.

All of huggingface_hub that the service uses is in this module.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.errors import APIError
from api.settings import Settings

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"
                    r"(?:@(?P<revision>[A-Za-z0-9._/-]+))?")
COMMIT = re.compile(r"[0-9a-f]{40}")
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) while a snapshot downloads."""


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str = "main"

    @property
    def id(self) -> str:
        return self.repo if self.revision == "main" else f"{self.repo}@{self.revision}"

    @property
    def org(self) -> str:
        return self.repo.split("/")[0]


class HubUnavailable(Exception):
    """The model cannot be had: not cached and downloads are off, gone from the hub, no access. The message
    says which and what to do."""


def parse(model_id: str) -> HubRef | None:
    """`org/name[@revision]` as a HubRef; None for anything else (a folder name, an `ft:` id)."""
    m = HUB_ID.fullmatch(model_id)
    if m is None or ".." in model_id:
        return None
    return HubRef(m["repo"], m["revision"] or "main")


def configured(settings: Settings) -> dict[str, HubRef]:
    """The hub ids of `VRFT_BASE_MODELS` (entries that are not existing folders), by id."""
    out: dict[str, HubRef] = {}
    for entry in settings.base_models:
        if (Path(entry).expanduser() / "config.json").is_file():
            continue
        ref = parse(entry)
        if ref is not None:
            out[ref.id] = ref
    return out


# ---------------------------------------------------------------- the cache


def _repo_dir(settings: Settings, repo: str) -> Path:
    return settings.hub_cache_dir / ("models--" + repo.replace("/", "--"))


def _manifest(settings: Settings, repo: str, sha: str) -> Path:
    """Written once every file of a snapshot is in the cache: the file names (outside the hub cache, which
    other Hugging Face tools may share)."""
    return settings.cache_dir / "hub-complete" / ("models--" + repo.replace("/", "--")) / sha


def cached_sha(settings: Settings, ref: HubRef) -> str | None:
    """The commit `ref.revision` named when it was last resolved here (a commit names itself)."""
    if COMMIT.fullmatch(ref.revision):
        return ref.revision
    try:
        return (_repo_dir(settings, ref.repo) / "refs" / ref.revision).read_text().strip() or None
    except OSError:
        return None


def cached_snapshot(settings: Settings, ref: HubRef, sha: str | None = None) -> Path | None:
    """The snapshot folder of `ref` (at `sha` if given) when every one of its files is in the cache."""
    sha = sha or cached_sha(settings, ref)
    if sha is None:
        return None
    folder = _repo_dir(settings, ref.repo) / "snapshots" / sha
    try:
        names = json.loads(_manifest(settings, ref.repo, sha).read_text())
    except (OSError, ValueError):
        return None
    return folder if all((folder / n).exists() for n in names) else None


def pinned_config(settings: Settings, pin: dict[str, Any]) -> dict | None:
    """The config.json of a job's pinned commit (`check_for_job` fetched it), None when it is gone."""
    path = _repo_dir(settings, pin["repo"]) / "snapshots" / pin["sha"] / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cached_ids(settings: Settings) -> dict[str, tuple[HubRef, int]]:
    """Every complete snapshot in the cache that a branch or tag names: id -> (ref, mtime)."""
    out: dict[str, tuple[HubRef, int]] = {}
    root = settings.hub_cache_dir
    if not root.is_dir():
        return out
    for repo_dir in sorted(root.glob("models--*--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        refs = repo_dir / "refs"
        for ref_file in sorted(p for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []:
            ref = HubRef(repo, str(ref_file.relative_to(refs)))
            if parse(ref.id) is not None and cached_snapshot(settings, ref) is not None:
                out[ref.id] = (ref, int(ref_file.stat().st_mtime))
    return out


# ---------------------------------------------------------------- the hub


def _kwargs(settings: Settings) -> dict[str, Any]:
    token = settings.hf_token.get_secret_value() if settings.hf_token is not None else ""
    return {"endpoint": settings.hf_endpoint.rstrip("/"), "token": token or False,  # False: no stored token
            "cache_dir": str(settings.hub_cache_dir)}


def _explain(ref: HubRef, e: Exception) -> str:
    """One sentence a user can act on, for an error of huggingface_hub."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError) or (isinstance(e, HfHubHTTPError) and e.response is not None
                                         and e.response.status_code in (401, 403)
                                         and not isinstance(e, RepositoryNotFoundError)):
        return (f"The Hugging Face repo '{ref.repo}' is gated: accept its terms on the hub and set HF_TOKEN on the "
                "server to a token with access to it.")
    if isinstance(e, RevisionNotFoundError):
        return f"The Hugging Face repo '{ref.repo}' has no revision '{ref.revision}'."
    if isinstance(e, RepositoryNotFoundError):
        return (f"The model '{ref.repo}' does not exist on the Hugging Face Hub (or is private: set HF_TOKEN on "
                "the server to a token with access to it).")
    if isinstance(e, RemoteEntryNotFoundError):
        return f"The Hugging Face repo '{ref.id}' holds no config.json: it is not a transformers model."
    if isinstance(e, LocalEntryNotFoundError):
        return f"The Hugging Face Hub could not be reached to resolve '{ref.id}'; try again later."
    return f"Could not resolve '{ref.id}' on the Hugging Face Hub: {type(e).__name__}."


def check_for_job(settings: Settings, model_id: str) -> dict[str, Any] | None:
    """Validate a job's `model` when it is a hub id, cheaply (config.json only); None when it is not one.
    Returns the pin stored with the job: {"repo", "revision", "sha"}. Raises a 400 naming `model` when the id
    does not exist, is gated without a token, is not cached while downloads are off, or holds no model the
    trainer supports."""
    ref = parse(model_id)
    if ref is None:
        return None
    if not settings.hub_downloads:
        folder = cached_snapshot(settings, ref)
        if folder is None:
            raise APIError(400, f"The model '{model_id}' is not in this server's hub cache, and downloads from the "
                                "Hugging Face Hub are turned off (VRFT_HUB_DOWNLOADS=false).", param="model",
                           code="model_not_found")
        config_path = folder / "config.json"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:  # a HEAD resolves the revision to its commit (X-Repo-Commit) and writes refs/<revision>
            config_path = Path(hf_hub_download(ref.repo, "config.json", revision=ref.revision, **_kwargs(settings)))
        except (HfHubHTTPError, LocalEntryNotFoundError) as e:
            raise APIError(400, _explain(ref, e), param="model", code="model_not_found") from None
        except ValueError as e:  # huggingface_hub's HFValidationError: not a repo id it accepts
            raise APIError(400, f"'{model_id}' is not a valid Hugging Face repo id: {e}", param="model",
                           code="model_not_found") from None
    sha = config_path.parent.name
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise APIError(400, f"The config.json of '{model_id}' is not valid JSON.", param="model",
                       code="unsupported_model") from None
    from trainer.families import UnsupportedModel, family_of

    try:
        family_of(config)
    except UnsupportedModel as e:
        raise APIError(400, f"The model '{model_id}' cannot be fine-tuned here: {e}", param="model",
                       code="unsupported_model") from None
    return {"repo": ref.repo, "revision": ref.revision, "sha": sha}


class _Counter:
    """A tqdm stand-in for huggingface_hub's per-file progress: adds each file's bytes to a shared tally."""

    tally: Callable[[int], None] = staticmethod(lambda n: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).tally(kwargs.get("initial") or 0)

    def __enter__(self) -> _Counter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int | float | None = 1) -> None:
        type(self).tally(int(n or 0))

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_postfix_str, refresh, ...
        return lambda *a, **k: None


_locks: dict[tuple[str, str], threading.Lock] = {}


def download(settings: Settings, ref: HubRef, sha: str | None = None, on_progress: Progress | None = None) -> Path:
    """The snapshot folder of `ref` at commit `sha` (default: what `ref.revision` names on the hub now, or in
    the cache when downloads are off), downloading what the cache lacks, file by file. `on_progress` gets
    (bytes done, bytes in all) after every chunk; it may raise to stop the download (the file being written
    is then dropped, the finished ones stay). Raises HubUnavailable."""
    if sha is not None and (folder := cached_snapshot(settings, ref, sha)) is not None:
        return folder
    if not settings.hub_downloads:
        folder = cached_snapshot(settings, ref, sha)
        if folder is None:
            raise HubUnavailable(f"'{ref.id}' is not in the hub cache and downloads from the Hugging Face Hub are "
                                 "turned off (VRFT_HUB_DOWNLOADS=false)")
        return folder
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kw = _kwargs(settings)
    try:
        info = HfApi(endpoint=kw["endpoint"], token=kw["token"]).model_info(
            ref.repo, revision=sha or ref.revision, files_metadata=True)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, httpx2.HTTPError) as e:
        if sha is None and (folder := cached_snapshot(settings, ref)) is not None:
            return folder  # the hub is away but the cache has it
        raise HubUnavailable(_explain(ref, e)) from None
    sha = sha or info.sha
    files = [(s.rfilename, s.size or 0) for s in info.siblings or []]
    total = sum(size for _, size in files)
    with _locks.setdefault((ref.repo, sha), threading.Lock()):
        done = 0
        folder = _repo_dir(settings, ref.repo) / "snapshots" / sha

        class Counter(_Counter):
            @staticmethod
            def tally(n: int) -> None:
                nonlocal done
                done += n
                if on_progress is not None:
                    on_progress(done, total)

        if on_progress is not None:
            on_progress(0, total)
        for name, size in files:
            if (folder / name).exists():
                done += size
                continue
            try:
                hf_hub_download(ref.repo, name, revision=sha, tqdm_class=Counter, **kw)
            except (HfHubHTTPError, LocalEntryNotFoundError) as e:
                raise HubUnavailable(_explain(ref, e)) from None
            except (OSError, httpx2.HTTPError) as e:  # the connection kept dropping (after resumes), the disk
                raise HubUnavailable(f"downloading {name} of '{ref.id}' failed: {type(e).__name__}: {e}") from None
        if ref.revision != sha and not COMMIT.fullmatch(ref.revision):
            refs = _repo_dir(settings, ref.repo) / "refs" / ref.revision
            if not refs.exists():  # a snapshot at the revision's commit: the cache may name it by the revision
                refs.parent.mkdir(parents=True, exist_ok=True)
                refs.write_text(sha)
        manifest = _manifest(settings, ref.repo, sha)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps([name for name, _ in files]))
        if on_progress is not None:
            on_progress(total, total)
    return folder


def local_folder(settings: Settings, model_id: str) -> Path | None:
    """For serving: the snapshot folder of a hub id that is cached, or configured (then downloaded on first
    use when downloads are on); None when the id is neither. Raises HubUnavailable."""
    ref = parse(model_id)
    if ref is None:
        return None
    folder = cached_snapshot(settings, ref)
    if folder is not None:
        return folder
    if model_id in configured(settings):
        return download(settings, ref)
    return None


def human_bytes(n: float) -> str:
    """1.2 GiB, 340.0 MiB, 12.0 KiB, 5 B."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
