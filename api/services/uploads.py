"""Uploads: a large file sent in parts (OpenAI's /v1/uploads), completed into a File.

Each part streams to a temporary file (api.services.files `receive_multipart`, never whole in memory) and then to
storage as its own object, `uploads/{project}/{upload}/{part}`. Completion names the parts in order; their
objects are streamed one after the other into the File's object (`Storage.concat`: a rename-free copy on a
local folder, one S3 multipart upload on S3), hashed on the way (sha256 for the File, md5 for the caller's
check), and the File is recorded and validated exactly as one sent to /v1/files. The parts are deleted when the
upload completes, is cancelled or expires; a completion that fails leaves no File and no assembled object, and
the upload pending (the caller may complete again with the right parts, or cancel).

Races are settled by compare-and-set updates on the upload row (`status`, `received_bytes`): a part that
arrives as its upload is cancelled, completed or expired is refused and its object deleted, and two
completions cannot both assemble.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from sqlalchemy import update
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from api.db import session_scope
from api.errors import APIError, not_found, shown
from api.ids import new_id, now
from api.schemas import (
    UPLOAD_EXPIRES_SECONDS,
    UPLOAD_MAX_BYTES,
    UploadComplete,
    UploadCreate,
    UploadObject,
    UploadPartObject,
)
from api.services import files as file_svc
from api.settings import Settings
from api.storage import Storage
from api.tables import File, Project, Upload, UploadPart

log = logging.getLogger("vrft.uploads")

_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(\s*;.*)?")
JSONL_MIME_TYPES = ("application/jsonl", "application/x-jsonl", "application/jsonlines", "application/x-jsonlines",
                    "application/x-ndjson", "application/json", "text/jsonl", "text/plain")
"""MIME types a `fine-tune` upload may declare (its bytes are validated as JSONL either way)."""
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def to_wire(u: Upload, file: File | None = None) -> UploadObject:
    return UploadObject(
        id=u.id, bytes=u.bytes, created_at=u.created_at, expires_at=u.expires_at, filename=u.filename,
        purpose=u.purpose, status="pending" if u.status == "completing" else u.status,
        file=file_svc.to_wire(file) if file is not None else None,
    )


def part_to_wire(p: UploadPart) -> UploadPartObject:
    return UploadPartObject(id=p.id, created_at=p.created_at, upload_id=p.upload_id)


def get_upload(session: Session, project: Project, upload_id: str) -> Upload:
    u = session.exec(select(Upload).where(Upload.id == upload_id, Upload.project_id == project.id)).first()
    if u is None:
        raise not_found("upload", upload_id, "upload_id")
    return u


def upload_file(session: Session, u: Upload) -> File | None:
    return session.exec(select(File).where(File.id == u.file_id)).first() if u.status == "completed" else None


def create_upload(session: Session, project: Project, *, body: UploadCreate) -> Upload:
    purpose = file_svc.check_purpose(body.purpose)
    file_svc.check_not_empty(purpose, body.bytes, "bytes")
    mime = body.mime_type.strip()
    if not _MIME.fullmatch(mime):
        raise APIError(400, f"Invalid value for 'mime_type': {shown(body.mime_type)} is not a MIME type "
                            "(type/subtype).", param="mime_type", code="invalid_value")
    if purpose == "fine-tune" and mime.split(";")[0].strip().lower() not in JSONL_MIME_TYPES:
        raise APIError(400, f"Invalid value for 'mime_type': {shown(mime)} is not supported for purpose "
                            f"'fine-tune'. Supported: {', '.join(JSONL_MIME_TYPES)}.", param="mime_type",
                       code="invalid_value")
    created = now()
    u = Upload(
        id=new_id("upload_"), project_id=project.id, filename=file_svc.clean_filename(body.filename),
        purpose=purpose, bytes=body.bytes, mime_type=mime, created_at=created,
        expires_at=created + UPLOAD_EXPIRES_SECONDS, status="pending",
        file_expires_after=body.expires_after.seconds if body.expires_after else None,
    )
    session.add(u)
    session.commit()
    return u


def _refuse_unless_pending(session: Session, storage: Storage, u: Upload) -> None:
    """A 400 naming `upload_id` unless parts may still be added and the upload completed; an upload found past
    its expiry is expired here, its parts deleted."""
    if u.status == "pending" and now() >= u.expires_at:
        expire(session, storage, u)
    if u.status == "expired":
        raise APIError(400, f"The upload {u.id} expired at {u.expires_at} (uploads expire an hour after they are "
                            "created); its parts were deleted. Create a new upload.", param="upload_id",
                       code="upload_expired")
    if u.status == "cancelled":
        raise APIError(400, f"The upload {u.id} was cancelled; its parts were deleted.", param="upload_id",
                       code="upload_cancelled")
    if u.status == "completed":
        raise APIError(400, f"The upload {u.id} is already completed (file {u.file_id}).", param="upload_id",
                       code="upload_completed")
    if u.status == "completing":
        raise APIError(400, f"The upload {u.id} is being completed.", param="upload_id", code="upload_completing")


# ---------------------------------------------------------------- parts


def check_open(settings: Settings, storage: Storage, project: Project, upload_id: str) -> None:
    """Before a part's body is read: a 404 or 400 now rather than after 64 MB."""
    with session_scope(settings) as s:
        _refuse_unless_pending(s, storage, get_upload(s, project, upload_id))


