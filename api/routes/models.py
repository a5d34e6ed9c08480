"""/v1/models"""

from __future__ import annotations

from fastapi import APIRouter

from api import models_registry
from api.deps import ProjectDep, SessionDep, SettingsDep
from api.errors import APIError, shown
from api.schemas import ListPage, ModelObject

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ListPage[ModelObject])
def list_models(session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ListPage[ModelObject]:
    return ListPage(data=models_registry.list_models(session, settings, project), has_more=False)


@router.get("/models/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> ModelObject:
    model = models_registry.get_model(session, settings, project, model_id)
    if model is None:
        raise APIError(
            404,
            f"The model {shown(model_id, 200)} does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return model
