"""The OpenAPI document at /openapi.json, made to describe the API as it answers (FastAPI's, post-processed).

* Errors: each operation lists the statuses it really returns, each with OpenAI's error body (the `Error`
  and `ErrorResponse` components), derived from the route: a /v1 path -> 401 (api.middleware.AuthMiddleware),
  path parameters -> 404, query parameters or a body -> 400 (api.errors maps validation errors there; FastAPI's
  422 and its HTTPValidationError are dropped), a body -> 413 (api.middleware.BodyLimitMiddleware). What a
  route's service adds (a 409, a rate limit, the serving proxy's 5xx) is declared once, in OPERATIONS, or in the
  route's own `responses={status: {...}}`; an error status there gets the error body.
* Names: components and operation ids are those of OpenAI's published spec (openai/openai-openapi) where it
  has the endpoint (RENAMES, OPERATIONS); a grader spec class `FooGrader` is the component `GraderFoo`.
* Request bodies the routes read themselves (a multipart upload, the proxied chat body) are declared in
  OPERATIONS; JSON bodies come from their pydantic models, the grader typed by grader.wire.GraderObject.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import FILE_PURPOSES

REF = "#/components/schemas/"

ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {
            "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "message": {"type": "string"},
            "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "type": {"type": "string"},
        },
        "required": ["type", "message", "param", "code"],
        "additionalProperties": False,
    },
    "ErrorResponse": {
        "type": "object",
        "properties": {"error": {"$ref": REF + "Error"}},
        "required": ["error"],
        "additionalProperties": False,
    },
}
"""OpenAI's `Error` and `ErrorResponse` (api.errors.error_body writes exactly these four fields)."""

ERROR_DESCRIPTIONS = {
    400: "Invalid request: a parameter or the body is malformed or refused; `param` names the field.",
    401: "No API key, or one that is unknown or revoked.",
    403: "The key may not do this.",
    404: "The resource does not exist in the caller's project.",
    409: "The resource changed state while the request ran; retry.",
    413: "The request body is larger than this endpoint accepts.",
    429: "Too many requests of this kind in flight; retry after `Retry-After` seconds.",
    501: "This server does not provide the endpoint (e.g. serving is disabled).",
    502: "The model server failed or is unreachable.",
    503: "The model server is starting or has no room yet; retry after `Retry-After` seconds.",
    504: "The work did not finish within its time limit.",
}

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}
"""Sent with these statuses (api/routes/graders.py's 429; serving/manager.py's 503)."""
HEADERS_BY_STATUS = {429: RETRY_AFTER, 503: RETRY_AFTER}

_CHAT_ERRORS = {400, 404, 501, 502, 503, 504}
"""The serving proxy (serving/proxy.py, serving/manager.py): a bad body or image, a model the caller may not
use, serving disabled, the engine failing, starting or silent."""
_STATE_CHANGE_ERRORS = {400, 409}
"""A transition the job's state forbids (400 invalid_state), or one that lost a race with the worker (409)."""

