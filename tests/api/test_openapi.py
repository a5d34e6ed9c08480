"""The shape of /openapi.json (api/openapi.py): the statuses each operation returns with OpenAI's error body, no
FastAPI 422, request bodies typed down to the grader union and the method objects, OpenAI's names. (That the
running server answers as the document says is tests/api/test_schemathesis.py's part.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from api.errors import error_body, validation_error_to_api_error
from tests.helpers import MULTI_GRADER

REF = "#/components/schemas/"
ERROR_REF = {"$ref": REF + "ErrorResponse"}

STATUSES = {
    "POST /v1/files": {200, 400, 401, 413},
    "GET /v1/files": {200, 400, 401},
    "GET /v1/files/{file_id}": {200, 401, 404},
    "DELETE /v1/files/{file_id}": {200, 401, 404},
    "GET /v1/files/{file_id}/content": {200, 401, 404},
    "POST /v1/fine_tuning/jobs": {200, 400, 401, 413},
    "GET /v1/fine_tuning/jobs": {200, 400, 401},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": {200, 401, 404},
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": {200, 400, 401, 404, 409},
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": {200, 400, 401, 404, 409},
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": {200, 400, 401, 404, 409},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events": {200, 400, 401, 404},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": {200, 400, 401, 404},
    "POST /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": {200, 400, 401, 404, 413},
    "GET /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": {200, 400, 401, 404},
    "DELETE /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions/{permission_id}": {200, 401, 404},
    "GET /v1/models": {200, 401},
    "GET /v1/models/{model}": {200, 401, 404},
    "POST /v1/fine_tuning/alpha/graders/validate": {200, 400, 401, 413},
    "POST /v1/fine_tuning/alpha/graders/run": {200, 400, 401, 413, 429, 504},
    "POST /v1/chat/completions": {200, 400, 401, 404, 413, 501, 502, 503, 504},
    "POST /v1/completions": {200, 400, 401, 404, 413, 501, 502, 503, 504},
}
"""What each operation of this change's time returns (routes added later are held to the rules in
`test_every_operation_lists_its_errors`)."""

OPENAI_COMPONENTS = {
    "CreateFineTuningJobRequest", "FineTuneMethod", "FineTuneSupervisedMethod", "FineTuneReinforcementMethod",
    "FineTuneSupervisedHyperparameters", "FineTuneReinforcementHyperparameters", "FineTuningJob",
    "FineTuningJobEvent", "FineTuningJobCheckpoint", "FineTuningCheckpointPermission",
    "ListPaginatedFineTuningJobsResponse", "ListFineTuningJobEventsResponse", "ListFineTuningJobCheckpointsResponse",
    "ListFineTuningCheckpointPermissionResponse", "CreateFineTuningCheckpointPermissionRequest",
    "DeleteFineTuningCheckpointPermissionResponse", "OpenAIFile", "ListFilesResponse", "DeleteFileResponse", "Model",
    "ListModelsResponse", "RunGraderRequest", "ValidateGraderRequest", "RunGraderResponse", "ValidateGraderResponse",
    "FineTuneDPOMethod", "FineTuneDPOHyperparameters", "DeleteModelResponse", "Error", "ErrorResponse",
    "GraderStringCheck", "GraderTextSimilarity", "GraderPython", "GraderScoreModel", "GraderLabelModel", "GraderMulti",
}
"""Component names of OpenAI's published spec (openai/openai-openapi, openapi.json) for these endpoints."""


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from api.main import create_app
    from api.settings import Settings

    home: Path = tmp_path_factory.mktemp("vrft-openapi")
    return create_app(Settings(home=home), embedded_worker=False).openapi()


def operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{m.upper()} {p}": op for p, ops in doc["paths"].items() for m, op in ops.items()}


def body_validator(doc: dict[str, Any], component: str) -> jsonschema.protocols.Validator:
    """A validator of `component` with the document's components for its $refs."""
    return jsonschema.Draft202012Validator({"$ref": REF + component, "components": doc["components"]})


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or the component its $ref (possibly under anyOf with null) names."""
    if "anyOf" in node:
        (node,) = [n for n in node["anyOf"] if n.get("type") != "null"]
    return doc["components"]["schemas"][node["$ref"].removeprefix(REF)] if "$ref" in node else node


def union_types(doc: dict[str, Any], node: dict[str, Any]) -> set[str]:
    """The `type` tags of a grader union: its discriminator's mapping, checked against its oneOf members."""
    members = {ref["$ref"].removeprefix(REF) for ref in node["oneOf"]}
    tags = {doc["components"]["schemas"][m]["properties"]["type"]["const"] for m in members}
    assert set(node["discriminator"]["mapping"]) == tags
    assert node["discriminator"]["propertyName"] == "type"
    return tags


