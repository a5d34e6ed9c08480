"""OpenAI-style object ids: a prefix and 24 base62 characters, random or derived from what names the object."""

import hashlib
import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def derived_id(prefix: str, name: str, length: int = 24) -> str:
    """An id that is the same each time for the same `name` (a job's result file: a worker that dies after
    storing it and before committing its row, and the worker that takes over, store it under one key, not two)."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest(), "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return prefix + "".join(out)


def now() -> int:
    return int(time.time())
