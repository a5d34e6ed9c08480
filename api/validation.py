"""Validation of fine-tune JSONL files, line by line, streamed (never the whole file in memory).

A row is a JSON object with `messages` (OpenAI chat format; text and `image_url` parts, images as data URLs
or http(s) URLs), optional `tools`, and any other keys, which are kept for graders. The last message is the
user's (a reinforcement row: the model answers it) or the assistant's (a supervised row: the answer to learn).
A DPO row is OpenAI's preference row instead: `input` {messages, tools?}, `preferred_output` and
`non_preferred_output` (one assistant message each).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from api.errors import shown
from api.settings import Settings
from media import ImageRejected, decode_data_url, inspect_image

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_REPORTED_ERRORS = 10


@dataclass(frozen=True)
class DatasetLimits:
    """What one training or validation file may hold; `DatasetLimits.of(settings)` reads the settings."""

    max_rows: int
    max_image_bytes: int
    max_images_per_row: int
    max_image_pixels: int
    max_image_urls: int
    """http(s) image URLs in the whole file (each one is a download when a job stages the file)."""

    @classmethod
    def of(cls, settings: Settings) -> DatasetLimits:
        return cls(max_rows=settings.max_training_rows, max_image_bytes=settings.max_image_bytes,
                   max_images_per_row=settings.max_images_per_row, max_image_pixels=settings.max_image_pixels,
                   max_image_urls=settings.max_image_urls_per_file)

    @property
    def max_line_bytes(self) -> int:
        """The longest line a valid row can be: its images as base64 data URLs, plus 1 MiB of everything else."""
        return self.max_images_per_row * (self.max_image_bytes * 4 // 3 + 64) + 2**20


class RowError(ValueError):
    """What is wrong with one row; the message names the field."""


@dataclass
class ValidationReport:
    rows: int = 0
    rl_rows: int = 0
    """rows whose last message is the user's (usable for reinforcement)"""
    sft_rows: int = 0
    """rows whose last message is the assistant's (usable for supervised training)"""
    dpo_rows: int = 0
    """preference rows (`input`, `preferred_output`, `non_preferred_output`: usable for DPO)"""
    images: int = 0
    image_urls: int = 0
    """images given as http(s) URLs (downloaded when a job stages the file)"""
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
        return {"rows": self.rows, "rl_rows": self.rl_rows, "sft_rows": self.sft_rows, "dpo_rows": self.dpo_rows,
                "images": self.images}


class LineTooLong(ValueError):
    """A line past `max_line_bytes`: no valid row is that long, and holding it would cost its size in memory."""


def iter_lines(chunks: Iterable[bytes], *, max_line_bytes: int) -> Iterator[bytes]:
    """Split a byte stream into lines, holding at most one line plus one chunk. Each byte is searched for a
    newline once (re-splitting a growing buffer was quadratic on one long line). LineTooLong past
    `max_line_bytes`."""
    pending: list[bytes] = []  # pieces of the line read so far, none holding a newline
    size = 0
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            size += end - start
            if size > max_line_bytes:
                raise LineTooLong(f"the line is longer than the {max_line_bytes} bytes a row may have")
            yield b"".join(pending) + chunk[start:end] if pending else chunk[start:end]
            pending, size, start = [], 0, end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
            size += len(chunk) - start
            if size > max_line_bytes:
                raise LineTooLong(f"the line is longer than the {max_line_bytes} bytes a row may have")
    if pending:
        yield b"".join(pending)


def _check_image(url: str, where: str, limits: DatasetLimits) -> bool:
    """Check an image URL of a row; True when it is an http(s) URL (downloaded and checked when a job stages
    the file), False for a data URL, whose image is checked here from its header."""
    if url.startswith(("http://", "https://")):
        return True
    try:
        raw = decode_data_url(url)
        if raw is None:
            raise RowError(f"{where}: an image must be a base64 data URL (data:image/png;base64,...) or an http(s) URL")
        if len(raw) > limits.max_image_bytes:
            raise RowError(f"{where}: image is larger than the {limits.max_image_bytes // 2**20} MB limit")
        inspect_image(raw, max_pixels=limits.max_image_pixels, verify=True)
    except ImageRejected as e:
        raise RowError(f"{where}: {e}") from None
    return False


