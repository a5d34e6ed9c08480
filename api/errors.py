"""The one error shape of the API, `{"error": {"message", "type", "param", "code"}}`, and the one mapper from
exceptions to responses. Routes and services raise `APIError`, serving raises its `ServingError` (sent the same
way); everything else becomes a sanitised 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.interface import ServingError

log = logging.getLogger("vrft.api")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


class APIError(Exception):
    """An error the caller can act on. `param` names the offending field (dotted path) or file line."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # noqa: A002  (the wire field is called type)
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status_code, "invalid_request_error")
        self.headers = headers


MAX_MESSAGE_CHARS = 2000
"""An error message is cut past this: whatever it echoes, a tenant's megabyte-long value is not sent back."""


def shown(value: object, limit: int = 64) -> str:
    """A value a caller sent, quoted for an error message and cut to `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value) if isinstance(value, str) else text
    return f"{text[:limit]!r}".removesuffix("'") + f"...' ({len(text)} characters)"


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"No {kind} found with id {shown(ident)}.", param=param, code=f"{kind}_not_found".replace(" ", "_")
    )


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:  # noqa: A002
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    headers = dict(exc.headers or {})
    # 4xx answers are final: tell the SDK not to retry them (it retries 409 and 429 by default).
    if exc.status_code < 500:
        headers.setdefault("x-should-retry", "false")
    if exc.status_code == 413:  # close the connection: else the server reads (and drops) the rest of the body
        headers["connection"] = "close"
    message = exc.message if len(exc.message) <= MAX_MESSAGE_CHARS else exc.message[:MAX_MESSAGE_CHARS] + "..."
    return JSONResponse(error_body(message, exc.type, exc.param, exc.code), exc.status_code, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header", "form")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and p.startswith("function-") or p in ("tagged-union", "union"):
            continue
        else:
            out += ("." if out else "") + str(p)
    return out or None


def validation_error_to_api_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg, kind = first.get("msg", "Invalid request."), first.get("type")
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: '{param}'.", param=param, code="unknown_parameter"
        )
    return APIError(400, f"Invalid value for '{param}': {msg}.", param=param, code="invalid_value")


def allowed_methods(req: Request) -> list[str]:
    """The methods some route serves at this request's path, for a 405's Allow header. (Starlette's own 405
    names the methods of the first route whose path matches, and a path such as /v1/files/{id} has several.)"""
    from starlette.routing import Match

    methods: set[str] = set()
    scope = {**req.scope, "method": "*"}
    for route in req.app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ServingError)
    async def _serving_error(_req: Request, exc: ServingError) -> JSONResponse:
        return error_response(APIError(exc.status_code, exc.message, param=exc.param, code=exc.code, type=exc.type,
                                       headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error_to_api_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = APIError(404, f"Unknown request URL: {req.method} {shown(req.url.path, 200)}.", code="unknown_url")
        elif exc.status_code == 405:
            err = APIError(405, f"Method {req.method} is not allowed on {req.url.path}.", code="method_not_allowed",
                           headers={"Allow": ", ".join(allowed_methods(req))})
        elif exc.status_code == 413:  # a body past its route's cap (api.middleware.BodyLimitMiddleware)
            err = APIError(413, str(exc.detail), code="request_too_large")
        else:
            err = APIError(exc.status_code, str(exc.detail))
        return error_response(err)
