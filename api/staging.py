"""Staging a job's inputs on the worker's disk: dataset files with their images decoded once into the job
folder, and the model to start from as a local HF folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from api import hub, models_registry
from api.settings import Settings
from api.storage import Storage, get_tree
from api.tables import Checkpoint, File, Job
from api.validation import DatasetLimits, LineTooLong, iter_lines
from media import AddressPolicy, FetchError, ImageRejected, decode_data_url, fetch, inspect_image


class StagingError(Exception):
    """Something a user can fix: the message says what."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Stager:
    """Stages a job's dataset files: every image, a data URL or an http(s) URL, is checked (bytes, pixels)
    and written once into `images/` by the hash of its bytes, and the row then points at it as a `file://`
    path. URLs are downloaded under the address policy (media.fetch), each within `image_timeout_s`, all
    within the job's `deadline`. `heartbeat` is called between rows, between images and every second of a
    download: it renews the job's lease and raises to stop staging (a cancel, a pause, a worker shutdown)."""

    storage: Storage
    limits: DatasetLimits
    policy: AddressPolicy
    image_timeout_s: float
    deadline: float
    """time.monotonic() past which staging fails"""
    heartbeat: Callable[[], None] = lambda: None

    @classmethod
    def of(cls, settings: Settings, storage: Storage, heartbeat: Callable[[], None]) -> Stager:
        return cls(storage, DatasetLimits.of(settings), AddressPolicy(tuple(settings.image_url_allowlist)),
                   settings.image_fetch_timeout_seconds, time.monotonic() + settings.staging_timeout_seconds, heartbeat)

    def stage(self, f: File, dest: Path) -> Path:
        """Write the file's rows to `dest` with every image as a `file://` path in `dest.parent/images/`.
        Done once: a staged file is reused when the job restarts."""
        if dest.exists():
            return dest
        images = dest.parent / "images"
        images.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        urls = lineno = 0
        with open(tmp, "w") as out:
            try:
                for lineno, raw in enumerate(iter_lines(self.storage.iter_bytes(f.storage_key),
                                                        max_line_bytes=self.limits.max_line_bytes), start=1):
                    self.heartbeat()
                    if not raw.strip():
                        continue
                    row = json.loads(raw)
                    for where, part in image_parts(row):
                        url = part["image_url"]["url"]
                        urls += url.startswith(("http://", "https://"))
                        if urls > self.limits.max_image_urls:
                            raise StagingError("invalid_training_file", f"{f.id} has more than the "
                                               f"{self.limits.max_image_urls} image URLs allowed in one file")
                        try:
                            part["image_url"]["url"] = self._save_image(url, images)
                        except FetchError as e:
                            raise StagingError(e.code, f"{f.id} line {lineno}: {where}: {e.message}") from None
                        except ImageRejected as e:
                            raise StagingError("invalid_image", f"{f.id} line {lineno}: {where}: {e}") from None
                        self.heartbeat()
                    out.write(json.dumps(row) + "\n")
            except LineTooLong as e:
                raise StagingError("invalid_training_file", f"{f.id} line {lineno + 1}: {e}") from None
        os.replace(tmp, dest)
        return dest

    def _save_image(self, url: str, images_dir: Path) -> str:
        raw = decode_data_url(url)
        if raw is None:
            if not url.startswith(("http://", "https://")):
                raise ImageRejected("an image must be a base64 data URL or an http(s) URL")
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise StagingError("staging_timeout", "downloading the job's images took longer than the "
                                   "staging time allowed (VRFT_STAGING_TIMEOUT_SECONDS)")
            raw = fetch(url, policy=self.policy, max_bytes=self.limits.max_image_bytes,
                        timeout_s=min(self.image_timeout_s, left), tick=self.heartbeat)
        if len(raw) > self.limits.max_image_bytes:
            raise ImageRejected(f"the image is larger than the {self.limits.max_image_bytes} bytes allowed")
        info = inspect_image(raw, max_pixels=self.limits.max_image_pixels)
        path = images_dir / (hashlib.sha256(raw).hexdigest()[:24] + "." + info.extension)
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(raw)
            os.replace(tmp, path)
        return path.resolve().as_uri()


def image_parts(row: dict) -> Iterator[tuple[str, dict]]:
    """(`messages[i].content[j].image_url.url`, the part) for each image part of a validated row (a preference
    row: of `input.messages`)."""
    messages, where = row.get("messages"), "messages"
    if messages is None and isinstance(row.get("input"), dict):
        messages, where = row["input"].get("messages"), "input.messages"
    for i, msg in enumerate(messages or []):
        content = msg.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    yield f"{where}[{i}].content[{j}].image_url.url", part


def local_model_path(session: Session, settings: Settings, storage: Storage, project_id: str, model_id: str) -> Path:
    """A local HF folder for `model_id`: a base model's own folder, a Hugging Face id's snapshot in the hub
    cache (a configured id is downloaded on first use), or a fine-tuned model or checkpoint of the project
    downloaded once from storage into the cache."""
    base = models_registry.base_models(settings).get(model_id)
    if base is not None:
        return base.path
    if hub.parse(model_id) is not None:
        try:
            folder = hub.local_folder(settings, model_id)
        except hub.HubUnavailable as e:
            raise StagingError("model_not_found", str(e)) from None
        if folder is None:
            raise StagingError("model_not_found", f"model {model_id!r} is not in the hub cache; list it in "
                                                  "VRFT_BASE_MODELS to have it downloaded on first use")
        return folder
    prefix: str | None = None
    job = session.exec(select(Job).where(Job.fine_tuned_model == model_id, Job.status == "succeeded")).first()
    if job is not None and job.output_key:
        prefix = job.output_key
    else:
        ckpt = session.exec(select(Checkpoint).where(Checkpoint.fine_tuned_model_checkpoint == model_id)).first()
        if ckpt is not None and ckpt.storage_key:
            prefix = ckpt.storage_key
    if prefix is None:
        raise StagingError("model_not_found", f"model {model_id!r} has no stored weights")
    dest = settings.cache_dir / "models" / re.sub(r"[^A-Za-z0-9._-]", "_", model_id)
    if not (dest / "config.json").exists():
        get_tree(storage, prefix, dest)
    return dest
