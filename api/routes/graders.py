"""/v1/fine_tuning/alpha/graders/{run,validate}: OpenAI's grader endpoints over the `grader` library.

Job creation validates its grader through the same `grader.validate_grader`. Judge models (score_model,
label_model) are called at VRFT_GRADER_MODEL_BASE_URL when set, else at this service's own /v1 with the
caller's key, so any model the service serves can judge.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

import grader
from api.deps import ProjectDep
from api.errors import APIError
from grader.wire import GraderRunRequest, GraderValidateRequest

router = APIRouter(tags=["graders"])


def _validated(spec: dict[str, Any]) -> grader.GraderSpec:
    try:
        return grader.validate_grader(spec, top_level=True)
    except grader.GraderValidationError as e:
        raise APIError(400, e.message, param=e.prefixed("grader").param, code="invalid_grader") from None


def _endpoint(request: Request) -> "grader.ModelEndpoint":
    ep = grader.ModelEndpoint()
    if not ep.base_url:  # judge with a model this service serves, as the caller
        ep.base_url = str(request.base_url).rstrip("/") + "/v1"
        header = request.headers.get("authorization", "")
        ep.api_key = header.partition(" ")[2].strip() or None
    return ep


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(body: GraderValidateRequest, project: ProjectDep) -> dict[str, Any]:
    """Validate a grader; the response echoes it (multi graders in their canonical dict form)."""
    spec = _validated(body.grader)
    return {"grader": spec.model_dump(mode="json", exclude_none=True)}


@router.post("/fine_tuning/alpha/graders/run")
def run_grader(body: GraderRunRequest, request: Request, project: ProjectDep) -> dict[str, Any]:
    """Run a grader on one sample: {reward, metadata, sub_rewards, model_grader_token_usage_per_model}."""
    spec = _validated(body.grader)
    endpoint = _endpoint(request)
    try:
        return grader.run(spec, body.model_sample, body.item or {}, endpoint=endpoint)
    finally:
        endpoint.close()
