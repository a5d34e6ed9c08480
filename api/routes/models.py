"""/v1/models"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api import models_registry
from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import APIError, shown
from api.schemas import ListPage, ModelDeleted, ModelObject
from api.services import model_access

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ListPage[ModelObject])
def list_models(session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ListPage[ModelObject]:
    return ListPage(data=models_registry.list_models(session, settings, project), has_more=False)


@router.get("/models/{model:path}", response_model=ModelObject)
def retrieve_model(model: str, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ModelObject:
    found = models_registry.get_model(session, settings, project, model)
    if found is None:
        raise APIError(
            404,
            f"The model {shown(model, 200)} does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return found


@router.delete("/models/{model:path}", response_model=ModelDeleted)
async def delete_model(model: str, request: Request, session: SessionDep, settings: SettingsDep,
                       storage: StorageDep, project: ProjectDep) -> ModelDeleted:
    """One of the project's fine-tuned models or checkpoints: its engines stop, its weights leave storage."""
    prefix = await run_in_threadpool(model_access.delete_model, session, settings, project, model)
    request.app.state.model_access.forget()
    await request.app.state.serving.unload(model, model_access.cache_folder(settings, model).resolve())
    await run_in_threadpool(model_access.remove_weights, settings, storage, model, prefix)
    return ModelDeleted(id=model, deleted=True)