def add_part(settings: Settings, storage: Storage, project: Project, upload_id: str,
             spool: file_svc._Upload) -> UploadPart:
    """Store a received part (`spool`, a temporary file that this consumes) and record it."""
    try:
        with session_scope(settings) as s:
            u = get_upload(s, project, upload_id)
            _refuse_unless_pending(s, storage, u)
        if spool.filename is None:
            raise APIError(400, "Missing required parameter: 'data'.", param="data", code="missing_required_parameter")
        if spool.size == 0:
            raise APIError(400, "The part is empty: 'data' needs at least one byte.", param="data")
        if u.received_bytes + spool.size > UPLOAD_MAX_BYTES:
            raise _over_total(u)
        part_id = new_id("part_")
        part = UploadPart(id=part_id, upload_id=u.id, created_at=now(), bytes=spool.size,
                          storage_key=f"uploads/{project.id}/{u.id}/{part_id}")
        storage.put_file(part.storage_key, spool.path)
    except BaseException:
        spool.discard()
        raise
    try:
        with session_scope(settings) as s:
            # compare-and-set: still pending, not expired, within the total (a cancel, a completion, an expiry
            # or a parallel part may have come in while this one was stored)
            res = s.execute(
                update(Upload)
                .where(Upload.id == u.id, Upload.status == "pending", Upload.expires_at > now(),
                       Upload.received_bytes + part.bytes <= UPLOAD_MAX_BYTES)
                .values(received_bytes=Upload.received_bytes + part.bytes)
            )
            if res.rowcount != 1:
                s.rollback()
                u = get_upload(s, project, upload_id)
                _refuse_unless_pending(s, storage, u)
                raise _over_total(u)
            s.add(part)
    except BaseException:
        storage.delete(part.storage_key)
        raise
    return part


def _over_total(u: Upload) -> APIError:
    return APIError(400, f"The part would take the upload past the {UPLOAD_MAX_BYTES} bytes an upload may hold "
                         f"({u.received_bytes} received so far).", param="data", code="upload_too_large")


# ---------------------------------------------------------------- completion


def complete(settings: Settings, storage: Storage, project: Project, upload_id: str,
             body: UploadComplete) -> tuple[Upload, File]:
    """Assemble the parts named in `body.part_ids`, in that order, into a File (submit it to the validator if
    it is `uploaded`). Every check that needs no bytes comes first; the md5 one after assembly."""
    if body.md5 is not None and not _MD5.fullmatch(body.md5):
        raise APIError(400, f"Invalid value for 'md5': {shown(body.md5)} is not an md5 checksum (32 hex "
                            "characters).", param="md5", code="invalid_value")
    with session_scope(settings) as s:
        u = get_upload(s, project, upload_id)
        _refuse_unless_pending(s, storage, u)
        parts = {p.id: p for p in s.exec(select(UploadPart).where(UploadPart.upload_id == u.id)).all()}
        ordered = _ordered_parts(u, parts, body.part_ids)
        file_id = new_id("file-")
        res = s.execute(update(Upload).where(Upload.id == u.id, Upload.status == "pending")
                        .values(status="completing", file_id=file_id))
        if res.rowcount != 1:
            s.rollback()
            _refuse_unless_pending(s, storage, get_upload(s, project, upload_id))
            raise APIError(400, f"The upload {u.id} changed state meanwhile; try again.", param="upload_id",
                           code="invalid_state")
    key = f"files/{project.id}/{file_id}"
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0

    def hashed(chunk: bytes) -> None:
        nonlocal size
        sha.update(chunk)
        md5.update(chunk)
        size += len(chunk)

    try:
        storage.concat(key, [p.storage_key for p in ordered], hashed)
        if size != u.bytes:  # the parts' objects disagree with their rows: never record such a file
            raise APIError(400, f"The parts hold {size} bytes, but the upload was created with bytes={u.bytes}.",
                           param="part_ids", code="size_mismatch")
        if body.md5 is not None and md5.hexdigest() != body.md5.lower():
            raise APIError(400, f"The md5 of the assembled file is {md5.hexdigest()}, not the {body.md5} given: "
                                "the parts, or their order, differ from the file. The upload stays pending.",
                           param="md5", code="md5_mismatch")
        with session_scope(settings) as s:
            created = now()
            expires = created + u.file_expires_after if u.file_expires_after else None
            f = file_svc.record_file(s, storage, project, file_id=file_id, filename=u.filename, purpose=u.purpose,
                                     size=size, created=created, expires_at=expires, key=key,
                                     sha256=sha.hexdigest())
            s.execute(update(Upload).where(Upload.id == u.id).values(status="completed"))
            u = get_upload(s, project, upload_id)
    except BaseException:
        storage.delete(key)
        with session_scope(settings) as s:
            s.execute(update(Upload).where(Upload.id == u.id, Upload.status == "completing")
                      .values(status="pending", file_id=None))
        raise
    with session_scope(settings) as s:
        _delete_parts(s, storage, u)
    return u, f


