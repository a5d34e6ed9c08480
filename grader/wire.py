"""The request and response bodies of OpenAI's grader endpoints (openai-python's `GraderRunParams`,
`GraderValidateParams`, `GraderRunResponse`, `GraderValidateResponse`), shared by the API
(api/routes/graders.py) and the standalone grader service (grader/service.py)."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from grader.errors import ERROR_DETAILS, ERROR_FLAGS


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


class ValidateGraderResponse(BaseModel):
    """The validated grader (multi graders in their canonical dict form)."""

    grader: GraderObject


RunGraderErrors = create_model(
    "RunGraderErrors",
    __doc__="What went wrong grading the sample: a flag per failure kind, details where OpenAI has them.",
    **{k: (Optional[str], None) if k in ERROR_DETAILS else (bool, False) for k in sorted(ERROR_FLAGS + ERROR_DETAILS)},
)


class RunGraderMetadata(BaseModel):
    name: str
    type: str
    errors: RunGraderErrors  # type: ignore[valid-type]
    execution_time: float
    """Seconds the run took."""
    scores: dict[str, Any]
    """Sub-rewards (multi) and the grader's components, e.g. an IoU grader's matched boxes."""
    token_usage: Optional[dict[str, int]] = Field(default=None, description=(
        "A judge model's token usage, as an object as the live API returns it (openai-python types it as an "
        "integer); null for graders without a model."))
    sampled_model_name: Optional[str] = None


class RunGraderResponse(BaseModel):
    reward: float
    metadata: RunGraderMetadata
    sub_rewards: dict[str, Any]
    """A multi grader's reward per sub-grader."""
    model_grader_token_usage_per_model: dict[str, Any]
