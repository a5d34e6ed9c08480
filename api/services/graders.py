"""A grader spec from a request, validated once for every endpoint that takes one (jobs, graders/run and
validate, files/{id}/boxes)."""

from __future__ import annotations

from typing import Any

import grader
from api.errors import APIError


def validated_grader(spec: dict[str, Any], param: str = "grader", message_prefix: str = "") -> grader.GraderSpec:
    """`spec` validated by grader.validate_grader, or a 400 (code invalid_grader) whose param is `param` joined to
    the field at fault."""
    try:
        return grader.validate_grader(spec, top_level=True)
    except grader.GraderValidationError as e:
        raise APIError(400, message_prefix + e.message, param=e.prefixed(param).param, code="invalid_grader") from None