OPERATIONS: dict[str, dict[str, Any]] = {
    "POST /v1/files": {
        "operationId": "createFile",
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "The file to upload."},
                    "purpose": {"type": "string", "enum": list(FILE_PURPOSES),
                                "description": "The intended purpose of the file."},
                    "expires_after[anchor]": {"type": "string", "enum": ["created_at"],
                                              "description": "The anchor of the expiry: `created_at`."},
                    "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000,
                                               "description": "Seconds after the anchor when the file expires."},
                },
                "required": ["file", "purpose"],
                "dependentRequired": {"expires_after[anchor]": ["expires_after[seconds]"],
                                      "expires_after[seconds]": ["expires_after[anchor]"]},
            }}},
        },
    },
    "GET /v1/files": {"operationId": "listFiles"},
    "GET /v1/files/{file_id}": {"operationId": "retrieveFile"},
    "DELETE /v1/files/{file_id}": {"operationId": "deleteFile"},
    "GET /v1/files/{file_id}/content": {
        "operationId": "downloadFile",
        "responses": {"200": {"description": "The file's bytes.", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    },
    "POST /v1/files/{file_id}/boxes": {"operationId": "listFileBoxes"},  # ours
    "GET /v1/files/{file_id}/rows": {"operationId": "listFileRows"},  # ours
    "POST /v1/fine_tuning/jobs": {"operationId": "createFineTuningJob"},
    "GET /v1/fine_tuning/jobs": {"operationId": "listPaginatedFineTuningJobs"},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": {"operationId": "retrieveFineTuningJob"},
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": {"operationId": "cancelFineTuningJob",
                                                              "errors": _STATE_CHANGE_ERRORS},
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": {"operationId": "pauseFineTuningJob",
                                                             "errors": _STATE_CHANGE_ERRORS},
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": {"operationId": "resumeFineTuningJob",
                                                              "errors": _STATE_CHANGE_ERRORS},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events": {"operationId": "listFineTuningEvents"},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": {"operationId": "listFineTuningJobCheckpoints"},
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/rollouts": {"operationId": "listFineTuningJobRollouts"},  # ours
    "POST /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": {
        "operationId": "createFineTuningCheckpointPermission"},
    "GET /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": {
        "operationId": "listFineTuningCheckpointPermissions"},
    "DELETE /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions/{permission_id}": {
        "operationId": "deleteFineTuningCheckpointPermission"},
    "GET /v1/models": {"operationId": "listModels"},
    "GET /v1/models/{model}": {"operationId": "retrieveModel"},
    "DELETE /v1/models/{model}": {"operationId": "deleteModel", "errors": {403}},
    "POST /v1/uploads": {"operationId": "createUpload"},
    "POST /v1/uploads/{upload_id}/parts": {
        "operationId": "addUploadPart",
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {"data": {"type": "string", "format": "binary",
                                    "description": "The chunk of bytes for this Part (at most 64 MB)."}},
            "required": ["data"],
        }}}},
    },
    "POST /v1/uploads/{upload_id}/complete": {"operationId": "completeUpload"},
    "POST /v1/uploads/{upload_id}/cancel": {"operationId": "cancelUpload", "errors": {400}},
    "POST /v1/fine_tuning/alpha/graders/validate": {"operationId": "validateGrader"},
    "POST /v1/fine_tuning/alpha/graders/run": {"operationId": "runGrader", "errors": {429, 504}},
    "POST /v1/chat/completions": {"operationId": "createChatCompletion", "errors": _CHAT_ERRORS,
                                  "requestBody": "chat"},
    "POST /v1/completions": {"operationId": "createCompletion", "errors": _CHAT_ERRORS, "requestBody": "completion"},
}
"""What the route cannot tell, by `METHOD /path`: OpenAI's operation id, the error statuses its service adds
(`errors`), a request body it reads itself, a success response that is not JSON. An entry whose route does
not exist is ignored."""


def _proxied_body(required: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """A body the serving proxy reads (`model`, `n`, the messages' images) and vLLM validates (the rest)."""
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object",
        "properties": {"model": {"type": "string", "minLength": 1,
                                 "description": "A model the caller may use (GET /v1/models)."},
                       "n": {"type": "integer", "minimum": 1}, "stream": {"type": "boolean"}, **extra},
        "required": required,
    }}}}


def proxied_body(kind: str, settings: Any) -> dict[str, Any]:
    """PROXIED_BODIES[kind], `n` capped at this server's `serving_max_n` (the proxy refuses more)."""
    body = copy.deepcopy(PROXIED_BODIES[kind])
    if settings is not None:
        body["content"]["application/json"]["schema"]["properties"]["n"]["maximum"] = settings.serving_max_n
    return body


PROXIED_BODIES = {
    "chat": _proxied_body(["model", "messages"], {"messages": {"type": "array", "items": {"type": "object"}}}),
    "completion": _proxied_body(["model", "prompt"], {"prompt": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]}}),
}

RENAMES = {
    "JobCreate": "CreateFineTuningJobRequest",
    "Method": "FineTuneMethod",
    "SupervisedMethod": "FineTuneSupervisedMethod",
    "ReinforcementMethod": "FineTuneReinforcementMethod",
    "DpoMethod": "FineTuneDPOMethod",
    "DPOMethod": "FineTuneDPOMethod",
    "SupervisedHyperparameters": "FineTuneSupervisedHyperparameters",
    "ReinforcementHyperparameters": "FineTuneReinforcementHyperparameters",
    "DpoHyperparameters": "FineTuneDPOHyperparameters",
    "DPOHyperparameters": "FineTuneDPOHyperparameters",
    "FileObject": "OpenAIFile",
    "FileDeleted": "DeleteFileResponse",
    "ModelObject": "Model",
    "ModelDeleted": "DeleteModelResponse",
    "UploadObject": "Upload",
    "UploadPartObject": "UploadPart",
    "UploadCreate": "CreateUploadRequest",
    "UploadComplete": "CompleteUploadRequest",
    "CheckpointPermissionObject": "FineTuningCheckpointPermission",
    "CheckpointPermissionDeleted": "DeleteFineTuningCheckpointPermissionResponse",
    "PermissionCreate": "CreateFineTuningCheckpointPermissionRequest",
    "GraderRunRequest": "RunGraderRequest",
    "GraderValidateRequest": "ValidateGraderRequest",
    "ListPage_FileObject_": "ListFilesResponse",
    "ListPage_FineTuningJob_": "ListPaginatedFineTuningJobsResponse",
    "ListPage_FineTuningJobEvent_": "ListFineTuningJobEventsResponse",
    "ListPage_FineTuningJobCheckpoint_": "ListFineTuningJobCheckpointsResponse",
    "ListPage_CheckpointPermissionObject_": "ListFineTuningCheckpointPermissionResponse",
    "ListPage_ModelObject_": "ListModelsResponse",
    "ListPage_FineTuningJobRollout_": "ListFineTuningJobRolloutsResponse",
}
"""Our model names -> OpenAI's component names (the grader specs are renamed by rule, in `renames()`)."""


