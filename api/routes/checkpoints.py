"""/v1/fine_tuning/checkpoints/{checkpoint}/permissions"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request

from api.deps import ProjectDep, SessionDep
from api.schemas import CheckpointPermissionDeleted, CheckpointPermissionObject, ListPage, PermissionCreate
from api.services import checkpoints as svc

router = APIRouter(prefix="/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions", tags=["fine_tuning"])


def _page(rows: list, more: bool) -> ListPage[CheckpointPermissionObject]:
    data = [svc.to_wire(p) for p in rows]
    return ListPage.of(data, more)


@router.post("", response_model=ListPage[CheckpointPermissionObject])
def create_permissions(
    fine_tuned_model_checkpoint: str, body: PermissionCreate, session: SessionDep, project: ProjectDep
) -> ListPage[CheckpointPermissionObject]:
    ckpt = svc.owned_checkpoint(session, project, fine_tuned_model_checkpoint)
    return _page(svc.grant(session, ckpt, body.project_ids), False)


@router.get("", response_model=ListPage[CheckpointPermissionObject])
def list_permissions(
    fine_tuned_model_checkpoint: str,
    session: SessionDep,
    project: ProjectDep,
    after: str | None = None,
    limit: int = 10,
    order: Literal["ascending", "descending"] = "descending",
    project_id: str | None = None,
) -> ListPage[CheckpointPermissionObject]:
    ckpt = svc.owned_checkpoint(session, project, fine_tuned_model_checkpoint)
    rows, more = svc.list_permissions(
        session, ckpt, after=after, limit=limit, order="asc" if order == "ascending" else "desc", project_id=project_id
    )
    return _page(rows, more)


@router.delete("/{permission_id}", response_model=CheckpointPermissionDeleted)
def delete_permission(fine_tuned_model_checkpoint: str, permission_id: str, request: Request, session: SessionDep,
                      project: ProjectDep) -> CheckpointPermissionDeleted:
    svc.revoke(session, svc.owned_checkpoint(session, project, fine_tuned_model_checkpoint), permission_id)
    if (access := getattr(request.app.state, "model_access", None)) is not None:
        access.forget()  # chat on this server stops at once; on others within serving_access_cache_seconds
    return CheckpointPermissionDeleted(id=permission_id, deleted=True)
