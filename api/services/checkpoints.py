"""Checkpoint permissions: the owner project shares a checkpoint with other projects."""

from __future__ import annotations

from sqlmodel import Session, select

from api.errors import APIError, not_found
from api.ids import new_id, now
from api.schemas import CheckpointPermissionObject
from api.services.pagination import page
from api.tables import Checkpoint, CheckpointPermission, Project


def owned_checkpoint(session: Session, project: Project, name: str) -> Checkpoint:
    ckpt = session.exec(
        select(Checkpoint).where(Checkpoint.fine_tuned_model_checkpoint == name, Checkpoint.project_id == project.id)
    ).first()
    if ckpt is None:
        raise not_found("checkpoint", name, "fine_tuned_model_checkpoint")
    return ckpt


def to_wire(p: CheckpointPermission) -> CheckpointPermissionObject:
    return CheckpointPermissionObject(id=p.id, created_at=p.created_at, project_id=p.project_id)


def grant(session: Session, ckpt: Checkpoint, project_ids: list[str]) -> list[CheckpointPermission]:
    known = set(session.exec(select(Project.id).where(Project.id.in_(project_ids))).all())
    for i, pid in enumerate(project_ids):
        if pid not in known:
            raise APIError(
                400, f"No project found with id '{pid}'.", param=f"project_ids[{i}]", code="project_not_found"
            )
    out = []
    for pid in dict.fromkeys(project_ids):
        perm = session.exec(
            select(CheckpointPermission).where(
                CheckpointPermission.checkpoint == ckpt.fine_tuned_model_checkpoint,
                CheckpointPermission.project_id == pid,
            )
        ).first()
        if perm is None:
            perm = CheckpointPermission(
                id=new_id("cp_"), checkpoint=ckpt.fine_tuned_model_checkpoint, project_id=pid, created_at=now()
            )
            session.add(perm)
        out.append(perm)
    session.commit()
    return out


def list_permissions(
    session: Session, ckpt: Checkpoint, *, after: str | None, limit: int, order: str, project_id: str | None
) -> tuple[list[CheckpointPermission], bool]:
    stmt = select(CheckpointPermission).where(CheckpointPermission.checkpoint == ckpt.fine_tuned_model_checkpoint)
    if project_id:
        stmt = stmt.where(CheckpointPermission.project_id == project_id)
    return page(session, stmt, CheckpointPermission, after=after, limit=limit, order=order)


def revoke(session: Session, ckpt: Checkpoint, permission_id: str) -> None:
    perm = session.exec(
        select(CheckpointPermission).where(
            CheckpointPermission.id == permission_id,
            CheckpointPermission.checkpoint == ckpt.fine_tuned_model_checkpoint,
        )
    ).first()
    if perm is None:
        raise not_found("permission", permission_id, "permission_id")
    session.delete(perm)
    session.commit()