def _ordered_parts(u: Upload, parts: dict[str, UploadPart], part_ids: list[str]) -> list[UploadPart]:
    seen: dict[str, int] = {}
    for i, pid in enumerate(part_ids):
        if pid in seen:
            raise APIError(400, f"Part {shown(pid)} is named twice in 'part_ids' (at {seen[pid]} and {i}).",
                           param=f"part_ids[{i}]", code="duplicate_part")
        if pid not in parts:
            raise APIError(400, f"No part {shown(pid)} in upload {u.id}.", param=f"part_ids[{i}]",
                           code="part_not_found")
        seen[pid] = i
    if not part_ids and u.bytes > 0:
        raise APIError(400, "Missing parts: 'part_ids' is empty.", param="part_ids", code="invalid_value")
    total = sum(parts[pid].bytes for pid in part_ids)
    if total != u.bytes:
        raise APIError(400, f"The parts named add up to {total} bytes, but the upload was created with "
                            f"bytes={u.bytes}.", param="part_ids", code="size_mismatch")
    return [parts[pid] for pid in part_ids]


# ---------------------------------------------------------------- cancel and expiry


def cancel(session: Session, storage: Storage, project: Project, upload_id: str) -> Upload:
    u = get_upload(session, project, upload_id)
    _refuse_unless_pending(session, storage, u)
    _finish(session, storage, u, "cancelled")
    if u.status != "cancelled":  # completed, expired or completing meanwhile
        _refuse_unless_pending(session, storage, u)
    return u


def expire(session: Session, storage: Storage, u: Upload) -> None:
    _finish(session, storage, u, "expired")


def _finish(session: Session, storage: Storage, u: Upload, status: str) -> None:
    """Move a pending upload to `status` (compare-and-set) and delete its parts; `u` is refreshed."""
    res = session.execute(update(Upload).where(Upload.id == u.id, Upload.status == "pending").values(status=status))
    session.commit()
    session.refresh(u)
    if res.rowcount == 1:
        _delete_parts(session, storage, u)


def _delete_parts(session: Session, storage: Storage, u: Upload) -> None:
    for p in session.exec(select(UploadPart).where(UploadPart.upload_id == u.id)).all():
        storage.delete(p.storage_key)
        session.delete(p)
    session.commit()


async def sweep(settings: Settings, storage: Storage, interval: float = 60.0) -> None:
    """Expire due uploads every `interval` seconds (started with the app; api/main.py)."""
    while True:
        try:
            await run_in_threadpool(expire_due, settings, storage)
        except Exception:
            log.exception("expiring uploads")
        await asyncio.sleep(interval)


def expire_due(settings: Settings, storage: Storage) -> int:
    """Expire the pending uploads past their expiry, and the completions that a crash left half done (an hour
    past expiry: no completion takes that long), deleting what they stored. Returns how many."""
    t = now()
    n = 0
    with session_scope(settings) as s:
        for u in s.exec(select(Upload).where(Upload.status == "pending", Upload.expires_at <= t)).all():
            expire(s, storage, u)
            n += u.status == "expired"
        stale = s.exec(select(Upload).where(Upload.status == "completing",
                                            Upload.expires_at + UPLOAD_EXPIRES_SECONDS <= t)).all()
        for u in stale:
            if u.file_id:
                storage.delete(f"files/{u.project_id}/{u.file_id}")
            s.execute(update(Upload).where(Upload.id == u.id, Upload.status == "completing").values(status="pending"))
            s.commit()
            s.refresh(u)
            expire(s, storage, u)
            n += 1
    if n:
        log.info("expired %d uploads", n)
    return n

