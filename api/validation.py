"""Validation of fine-tune JSONL files, line by line, streamed (never the whole file in memory).

A row is a JSON object with `messages` (OpenAI chat format; text and `image_url` parts, images as data URLs
or http(s) URLs), optional `tools`, and any other keys, which are kept for graders. The last message is the
user's (a reinforcement row: the model answers it) or the assistant's (a supervised row: the answer to learn).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from PIL import Image

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_REPORTED_ERRORS = 10
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.ASCII)


class RowError(ValueError):
    """What is wrong with one row; the message names the field."""


@dataclass
class ValidationReport:
    rows: int = 0
    rl_rows: int = 0
    """rows whose last message is the user's (usable for reinforcement)"""
    sft_rows: int = 0
    """rows whose last message is the assistant's (usable for supervised training)"""
    images: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.rows > 0

    def details(self) -> str:
        if self.rows == 0 and self.error_count == 0:
            return "The file has no rows: a fine-tune file needs at least one JSON line."
        more = self.error_count - len(self.errors)
        tail = f" ({more} more lines with errors not shown)" if more > 0 else ""
        return f"{self.error_count} invalid line(s): " + "; ".join(self.errors) + tail

    def stats(self) -> dict:
        return {"rows": self.rows, "rl_rows": self.rl_rows, "sft_rows": self.sft_rows, "images": self.images}


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines without holding more than one line plus one chunk."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


def _check_image(url: str, where: str, max_image_bytes: int) -> None:
    if url.startswith(("http://", "https://")):
        return  # fetched when the job stages its data, not at upload
    m = _DATA_URL.match(url)
    if not m:
        raise RowError(f"{where}: an image must be a base64 data URL (data:image/png;base64,...) or an http(s) URL")
    payload = url[m.end():]
    if len(payload) * 3 // 4 > max_image_bytes:
        raise RowError(f"{where}: image is larger than the {max_image_bytes // 2**20} MB limit")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RowError(f"{where}: invalid base64 image data") from None
    if len(raw) > max_image_bytes:
        raise RowError(f"{where}: image is larger than the {max_image_bytes // 2**20} MB limit")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    except Exception:  # noqa: BLE001  (PIL raises many types for undecodable data)
        raise RowError(f"{where}: the image could not be decoded") from None


def check_row(row: object, *, max_image_bytes: int, max_images: int) -> tuple[str, int]:
    """Check one row; return its kind ('rl' or 'sft') and its image count, or raise RowError."""
    if not isinstance(row, dict):
        raise RowError("each line must be a JSON object")
    messages = row.get("messages")
    if messages is None:
        raise RowError("missing required key 'messages'")
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' must be a non-empty list")
    images = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RowError(f"{where} must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise RowError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        content = msg.get("content")
        if isinstance(content, str) or (content is None and (role == "assistant" and msg.get("tool_calls"))):
            continue
        if not isinstance(content, list) or not content:
            raise RowError(f"{where}.content must be a string or a non-empty list of content parts")
        for j, part in enumerate(content):
            pw = f"{where}.content[{j}]"
            if not isinstance(part, dict):
                raise RowError(f"{pw} must be an object")
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise RowError(f"{pw}.text must be a string")
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if not isinstance(url, str):
                    raise RowError(f"{pw}.image_url.url must be a string")
                if role not in ("user", "system", "developer"):
                    raise RowError(f"{pw}: images are only allowed in user messages")
                images += 1
                if images > max_images:
                    raise RowError(f"{pw}: at most {max_images} images per row")
                _check_image(url, f"{pw}.image_url.url", max_image_bytes)
            else:
                raise RowError(f"{pw}.type must be 'text' or 'image_url', got {kind!r}")
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RowError("'tools' must be a list")
    last = messages[-1]["role"]
    if last == "user":
        return "rl", images
    if last == "assistant":
        return "sft", images
    raise RowError(
        f"the last message must be from the user (a reinforcement row) or the assistant (a supervised row), got {last!r}"
    )


def validate_jsonl(
    chunks: Iterable[bytes], *, max_rows: int, max_image_bytes: int, max_images: int
) -> ValidationReport:
    report = ValidationReport()

    def fail(lineno: int, msg: str) -> None:
        report.error_count += 1
        if len(report.errors) < MAX_REPORTED_ERRORS:
            report.errors.append(f"line {lineno}: {msg}")

    for lineno, raw in enumerate(iter_lines(chunks), start=1):
        if not raw.strip():
            continue
        report.rows += 1
        if report.rows > max_rows:
            fail(lineno, f"the file has more than the {max_rows} rows allowed")
            break
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            fail(lineno, f"not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8'})")
            continue
        try:
            kind, n_images = check_row(row, max_image_bytes=max_image_bytes, max_images=max_images)
        except RowError as e:
            fail(lineno, str(e))
            continue
        report.images += n_images
        if kind == "rl":
            report.rl_rows += 1
        else:
            report.sft_rows += 1
    return report
