"""Rollout records of a job (our extension): stored by the job runner from the trainer's `rollouts` events
(trainer/rollout_records.py), listed with filters and cursor paging."""

from __future__ import annotations

import math
from typing import Any

from sqlmodel import Session, select

from api.errors import APIError, shown
from api.ids import new_id, now
from api.schemas import FineTuningJobRollout
from api.services.pagination import page
from api.tables import Job, Rollout

SPLITS = ("train", "validation")


def add_rollouts(session: Session, job: Job, *, step: int, split: str, records: list[dict[str, Any]]) -> int:
    """Store the records of one `rollouts` event; how many. None when the job already holds records of this step
    and split: a step run again after a resume from an earlier checkpoint keeps its first records, as its
    metrics do."""
    done = session.exec(
        select(Rollout.seq).where(Rollout.job_id == job.id, Rollout.step == step, Rollout.split == split)
    ).first()
    if done is not None:
        return 0
    t = now()
    text = _no_nul if session.get_bind().dialect.name == "postgresql" else (lambda s: s)
    for r in records:
        session.add(Rollout(
            id=new_id("ftrollout-"), job_id=job.id, created_at=t, step=step, split=split, line=r.get("line"),
            group_index=r["group"], sample_index=r["sample"], completion=text(r.get("completion") or ""),
            reward=r.get("reward"), sub_rewards=r.get("sub_rewards") or {}, advantage=r.get("advantage"),
            errors=list(r.get("errors") or []), error_message=text(r.get("error_message")),
            completion_tokens=int(r.get("completion_tokens") or 0), truncated=bool(r.get("truncated")),
        ))
    return len(records)


def _no_nul(s: str | None) -> str | None:
    """A model may sample a NUL character, which PostgreSQL's text columns refuse: stored there as U+FFFD."""
    return s.replace("\x00", "\ufffd") if s else s


def grader_names(job: Job) -> list[str]:
    """The names `sub_rewards` has for this job: a multi grader's keys, else the grader's name."""
    spec = ((job.method or {}).get("reinforcement") or {}).get("grader") or {}
    if spec.get("type") == "multi":
        return sorted(spec.get("graders") or {})
    return [spec["name"]] if spec.get("name") else []


def list_rollouts(
    session: Session, job: Job, *, after: str | None, limit: int, order: str, step: int | None, split: str | None,
    grader: str | None, min_reward: float | None, max_reward: float | None,
) -> tuple[list[Rollout], bool]:
    """A page of the job's records, oldest first unless `order` is "desc". `min_reward` / `max_reward` bound the
    combined reward, or the score of `grader` when one is named (then only records with that score)."""
    for name, v in (("min_reward", min_reward), ("max_reward", max_reward)):
        if v is not None and not math.isfinite(v):
            raise APIError(400, f"Invalid value for '{name}': must be a finite number, got {v}.", param=name,
                           code="invalid_value")
    if min_reward is not None and max_reward is not None and min_reward > max_reward:
        raise APIError(400, f"Invalid value for 'min_reward': {min_reward} is greater than max_reward {max_reward}.",
                       param="min_reward", code="invalid_value")
    stmt = select(Rollout).where(Rollout.job_id == job.id)
    if step is not None:
        stmt = stmt.where(Rollout.step == step)
    if split is not None:
        stmt = stmt.where(Rollout.split == split)
    score = Rollout.reward
    if grader is not None:
        names = grader_names(job)
        if grader not in names:
            known = ", ".join(repr(n) for n in names) or "none"
            raise APIError(400, f"Invalid value for 'grader': the job's graders are {known}; got {shown(grader)}.",
                           param="grader", code="invalid_value")
        score = Rollout.sub_rewards[grader].as_float()  # JSON path: json_extract (SQLite), ->> (PostgreSQL)
        stmt = stmt.where(score.is_not(None))
    if min_reward is not None:
        stmt = stmt.where(score >= min_reward)
    if max_reward is not None:
        stmt = stmt.where(score <= max_reward)
    return page(session, stmt, Rollout, after=after, limit=limit, order=order)


def to_wire(r: Rollout, job: Job) -> FineTuningJobRollout:
    return FineTuningJobRollout(
        id=r.id, created_at=r.created_at, fine_tuning_job_id=r.job_id, step=r.step, split=r.split,
        file_id=job.training_file if r.split == "train" else job.validation_file, line=r.line, group=r.group_index,
        sample=r.sample_index, completion=r.completion, reward=r.reward, sub_rewards=r.sub_rewards,
        advantage=r.advantage, errors=r.errors, error_message=r.error_message,
        completion_tokens=r.completion_tokens, truncated=r.truncated,
    )
