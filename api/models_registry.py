"""Which models exist for a project: base models on disk (HF folders under `{home}/models/` or named in
settings), Hugging Face ids (configured in settings, or already in the hub cache), and the project's finished
fine-tuned models and checkpoints (its own, or shared with it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from api import hub
from api.schemas import ModelObject
from api.settings import Settings
from api.tables import Checkpoint, CheckpointPermission, Job, Project


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path
    created: int


def base_models(settings: Settings) -> dict[str, BaseModel]:
    """Folders holding a `config.json`; the folder name is the model id."""
    found: dict[str, BaseModel] = {}
    candidates = sorted(settings.models_dir.glob("*/config.json")) if settings.models_dir.is_dir() else []
    candidates += [Path(p).expanduser() / "config.json" for p in settings.base_models]
    for cfg in candidates:
        if cfg.is_file():
            folder = cfg.parent.resolve()
            found.setdefault(folder.name, BaseModel(folder.name, folder, int(cfg.stat().st_mtime)))
    return found


def _project_models(session: Session, project: Project) -> list[ModelObject]:
    jobs = session.exec(
        select(Job)
        .where(Job.project_id == project.id, Job.status == "succeeded", Job.fine_tuned_model.is_not(None),
               Job.model_deleted_at.is_(None))
        .order_by(Job.seq)
    ).all()
    out = [ModelObject(id=j.fine_tuned_model, created=j.finished_at or j.created_at, owned_by=project.id) for j in jobs]
    shared = session.exec(
        select(Checkpoint)
        .join(CheckpointPermission, CheckpointPermission.checkpoint == Checkpoint.fine_tuned_model_checkpoint)
        .where(CheckpointPermission.project_id == project.id)
    ).all()
    out += [ModelObject(id=c.fine_tuned_model_checkpoint, created=c.created_at, owned_by=c.project_id) for c in shared]
    return out


def hub_models(settings: Settings) -> list[ModelObject]:
    """Hugging Face ids any project may call: those configured in `base_models` (downloaded on first use) and
    every snapshot in the hub cache that a branch or tag names (a job's model once the job downloaded it)."""
    cached = hub.cached_ids(settings)
    ids = {**{i: (ref, 0) for i, ref in hub.configured(settings).items()}, **cached}
    return [ModelObject(id=i, created=created, owned_by=ref.org) for i, (ref, created) in sorted(ids.items())]


def list_models(session: Session, settings: Settings, project: Project) -> list[ModelObject]:
    bases = [ModelObject(id=m.id, created=m.created, owned_by="vrft") for m in base_models(settings).values()]
    return bases + hub_models(settings) + _project_models(session, project)


def get_model(session: Session, settings: Settings, project: Project, model_id: str) -> ModelObject | None:
    for m in list_models(session, settings, project):
        if m.id == model_id:
            return m
    ref = hub.parse(model_id)
    if ref is not None and hub.cached_snapshot(settings, ref) is not None:  # `org/name@<commit>`, say
        return ModelObject(id=model_id, created=0, owned_by=ref.org)
    ckpt = session.exec(
        select(Checkpoint).where(
            Checkpoint.fine_tuned_model_checkpoint == model_id, Checkpoint.project_id == project.id
        )
    ).first()
    return (
        ModelObject(id=ckpt.fine_tuned_model_checkpoint, created=ckpt.created_at, owned_by=project.id) if ckpt else None
    )


def resolve_trainable(session: Session, settings: Settings, project: Project, model_id: str) -> ModelObject | None:
    """A model a job may start from: a base model, or a fine-tuned model or checkpoint the project can see."""
    return get_model(session, settings, project, model_id)
