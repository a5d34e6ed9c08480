"""/v1/fine_tuning/jobs/{id}/rollouts: the job's rollout records (our extension; api/services/rollouts.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import ProjectDep, SessionDep
from api.schemas import FineTuningJobRollout, ListPage
from api.services import jobs as jobs_svc
from api.services import rollouts as svc

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine_tuning"])


@router.get("/{fine_tuning_job_id}/rollouts", response_model=ListPage[FineTuningJobRollout])
def list_rollouts(
    fine_tuning_job_id: str,
    session: SessionDep,
    project: ProjectDep,
    after: str | None = None,
    limit: int = 20,
    order: Annotated[Literal["asc", "desc"], Query(description="by the order they were stored; asc: oldest first")]
    = "asc",
    step: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="only this optimizer step's records")] = None,
    split: Annotated[Literal["train", "validation"] | None, Query(description="only training or validation")] = None,
    grader: Annotated[str | None, Query(description="min_reward / max_reward bound this grader's score")] = None,
    min_reward: Annotated[float | None, Query(description="the reward (or the grader's score) at least")] = None,
    max_reward: Annotated[float | None, Query(description="the reward (or the grader's score) at most")] = None,
) -> ListPage[FineTuningJobRollout]:
    job = jobs_svc.get_job(session, project, fine_tuning_job_id)
    rows, more = svc.list_rollouts(session, job, after=after, limit=limit, order=order, step=step, split=split,
                                   grader=grader, min_reward=min_reward, max_reward=max_reward)
    data = [svc.to_wire(r, job) for r in rows]
    return ListPage.of(data, more)
