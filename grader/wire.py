"""The request bodies of OpenAI's grader endpoints (openai-python's `GraderRunParams`, `GraderValidateParams`),
shared by the API (api/routes/graders.py) and the standalone grader service (grader/service.py)."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, TypeAdapter


class JsonSchemaOf:
    """Field metadata: the field is documented (its JSON schema) as the type `of()` returns, and validated as
    declared. A grader arrives as a dict and is validated by grader.validate_grader, whose messages name the
    field at fault; pydantic's union errors would not."""

    def __init__(self, of: Callable[[], Any]) -> None:
        self.of = of

    def __get_pydantic_json_schema__(self, _core_schema: Any, handler: Any) -> Any:
        return handler(TypeAdapter(self.of()).core_schema)


def _top_level_graders() -> Any:
    from grader import registry

    return registry.union(lambda t: t.top_level)


GraderObject = Annotated[dict[str, Any], JsonSchemaOf(_top_level_graders)]
"""A grader as a request carries it: a job's or a run's (any type allowed at the top level, tagged by `type`)."""


class GraderRunRequest(BaseModel):
    """POST /v1/fine_tuning/alpha/graders/run"""

    model_config = ConfigDict(extra="forbid")
    grader: GraderObject
    """The grader used for the fine-tuning job."""
    model_sample: str
    """The model sample; populates the `sample` namespace (`output_json` when it is valid JSON)."""
    item: Optional[dict[str, Any]] = None
    """The dataset item; populates the `item` namespace."""


class GraderValidateRequest(BaseModel):
    """POST /v1/fine_tuning/alpha/graders/validate"""

    model_config = ConfigDict(extra="forbid")
    grader: GraderObject
