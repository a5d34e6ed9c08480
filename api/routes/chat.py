"""/v1/chat/completions and /v1/completions: checked against the caller's project, then proxied to the vLLM
server of the model (serving/)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import APIError
from serving import access, proxy
from serving.manager import ServingManager

router = APIRouter(tags=["chat"])


def _manager(request: Request) -> ServingManager:
    manager = getattr(request.app.state, "serving", None)
    if manager is None:
        raise APIError(501, "Serving is not enabled on this server.", code="serving_disabled")
    return manager


async def _serve(path: str, request: Request, project: ProjectDep, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Response:
    manager = _manager(request)
    payload, raw = await proxy.read_payload(request)
    model_id = payload["model"]
    folder = await run_in_threadpool(access.resolve, session, settings, storage, project, model_id)
    engine = await manager.acquire(model_id, folder)
    return await proxy.forward(manager, engine, path, payload, raw)


@router.post("/chat/completions")
async def chat_completions(request: Request, project: ProjectDep, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Response:
    return await _serve("/v1/chat/completions", request, project, session, settings, storage)


@router.post("/completions")
async def completions(request: Request, project: ProjectDep, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> Response:
    return await _serve("/v1/completions", request, project, session, settings, storage)