def renames() -> dict[str, str]:
    from grader import registry

    graders = {t.spec.__name__: "Grader" + t.spec.__name__.removesuffix("Grader") for t in registry.TYPES.values()}
    return {**RENAMES, **graders}


def error_response(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS.get(status, "Error."),
        "content": {"application/json": {"schema": {"$ref": REF + "ErrorResponse"}}},
    }
    if status in HEADERS_BY_STATUS:
        out["headers"] = copy.deepcopy(HEADERS_BY_STATUS[status])
    return out


def derived_errors(path: str, op: dict[str, Any]) -> set[int]:
    """The error statuses any route answers, from what the operation declares (module docstring)."""
    where = {p.get("in") for p in op.get("parameters", [])}
    out = set()
    if path.startswith("/v1/"):
        out.add(401)
    if "path" in where:
        out.add(404)
    if "query" in where or "requestBody" in op:
        out.add(400)
    if "requestBody" in op:
        out.add(413)
    return out


def _rename_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (_renamed_ref(v, names) if k == "$ref" and isinstance(v, str) else
                    {m: _renamed_ref(r, names) for m, r in v.items()} if k == "mapping" and isinstance(v, dict) else
                    _rename_refs(v, names)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename_refs(v, names) for v in node]
    return node


def _renamed_ref(ref: str, names: dict[str, str]) -> str:
    name = ref.removeprefix(REF)
    return REF + names[name] if ref.startswith(REF) and name in names else ref


def add_links(doc: dict[str, Any]) -> None:
    """OpenAPI links from each create (a POST at a path with no parameter, say /v1/uploads) to the operations on
    what it made (/v1/uploads/{upload_id}/...), the path parameter from the response's `id`: the stateful
    phase of a fuzzer follows them (made, read, changed, deleted, read again)."""
    paths = doc.get("paths", {})
    for path, ops in paths.items():
        create = ops.get("post")
        if create is None or "{" in path or "200" not in create["responses"]:
            continue
        links = {}
        for target_path, target_ops in paths.items():
            head, _, rest = target_path.partition(path + "/{")
            if head or not rest:
                continue
            param = rest.split("}", 1)[0]
            for target in target_ops.values():
                links[target["operationId"]] = {"operationId": target["operationId"],
                                                "parameters": {param: "$response.body#/id"}}
        if links:
            create["responses"]["200"]["links"] = links


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(copy.deepcopy(ERROR_SCHEMAS))
    doc["components"]["securitySchemes"] = {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            extra = OPERATIONS.get(f"{method.upper()} {path}", {})
            if "operationId" in extra:
                op["operationId"] = extra["operationId"]
            body = extra.get("requestBody")
            if isinstance(body, str):
                op["requestBody"] = proxied_body(body, getattr(app.state, "settings", None))
            elif body is not None:
                op["requestBody"] = copy.deepcopy(body)
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            responses.update(copy.deepcopy(extra.get("responses", {})))
            if path.startswith("/v1/"):
                op["security"] = [{"ApiKeyAuth": []}]
            for status in derived_errors(path, op) | set(extra.get("errors", ())):
                responses.setdefault(str(status), error_response(status))
            for status, response in responses.items():  # a route's own `responses=` error without a body
                typed = any("schema" in media for media in response.get("content", {}).values())
                if status.isdigit() and int(status) >= 400 and not typed:
                    error = error_response(int(status))
                    responses[status] = {**error, **response, "content": error["content"]}
    add_links(doc)
    names = {old: new for old, new in renames().items() if old in schemas and new not in schemas}
    for old, new in names.items():
        schemas[new] = schemas.pop(old)
        if schemas[new].get("title") == old:
            schemas[new]["title"] = new
    doc = _rename_refs(doc, names)
    doc["components"]["schemas"] = dict(sorted(doc["components"]["schemas"].items()))
    return doc


def install(app: FastAPI) -> None:
    """Serve `build(app)` at /openapi.json (built on first use, once every route is in)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

