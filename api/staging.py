"""Staging a job's inputs on the worker's disk: dataset files with their images decoded once into the job
folder, and the model to start from as a local HF folder."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import httpx
from sqlmodel import Session, select

from api import models_registry
from api.settings import Settings
from api.storage import Storage, get_tree
from api.tables import Checkpoint, File, Job
from api.validation import iter_lines

_DATA_URL = re.compile(r"^data:image/([A-Za-z0-9.+-]+)?(?:;[^,]*)?;base64,", re.ASCII)


class StagingError(Exception):
    """Something a user can fix: the message says what."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _save_image(url: str, images_dir: Path, max_bytes: int) -> str:
    m = _DATA_URL.match(url)
    if m:
        raw = base64.b64decode(url[m.end():])
        ext = (m.group(1) or "png").replace("jpeg", "jpg").split("+")[0]
    elif url.startswith(("http://", "https://")):
        try:
            with httpx.stream("GET", url, timeout=30, follow_redirects=True) as r:
                r.raise_for_status()
                raw = b""
                for chunk in r.iter_bytes():
                    raw += chunk
                    if len(raw) > max_bytes:
                        raise StagingError("invalid_image", f"image {url} is larger than {max_bytes} bytes")
        except httpx.HTTPError as e:
            raise StagingError("image_unreachable", f"could not download image {url}: {e}") from None
        ext = Path(url.split("?")[0]).suffix.lstrip(".") or "img"
    else:
        return url
    name = hashlib.sha256(raw).hexdigest()[:24] + "." + ext
    path = images_dir / name
    if not path.exists():
        tmp = path.with_suffix(".part")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    return path.resolve().as_uri()


def stage_dataset(storage: Storage, f: File, dest: Path, *, max_image_bytes: int) -> Path:
    """Write the file's rows to `dest` with every image as a `file://` path in `dest.parent/images/`.
    Done once: a staged file is reused when the job restarts."""
    if dest.exists():
        return dest
    images = dest.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with open(tmp, "w") as out:
        for raw in iter_lines(storage.iter_bytes(f.storage_key)):
            if not raw.strip():
                continue
            row = json.loads(raw)
            for msg in row.get("messages", []):
                content = msg.get("content")
                if isinstance(content, list):
                    for part in content:
                        if isinstance(part, dict) and part.get("type") == "image_url":
                            part["image_url"]["url"] = _save_image(part["image_url"]["url"], images, max_image_bytes)
            out.write(json.dumps(row) + "\n")
    os.replace(tmp, dest)
    return dest


def local_model_path(session: Session, settings: Settings, storage: Storage, project_id: str, model_id: str) -> Path:
    """A local HF folder for `model_id`: a base model's own folder, or a fine-tuned model or checkpoint of
    the project downloaded once from storage into the cache."""
    base = models_registry.base_models(settings).get(model_id)
    if base is not None:
        return base.path
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
