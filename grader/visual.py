"""Visual-RFT rewards as plain functions: format and classification (the batched IoU reward is grader/types/iou.py)."""

from __future__ import annotations

import unicodedata
from typing import Any, Sequence

from grader.patterns import DEFAULT_FORMAT_PATTERN, fullmatch


def format_reward(text: str, pattern: str = DEFAULT_FORMAT_PATTERN, flags: Sequence[str] = ("dotall",),
                  strip: bool = True) -> float:
    """1.0 when `pattern` matches the whole text (Visual-RFT's `re.fullmatch(..., re.DOTALL)`), else 0.0.

    A pattern that runs longer than grader.patterns.REGEX_TIMEOUT_S on a sample raises TimeoutError.
    """
    return 1.0 if fullmatch(text.strip() if strip else text, pattern, flags) else 0.0


def normalize_label(text: str) -> str:
    """NFKC + casefold; '_' and '-' count as spaces; punctuation dropped; whitespace removed."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("_", " ").replace("-", " ")
    return "".join(ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def classification_reward(answer: str, reference: Any, synonyms: dict[str, list[str]] | None = None,
                          normalize: bool = True) -> float:
    """1.0 when the answer equals the reference (a string or a list of accepted strings) or one of its
    synonyms, else 0.0. Exact match, never substring: an empty answer scores 0 (Visual-RFT's
    `gt in ans or ans in gt` gave "" full marks and models collapsed to empty answers).
    """
    norm = normalize_label if normalize else (lambda s: s.strip())
    ans = norm(answer)
    if not ans:
        return 0.0
    refs = reference if isinstance(reference, list) else [reference]
    accepted = set()
    syn = {norm(k): v for k, v in (synonyms or {}).items()}
    for ref in refs:
        r = norm(str(ref))
        accepted.add(r)
        accepted.update(norm(s) for s in syn.get(r, ()))
    accepted.discard("")
    return 1.0 if ans in accepted else 0.0