def test_no_422_anywhere(doc: dict[str, Any]) -> None:
    for name, op in operations(doc).items():
        assert "422" not in op["responses"], name
    assert not {"HTTPValidationError", "ValidationError"} & set(doc["components"]["schemas"])
    assert '"422"' not in str(doc).replace("'", '"')


def test_each_operation_lists_the_statuses_it_returns(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    assert set(STATUSES) <= set(ops), set(STATUSES) - set(ops)
    for name, statuses in STATUSES.items():
        assert {int(s) for s in ops[name]["responses"]} == statuses, name


def test_every_operation_lists_its_errors(doc: dict[str, Any]) -> None:
    """The rules of api/openapi.py, for every operation (those added later too): each error status carries
    OpenAI's error body; auth -> 401, a path parameter -> 404, a query parameter or a body -> 400, a body -> 413."""
    for name, op in operations(doc).items():
        codes = {int(s) for s in op["responses"]}
        where = {p["in"] for p in op.get("parameters", [])}
        assert 200 in codes or 201 in codes, name
        assert 401 in codes and op["security"] == [{"ApiKeyAuth": []}], name
        assert ("path" not in where) or 404 in codes, name
        assert not ({"query"} & where or "requestBody" in op) or 400 in codes, name
        assert ("requestBody" not in op) or 413 in codes, name
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (name, status)
                assert response["description"], (name, status)
    assert doc["components"]["securitySchemes"]["ApiKeyAuth"] == {"type": "http", "scheme": "bearer"}


def test_error_component_is_openais_and_what_the_api_sends(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["error"]
    assert set(schemas["Error"]["properties"]) == set(schemas["Error"]["required"]) == {"message", "type", "param",
                                                                                        "code"}
    check = body_validator(doc, "ErrorResponse")
    check.validate(error_body("No file found with id 'x'.", "invalid_request_error", "file_id", "file_not_found"))
    check.validate(error_body("Something failed.", "server_error"))
    from fastapi.exceptions import RequestValidationError

    e = validation_error_to_api_error(RequestValidationError([{"type": "missing", "loc": ("body", "model"),
                                                               "msg": "Field required"}]))
    check.validate(error_body(e.message, e.type, e.param, e.code))
    assert not check.is_valid({"detail": [{"loc": ["body"], "msg": "x"}]})  # FastAPI's own shape is not it


def test_grader_union_is_the_registrys_top_level_types(doc: dict[str, Any]) -> None:
    from grader import registry

    schemas = doc["components"]["schemas"]
    job_method = resolve(doc, schemas["CreateFineTuningJobRequest"]["properties"]["method"])
    assert job_method is schemas["FineTuneMethod"]
    reinforcement = resolve(doc, job_method["properties"]["reinforcement"])
    assert reinforcement is schemas["FineTuneReinforcementMethod"]
    assert reinforcement["required"] == ["grader"]
    for grader in (reinforcement["properties"]["grader"], schemas["RunGraderRequest"]["properties"]["grader"],
                   schemas["ValidateGraderRequest"]["properties"]["grader"]):
        assert union_types(doc, grader) == registry.top_level_types()
    children = schemas["GraderMulti"]["properties"]["graders"]["additionalProperties"]
    assert union_types(doc, children) == registry.multi_child_types()
    for t in registry.TYPES.values():  # OpenAI's naming: StringCheckGrader -> GraderStringCheck
        assert "Grader" + t.spec.__name__.removesuffix("Grader") in schemas


def test_method_objects_are_typed(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    method = schemas["FineTuneMethod"]
    assert set(method["properties"]["type"]["enum"]) == {"supervised", "dpo", "reinforcement"}
    supervised = resolve(doc, method["properties"]["supervised"])
    assert supervised is schemas["FineTuneSupervisedMethod"]
    assert resolve(doc, supervised["properties"]["hyperparameters"]) is schemas["FineTuneSupervisedHyperparameters"]
    hp = resolve(doc, schemas["FineTuneReinforcementMethod"]["properties"]["hyperparameters"])
    assert hp is schemas["FineTuneReinforcementHyperparameters"]
    assert {"batch_size", "learning_rate_multiplier", "n_epochs"} <= set(hp["properties"])
    dpo = resolve(doc, method["properties"]["dpo"])
    assert dpo is schemas["FineTuneDPOMethod"]
    hp = resolve(doc, dpo["properties"]["hyperparameters"])
    assert hp is schemas["FineTuneDPOHyperparameters"]
    assert {"beta", "batch_size", "learning_rate_multiplier", "n_epochs"} <= set(hp["properties"])


def test_request_bodies_validate_as_the_api_does(doc: dict[str, Any]) -> None:
    """What the API refuses for its shape, the document refuses too: an empty grader was "schema-valid"."""
    validate = body_validator(doc, "ValidateGraderRequest")
    assert validate.is_valid({"grader": MULTI_GRADER})
    assert not validate.is_valid({"grader": {}})
    assert not validate.is_valid({"grader": {**MULTI_GRADER, "graders": {}}})
    assert not validate.is_valid({"grader": {"type": "label_model", "name": "x", "model": "m", "input": [],
                                             "labels": ["a"], "passing_labels": ["a"]}})  # only inside multi
    job = body_validator(doc, "CreateFineTuningJobRequest")
    rft = {"type": "reinforcement", "reinforcement": {"grader": MULTI_GRADER}}
    assert job.is_valid({"model": "m", "training_file": "file-x", "method": rft})
    assert not job.is_valid({"model": "m", "training_file": "file-x",
                             "method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "nope"}}}})
    assert not job.is_valid({"model": "m", "training_file": "file-x",
                             "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": []}}}})
    assert job.is_valid({"model": "m", "training_file": "file-x",
                         "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": "auto"}}}})
    assert not job.is_valid({"model": "m", "training_file": "file-x",
                             "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "much"}}}})


def test_grader_responses_are_typed_and_what_the_library_returns(doc: dict[str, Any]) -> None:
    """The run and validate answers are OpenAI's response objects, not free objects: the grader library's own
    answer for a real sample validates against the document, and a wrong shape does not."""
    import grader

    ops = operations(doc)
    for name, component in (("POST /v1/fine_tuning/alpha/graders/run", "RunGraderResponse"),
                            ("POST /v1/fine_tuning/alpha/graders/validate", "ValidateGraderResponse")):
        assert ops[name]["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": REF + component}
    run = body_validator(doc, "RunGraderResponse")
    answer = grader.run(MULTI_GRADER, "red", {"solution": "red"})
    run.validate(answer)
    errors = doc["components"]["schemas"]["RunGraderErrors"]["properties"]
    assert set(errors) == set(answer["metadata"]["errors"])
    assert not run.is_valid({**answer, "reward": "high"})
    assert not run.is_valid({**answer, "metadata": {**answer["metadata"], "errors": {"other_error": "yes"}}})
    body_validator(doc, "ValidateGraderResponse").validate({"grader": MULTI_GRADER})


def test_names_match_openais_spec(doc: dict[str, Any]) -> None:
    assert OPENAI_COMPONENTS <= set(doc["components"]["schemas"])
    ops = operations(doc)
    assert ops["POST /v1/fine_tuning/jobs"]["operationId"] == "createFineTuningJob"
    assert ops["POST /v1/fine_tuning/alpha/graders/run"]["operationId"] == "runGrader"
    assert ops["GET /v1/files/{file_id}/content"]["responses"]["200"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    assert "multipart/form-data" in ops["POST /v1/files"]["requestBody"]["content"]
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))



class _PokeBody(BaseModel):
    x: int


def test_a_new_route_gets_its_errors_without_an_entry() -> None:
    """A route added later: its statuses come from what it declares, plus its own `responses=`."""
    from fastapi import APIRouter, FastAPI

    from api import openapi

    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.post("/things/{thing_id}/poke", responses={409: {"description": "Poked too often."}})
    def poke(thing_id: str, body: _PokeBody, hard: bool = False) -> dict:
        return {}

    @router.get("/things")
    def things() -> dict:
        return {}

    app.include_router(router)
    openapi.install(app)
    ops = operations(app.openapi())
    poke_op = ops["POST /v1/things/{thing_id}/poke"]
    assert {int(s) for s in poke_op["responses"]} == {200, 400, 401, 404, 409, 413}
    assert poke_op["responses"]["409"]["description"] == "Poked too often."
    assert poke_op["responses"]["409"]["content"]["application/json"]["schema"] == ERROR_REF
    assert {int(s) for s in ops["GET /v1/things"]["responses"]} == {200, 401}


def test_creates_link_to_what_they_made(doc: dict[str, Any]) -> None:
    """Each create links to the operations on the object it returns, for a fuzzer's stateful phase."""
    ops = operations(doc)
    links = ops["POST /v1/files"]["responses"]["200"]["links"]
    assert set(links) == {"retrieveFile", "deleteFile", "downloadFile", "listFileBoxes", "listFileRows"}
    assert links["deleteFile"] == {"operationId": "deleteFile", "parameters": {"file_id": "$response.body#/id"}}
    job_links = ops["POST /v1/fine_tuning/jobs"]["responses"]["200"]["links"]
    assert {"retrieveFineTuningJob", "cancelFineTuningJob", "listFineTuningEvents"} <= set(job_links)
    by_id = {op["operationId"]: name for name, op in ops.items()}
    for created, op in ops.items():
        for link in op["responses"].get("200", {}).get("links", {}).values():
            (param,) = link["parameters"]
            assert f"{{{param}}}" in by_id[link["operationId"]], (created, link)
