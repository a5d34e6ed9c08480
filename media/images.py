"""An image's format and size, read from its header before anything decodes it, checked against a pixel cap.

A PNG of 164 KB can hold 13,000 x 13,000 pixels: decoded, that is half a gigabyte in every process that opens
it (the trainer, a vLLM engine). The header says how large an image is; `inspect_image` refuses one past the
cap without decoding a pixel.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.ASCII)
"""A base64 image data URL's prefix (group 1: the media type, when given)."""

FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
"""The image formats taken, with their file extensions: OpenAI's four and BMP. PIL opens dozens more (EPS,
PSD, TIFF, ...), each a decoder a tenant's bytes would reach."""


class ImageRejected(ValueError):
    """Not an image, or not one the service takes; the message says which, for the tenant."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    """PIL's name of the format (`PNG`, `JPEG`, ...)."""
    width: int
    height: int

    @property
    def extension(self) -> str:
        """A file extension for the format (never taken from a URL: a URL's can be anything, of any length)."""
        return FORMATS[self.format]


def decode_data_url(url: str) -> bytes | None:
    """The bytes of a base64 image data URL, or None when `url` is not one."""
    m = DATA_URL.match(url)
    if m is None:
        return None
    try:
        return base64.b64decode(url[m.end():], validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("invalid base64 image data") from None


def inspect_image(raw: bytes, *, max_pixels: int, verify: bool = False) -> ImageInfo:
    """Format and size from the header; ImageRejected when `raw` is not an image, has more than `max_pixels`
    pixels, or (with `verify`) its data does not check out. Nothing is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=list(FORMATS)) as im:
                info = ImageInfo(str(im.format), *im.size)
                if info.width * info.height <= max_pixels and verify:
                    im.verify()
    except Image.DecompressionBombError:  # PIL's own cap (about 179 M pixels) hit before ours could be read
        raise ImageRejected(f"the image has more than the {max_pixels:,} pixels allowed") from None
    except Exception:  # noqa: BLE001  (PIL raises many types for data it cannot read)
        raise ImageRejected("the image could not be decoded (PNG, JPEG, WEBP, GIF and BMP are accepted)") from None
    if info.width * info.height > max_pixels:
        raise ImageRejected(f"the image has {info.width} x {info.height} pixels, more than the {max_pixels:,} allowed")
    return info
