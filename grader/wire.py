"""The request bodies of OpenAI's grader endpoints (openai-python's `GraderRunParams`, `GraderValidateParams`),
shared by the API (api/routes/graders.py) and the standalone grader service (grader/service.py)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict


class GraderRunRequest(BaseModel):
    """POST /v1/fine_tuning/alpha/graders/run"""

    model_config = ConfigDict(extra="forbid")
    grader: dict[str, Any]
    """The grader used for the fine-tuning job."""
    model_sample: str
    """The model sample; populates the `sample` namespace (`output_json` when it is valid JSON)."""
    item: Optional[dict[str, Any]] = None
    """The dataset item; populates the `item` namespace."""


class GraderValidateRequest(BaseModel):
    """POST /v1/fine_tuning/alpha/graders/validate"""

    model_config = ConfigDict(extra="forbid")
    grader: dict[str, Any]
