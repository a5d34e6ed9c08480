"""Files: streamed multipart upload to storage, listing, content, deletion, background JSONL validation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlmodel import Session, select

from api.db import session_scope
from api.errors import APIError, not_found, shown
from api.ids import new_id, now
from api.schemas import FILE_PURPOSES, FileObject
from api.settings import Settings
from api.storage import Storage, storage_for
from api.tables import File, Project
from api.validation import DatasetLimits, LineTooLong, iter_lines, validate_jsonl

log = logging.getLogger("vrft.files")


def to_wire(f: File) -> FileObject:
    return FileObject(
        id=f.id, bytes=f.bytes, created_at=f.created_at, filename=f.filename, purpose=f.purpose,
        status=f.status, expires_at=f.expires_at, status_details=f.status_details,
    )


def get_file(session: Session, project: Project, file_id: str, param: str | None = None) -> File:
    f = session.exec(select(File).where(File.id == file_id, File.project_id == project.id)).first()
    if f is None:
        raise not_found("file", file_id, param)
    return f


class _Upload:
    """Receives one multipart body chunk by chunk: small text fields in memory, the file part straight into a
    temporary file on disk, hashed and counted as it arrives, refused as soon as it passes the size limit."""

    def __init__(self, tmp_dir: Path, max_bytes: int, file_field: str = "file") -> None:
        self.max_bytes = max_bytes
        self.file_field = file_field
        """The form field that carries the bytes: `file` (POST /v1/files), `data` (an upload's part)."""
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.sha = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
        self.path = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self.too_large = False

    def callbacks(self) -> dict:
        def on_part_begin() -> None:
            self._headers, self._name, self._is_file, self._value = {}, None, False, bytearray()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._hname += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._hvalue += data[start:end]

        def on_header_end() -> None:
            self._headers[self._hname.lower()] = self._hvalue
            self._hname, self._hvalue = b"", b""

        def on_headers_finished() -> None:
            _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
            self._name = opts.get(b"name", b"").decode("utf-8", "replace")
            if self._name == self.file_field and (b"filename" in opts or self.file_field != "file"):
                self._is_file = True
                self.filename = opts.get(b"filename", b"").decode("utf-8", "replace")

        def on_part_data(data: bytes, start: int, end: int) -> None:
            chunk = data[start:end]
            if self._is_file:
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    self.too_large = True
                    return
                self.sha.update(chunk)
                self._out.write(chunk)
            elif len(self._value) < 65536:
                self._value += chunk

        def on_part_end() -> None:
            if not self._is_file and self._name:
                self.fields[self._name] = self._value.decode("utf-8", "replace")

        return {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end,
        }

    def close(self) -> None:
        self._out.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _too_large(limit: int, field: str = "file") -> APIError:
    what = "File" if field == "file" else "The part"
    return APIError(413, f"{what} is larger than the {limit} bytes allowed.", param=field, code="file_too_large")


async def receive_upload(request: Request, settings: Settings) -> _Upload:
    return await receive_multipart(request, settings.tmp_dir, field="file", max_bytes=settings.max_upload_bytes,
                                   fields_hint="'file' and 'purpose' fields")


async def receive_multipart(request: Request, tmp_dir: Path, *, field: str, max_bytes: int,
                            fields_hint: str) -> _Upload:
    """Stream a multipart body into a temporary file (the form field `field`) and small text fields; a 413
    naming `field` as soon as it passes `max_bytes`, a 400 naming it for a body that is not multipart."""
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise APIError(400, f"Uploads must be sent as multipart/form-data with {fields_hint}.", param=field)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 1024 * 1024:
        raise _too_large(max_bytes, field)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    up = _Upload(tmp_dir, max_bytes, field)
    try:
        parser = MultipartParser(opts[b"boundary"], up.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
            if up.too_large:
                raise _too_large(max_bytes, field)
        parser.finalize()
        up.close()
    except APIError:
        up.discard()
        raise
    except Exception:
        up.discard()
        raise APIError(400, "The multipart body could not be parsed.", param=field) from None
    return up


def _expires_at(fields: dict[str, str], created: int) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise APIError(
            400, "Invalid value for 'expires_after.anchor': must be 'created_at'.", param="expires_after.anchor"
        )
    if not (seconds or "").isdigit() or not 3600 <= int(seconds) <= 2_592_000:
        raise APIError(
            400,
            "Invalid value for 'expires_after.seconds': must be between 3600 and 2592000.",
            param="expires_after.seconds",
        )
    return created + int(seconds)


def check_purpose(purpose: str | None) -> str:
    """A file purpose, or the 400 that names it."""
    if purpose is None:
        raise APIError(
            400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if purpose not in FILE_PURPOSES:
        raise APIError(
            400,
            f"Invalid value for 'purpose': {shown(purpose)}. Supported: {', '.join(FILE_PURPOSES)}.",
            param="purpose",
        )
    return purpose


def check_not_empty(purpose: str, size: int, param: str) -> None:
    if purpose == "fine-tune" and size == 0:
        raise APIError(400, "The file is empty: a fine-tune file needs at least one JSON line.", param=param)


def clean_filename(name: str) -> str:
    """The base name without control or format characters (Unicode category C*, a NUL, a newline, a
    right-to-left override): the name is shown in listings and sent back in a download header."""
    name = "".join(c for c in name if not unicodedata.category(c).startswith("C"))
    return os.path.basename(name)[:255] or "upload"


def create_file(session: Session, storage: Storage, project: Project, up: _Upload) -> File:
    """Check the form fields, move the received bytes into storage and record the file."""
    try:
        purpose = check_purpose(up.fields.get("purpose"))
        if up.filename is None:
            raise APIError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        check_not_empty(purpose, up.size, "file")
        created = now()
        expires = _expires_at(up.fields, created)
        file_id = new_id("file-")
        key = f"files/{project.id}/{file_id}"
        storage.put_file(key, up.path)
    except BaseException:
        up.discard()
        raise
    return record_file(session, storage, project, file_id=file_id, filename=up.filename, purpose=purpose,
                       size=up.size, created=created, expires_at=expires, key=key, sha256=up.sha.hexdigest())


def record_file(session: Session, storage: Storage, project: Project, *, file_id: str, filename: str, purpose: str,
                size: int, created: int, expires_at: int | None, key: str, sha256: str) -> File:
    """Record a file whose bytes are in storage at `key` (deleted again if the row cannot be stored). A
    fine-tune file starts `uploaded`: submit it to the `FileValidator`."""
    row = File(
        id=file_id, project_id=project.id, filename=clean_filename(filename), purpose=purpose,
        bytes=size, created_at=created, expires_at=expires_at,
        status="uploaded" if purpose == "fine-tune" else "processed", storage_key=key, sha256=sha256,
    )
    session.add(row)
    try:
        session.commit()
    except BaseException:
        storage.delete(key)
        raise
    return row


def delete_file(session: Session, storage: Storage, f: File) -> None:
    session.delete(f)
    session.commit()
    storage.delete(f.storage_key)


class FileValidator:
    """Validates fine-tune files in background threads. On start, files left `uploaded` by a crash are
    validated again, so no upload is stranded."""

    def __init__(self, settings: Settings, workers: int = 2) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="file-validate")

    def submit(self, file_id: str) -> None:
        self.pool.submit(self._run, file_id)

    def resume_pending(self) -> None:
        with session_scope(self.settings) as s:
            pending = s.exec(select(File.id).where(File.status == "uploaded")).all()
        for fid in pending:
            self.submit(fid)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, file_id: str) -> None:
        st = self.settings
        try:
            with session_scope(st) as s:
                f = s.exec(select(File).where(File.id == file_id)).first()
                if f is None or f.status != "uploaded":
                    return
                key = f.storage_key
            storage = storage_for(st.storage_url, st.s3_endpoint_url)
            report = validate_jsonl(storage.iter_bytes(key), DatasetLimits.of(st))
            with session_scope(st) as s:
                f = s.exec(select(File).where(File.id == file_id)).first()
                if f is None:
                    return
                f.stats = report.stats()
                f.status = "processed" if report.ok else "error"
                f.status_details = None if report.ok else report.details()
                s.add(f)
            log.info("file %s validated: %s", file_id, "processed" if report.ok else "error")
        except Exception:
            log.exception("validation of file %s crashed", file_id)
            with session_scope(st) as s:
                f = s.exec(select(File).where(File.id == file_id)).first()
                if f is not None:
                    f.status, f.status_details = "error", "Internal error while validating the file; upload it again."
                    s.add(f)


def _lines(storage: Storage, f: File, limits: DatasetLimits, param: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of the stored file, streamed; a deleted blob is a 404, an over-long line a
    400 naming `param`."""
    try:
        yield from enumerate(iter_lines(storage.iter_bytes(f.storage_key), max_line_bytes=limits.max_line_bytes),
                             start=1)
    except FileNotFoundError:  # deleted by a concurrent request
        raise not_found("file", f.id) from None
    except LineTooLong as e:
        raise APIError(400, f"File {f.id} cannot be read as rows: {e}.", param=param) from None


def _row(f: File, lineno: int, raw: bytes, param: str) -> dict[str, Any]:
    try:
        row = json.loads(raw)
    except ValueError:
        row = None
    if not isinstance(row, dict):
        raise APIError(400, f"Line {lineno} of file {f.id} is not a JSON object.", param=param)
    return row


def rows_at(storage: Storage, f: File, lines: list[int], limits: DatasetLimits, *, param: str = "rows",
            line_param: str = "rows[{i}].line") -> list[dict[str, Any]]:
    """The JSON rows at these 1-based `lines` of the file (streamed up to the last one asked for); a 400 naming
    `line_param` (formatted with the line's index i in `lines`) for a line past the end or one that is not a JSON
    object, `param` for a file whose lines cannot be read."""
    wanted, found = set(lines), {}
    last = max(wanted)
    for lineno, raw in _lines(storage, f, limits, param):
        if lineno in wanted:
            found[lineno] = raw
        if lineno >= last:
            break
    rows = []
    for i, line in enumerate(lines):
        if line not in found:
            raise APIError(400, f"Line {line} is past the end of file {f.id}.", param=line_param.format(i=i))
        rows.append(_row(f, line, found[line], line_param.format(i=i)))
    return rows


def rows_after(storage: Storage, f: File, after: int, limit: int,
               limits: DatasetLimits) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Up to `limit` rows after line `after` (blank lines skipped: they are no rows), and whether more follow."""
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, raw in _lines(storage, f, limits, "after"):
        if lineno <= after or not raw.strip():
            continue
        if len(out) == limit:
            return out, True
        out.append((lineno, _row(f, lineno, raw, "after")))
    return out, False
