"""Image size of a dataset row, and Qwen's smart_resize.

A row is OpenAI chat JSONL; its images are `{"type": "image_url", "image_url": {"url": "data:...;base64,..."}}`
content parts. The size comes from `item["image_size"] = [width, height]` when the row carries it, else from
the header of the row's first image (only the first bytes are decoded).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

from grader.errors import SampleError


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 16384) -> tuple[int, int]:
    """(height, width) of the image Qwen2-VL / Qwen2.5-VL actually sees (transformers' smart_resize).

    Sides are rounded to multiples of `factor`, then scaled so min_pixels <= h*w <= max_pixels. The defaults
    are Qwen2.5-VL's hub processor's; callers that know the model pass its own (trainer/families.py:
    `Family.pixels`, or the model folder's processor through `Family.box_convention_for`).

    >>> smart_resize(480, 640)
    (476, 644)
    >>> smart_resize(1000, 1000, max_pixels=512 * 28 * 28)
    (616, 616)
    >>> smart_resize(10, 10)
    (56, 56)
    """
    if min(height, width) <= 0:
        raise ValueError("image has no pixels")
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio above 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def first_image_url(item: Any) -> str | None:
    """The URL of the first image_url (or input_image) part of the row's messages."""
    if not isinstance(item, dict):
        return None
    for msg in item.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if isinstance(url, str):
                    return url
            if part.get("type") == "input_image" and isinstance(part.get("image_url"), str):
                return part["image_url"]
    return None


def size_from_data_url(url: str) -> tuple[int, int]:
    """(width, height) from a base64 data URL, decoding as little as possible.

    >>> size_from_data_url(_tiny_png_url(7, 3))
    (7, 3)
    """
    from PIL import Image

    if not url.startswith("data:") or "," not in url:
        raise ValueError("only data: URLs can be read offline; give item.image_size = [width, height]")
    b64 = url.split(",", 1)[1]
    for n in (4096, 65536, None):
        chunk = b64 if n is None else b64[: n - n % 4]
        try:
            data = base64.b64decode(chunk, validate=False)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except (OSError, binascii.Error, ValueError, SyntaxError):
            if n is None or n >= len(b64):
                raise ValueError("cannot read the image header") from None
    raise ValueError("cannot read the image header")


def item_image_size(item: Any) -> tuple[int, int]:
    """(width, height) of the row's image; raises SampleError(other_error) when it cannot be known."""
    if isinstance(item, dict) and item.get("image_size") is not None:
        size = item["image_size"]
        if isinstance(size, dict):
            size = [size.get("width"), size.get("height")]
        try:
            w, h = (int(size[0]), int(size[1]))
            if w > 0 and h > 0:
                return w, h
        except (TypeError, ValueError, IndexError, KeyError):
            pass
        raise SampleError("other_error", "item.image_size must be [width, height]")
    url = first_image_url(item)
    if url is None:
        raise SampleError("other_error",
                          "pixel coordinates need the image size: the row has no image and no image_size")
    try:
        return size_from_data_url(url)
    except ValueError as e:
        raise SampleError("other_error", str(e)) from None


def _tiny_png_url(w: int, h: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
