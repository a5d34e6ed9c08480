"""OpenAI-style object ids: a prefix and 24 random base62 characters."""

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())
