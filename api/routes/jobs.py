"""/v1/fine_tuning/jobs"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import ProjectDep, SessionDep, SettingsDep
from api.schemas import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, JobCreate, ListPage
from api.services import jobs as svc

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine_tuning"])


@router.post("", response_model=FineTuningJob, response_model_exclude_none=False)
def create_job(body: JobCreate, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> FineTuningJob:
    return svc.to_wire(svc.create_job(session, settings, project, body))


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(
    request: Request, session: SessionDep, project: ProjectDep, after: str | None = None, limit: int = 20
) -> ListPage[FineTuningJob]:
    metadata = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    rows, more = svc.list_jobs(session, project, after=after, limit=limit, metadata=metadata)
    return ListPage(data=[svc.to_wire(j) for j in rows], has_more=more)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
def retrieve_job(fine_tuning_job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    return svc.to_wire(svc.get_job(session, project, fine_tuning_job_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_job(fine_tuning_job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    return svc.to_wire(svc.user_action(session, svc.get_job(session, project, fine_tuning_job_id), "cancel"))


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
def pause_job(fine_tuning_job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    return svc.to_wire(svc.user_action(session, svc.get_job(session, project, fine_tuning_job_id), "pause"))


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
def resume_job(fine_tuning_job_id: str, session: SessionDep, project: ProjectDep) -> FineTuningJob:
    return svc.to_wire(svc.user_action(session, svc.get_job(session, project, fine_tuning_job_id), "resume"))


@router.get("/{fine_tuning_job_id}/events", response_model=ListPage[FineTuningJobEvent])
def list_events(
    fine_tuning_job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None, limit: int = 20
) -> ListPage[FineTuningJobEvent]:
    rows, more = svc.list_events(session, svc.get_job(session, project, fine_tuning_job_id), after=after, limit=limit)
    return ListPage(data=[svc.event_to_wire(e) for e in rows], has_more=more)


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=ListPage[FineTuningJobCheckpoint])
def list_checkpoints(
    fine_tuning_job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None, limit: int = 10
) -> ListPage[FineTuningJobCheckpoint]:
    rows, more = svc.list_checkpoints(
        session, svc.get_job(session, project, fine_tuning_job_id), after=after, limit=limit
    )
    data = [svc.checkpoint_to_wire(c) for c in rows]
    return ListPage.of(data, more)