def check_messages(messages: object, limits: DatasetLimits, where: str = "messages",
                   images: int = 0) -> tuple[int, int]:
    """Check a list of chat messages (`where` names it in errors); return the row's image count so far (from
    `images`) and how many of these images are http(s) URLs, or raise RowError."""
    if messages is None:
        raise RowError(f"missing required key '{where}'")
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{where}' must be a non-empty list")
    urls = 0
    for i, msg in enumerate(messages):
        mw = f"{where}[{i}]"
        if not isinstance(msg, dict):
            raise RowError(f"{mw} must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise RowError(f"{mw}.role must be one of {', '.join(ROLES)}, got {shown(role)}")
        content = msg.get("content")
        if isinstance(content, str) or (content is None and (role == "assistant" and msg.get("tool_calls"))):
            continue
        if not isinstance(content, list) or not content:
            raise RowError(f"{mw}.content must be a string or a non-empty list of content parts")
        for j, part in enumerate(content):
            pw = f"{mw}.content[{j}]"
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
                if images > limits.max_images_per_row:
                    raise RowError(f"{pw}: at most {limits.max_images_per_row} images per row")
                urls += _check_image(url, f"{pw}.image_url.url", limits)
            else:
                raise RowError(f"{pw}.type must be 'text' or 'image_url', got {shown(kind)}")
    return images, urls


def check_preference_row(row: dict, limits: DatasetLimits) -> tuple[str, int, int]:
    """OpenAI's DPO row: `input` {messages (ending with the user's), tools?}, `preferred_output` and
    `non_preferred_output` (each a list of one assistant message). Returns ('dpo', images, image URLs)."""
    inp = row["input"]
    if not isinstance(inp, dict):
        raise RowError("'input' must be an object with 'messages'")
    images, urls = check_messages(inp.get("messages"), limits, "input.messages")
    if inp["messages"][-1]["role"] != "user":
        raise RowError(f"input.messages must end with the user's message, got {shown(inp['messages'][-1]['role'])}")
    if inp.get("tools") is not None and not isinstance(inp["tools"], list):
        raise RowError("'input.tools' must be a list")
    for key in ("preferred_output", "non_preferred_output"):
        out = row.get(key)
        if not isinstance(out, list) or len(out) != 1:
            raise RowError(f"'{key}' must be a list of one assistant message")
        images, more = check_messages(out, limits, key, images)
        urls += more
        if out[0]["role"] != "assistant":
            raise RowError(f"{key}[0].role must be 'assistant', got {shown(out[0]['role'])}")
    return "dpo", images, urls


def check_row(row: object, limits: DatasetLimits) -> tuple[str, int, int]:
    """Check one row; return its kind ('rl', 'sft' or 'dpo'), its image count and how many of its images are
    http(s) URLs, or raise RowError."""
    if not isinstance(row, dict):
        raise RowError("each line must be a JSON object")
    if "messages" not in row and "input" in row:
        return check_preference_row(row, limits)
    messages = row.get("messages")
    images, urls = check_messages(messages, limits)
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RowError("'tools' must be a list")
    last = messages[-1]["role"]
    if last == "user":
        return "rl", images, urls
    if last == "assistant":
        return "sft", images, urls
    raise RowError(
        "the last message must be from the user (a reinforcement row) or the assistant (a supervised row), "
        f"got {shown(last)}"
    )


def validate_jsonl(chunks: Iterable[bytes], limits: DatasetLimits) -> ValidationReport:
    report = ValidationReport()

    def fail(lineno: int, msg: str) -> None:
        report.error_count += 1
        if len(report.errors) < MAX_REPORTED_ERRORS:
            report.errors.append(f"line {lineno}: {msg}")

    lineno = 0
    try:
        for lineno, raw in enumerate(iter_lines(chunks, max_line_bytes=limits.max_line_bytes), start=1):
            if not raw.strip():
                continue
            report.rows += 1
            if report.rows > limits.max_rows:
                fail(lineno, f"the file has more than the {limits.max_rows} rows allowed")
                break
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                fail(lineno, f"not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8'})")
                continue
            except RecursionError:
                fail(lineno, "not valid JSON (nested too deeply)")
                continue
            try:
                kind, n_images, n_urls = check_row(row, limits)
            except RowError as e:
                fail(lineno, str(e))
                continue
            report.images += n_images
            report.image_urls += n_urls
            if report.image_urls > limits.max_image_urls:
                fail(lineno, f"the file has more than the {limits.max_image_urls} image URLs allowed "
                             "(each one is downloaded when a job starts; send images as data URLs)")
                break
            if kind == "rl":
                report.rl_rows += 1
            elif kind == "sft":
                report.sft_rows += 1
            else:
                report.dpo_rows += 1
    except LineTooLong as e:
        fail(lineno + 1, str(e))
    return report
