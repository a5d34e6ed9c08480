"""Format patterns: regular expressions (the `regex` package) compiled once and matched under a timeout.

Shared by the `format` grader's checks (a pattern that does not compile is a 400) and its reward.
"""

from __future__ import annotations

import functools
from typing import Sequence

DEFAULT_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
REGEX_TIMEOUT_S = 1.0
"""Longest a pattern may run on one sample."""


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str, flags: tuple):
    import regex  # on first use: `import grader` stays light

    f = regex.V0
    for name in flags:  # "ignorecase", "multiline", "dotall"
        f |= getattr(regex, name.upper())
    return regex.compile(pattern, f)


def compile_pattern(pattern: str, flags: Sequence[str] = ("dotall",)):
    """Compile (and cache) a format pattern; raises regex.error when invalid."""
    return _compiled(pattern, tuple(flags))


def fullmatch(text: str, pattern: str, flags: Sequence[str] = ("dotall",)) -> bool:
    """True when `pattern` matches the whole text; TimeoutError past REGEX_TIMEOUT_S."""
    return compile_pattern(pattern, flags).fullmatch(text, timeout=REGEX_TIMEOUT_S) is not None
