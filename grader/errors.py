"""Errors: the one validation exception, and the per-sample error counters of OpenAI's run response.

A grader never raises on a sample: it scores 0 and sets one of the flags below. The flags and their
order are those of `GraderRunResponse.metadata.errors` in openai-python
(`types/fine_tuning/alpha/grader_run_response.py`).
"""

from __future__ import annotations

ERROR_FLAGS: tuple[str, ...] = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
"""Boolean error flags, one per failure kind."""

ERROR_DETAILS: tuple[str, ...] = (
    "model_grader_server_error_details",
    "python_grader_runtime_error_details",
    "python_grader_server_error_type",
)
"""String details that go with some flags (null when unset)."""


_EMPTY = {k: None if k in ERROR_DETAILS else False for k in sorted(ERROR_FLAGS + ERROR_DETAILS)}
"""OpenAI's key order is alphabetical (each detail right after its flag)."""


def empty_errors() -> dict:
    """A fresh errors object with every flag false and every detail null, in OpenAI's key order."""
    return _EMPTY.copy()


def merge_errors(into: dict, other: dict) -> dict:
    """OR the flags of `other` into `into`; keep the first non-null detail."""
    for k in ERROR_FLAGS:
        if other.get(k):
            into[k] = True
    for k in ERROR_DETAILS:
        if into.get(k) is None and other.get(k) is not None:
            into[k] = other[k]
    return into


class GraderValidationError(ValueError):
    """A grader spec that OpenAI would reject.

    `param` is the dotted path of the offending field inside the grader object
    (e.g. ``"graders.iou.iou_threshold"`` or ``"source"``); the API prefixes it with
    ``"method.reinforcement.grader."`` or ``"grader."``.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param or ""

    def prefixed(self, prefix: str) -> "GraderValidationError":
        """The same error with `prefix` joined in front of `param`."""
        param = f"{prefix}.{self.param}" if self.param else prefix
        return GraderValidationError(self.message, param)


class SampleError(Exception):
    """Raised inside a grader for one sample; `flag` names the error counter it sets."""

    def __init__(self, flag: str, message: str = "", detail_key: str | None = None,
                 detail: str | None = None, also: tuple[str, ...] = ()):
        super().__init__(message or flag)
        self.flag = flag
        self.message = message or flag
        self.detail_key = detail_key
        self.detail = detail
        self.also = also

    def to_errors(self) -> dict:
        errors = empty_errors()
        errors[self.flag] = True
        for flag in self.also:
            errors[flag] = True
        if self.detail_key:
            errors[self.detail_key] = (self.detail if self.detail is not None else self.message)[:2000]
        return errors
