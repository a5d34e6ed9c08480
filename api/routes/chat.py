"""/v1/chat/completions and /v1/completions: checked against the caller's project, then proxied to the vLLM
server of the model (serving/)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import get_project
from api.errors import APIError
from api.services.model_access import ModelAccess
from serving import proxy
from serving.manager import ServingManager

router = APIRouter(tags=["chat"])


def _serving(request: Request) -> tuple[ServingManager, ModelAccess]:
    manager = getattr(request.app.state, "serving", None)
    if manager is None:
        raise APIError(501, "Serving is not enabled on this server.", code="serving_disabled")
    return manager, request.app.state.model_access


async def _serve(path: str, request: Request) -> Response:
    # No SessionDep here: this path runs per generated answer, so its checks are cached (the key's by
    # AuthMiddleware, the model's by ModelAccess).
    manager, access = _serving(request)
    project = get_project(request)
    payload, raw = await proxy.read_payload(request, manager.settings)
    folder = await access.folder(project, payload["model"])
    if await proxy.inline_images(manager.settings, payload):  # after the access check, before an engine starts
        raw = None
    engine = await manager.acquire(payload["model"], folder, project_id=project.id)
    return await proxy.forward(manager, engine, path, payload, raw)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve("/v1/chat/completions", request)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _serve("/v1/completions", request)
