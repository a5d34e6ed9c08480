"""The rollouts list on each database (SQLite, PostgreSQL): records stored as the job runner stores them
(`api.services.rollouts.add_rollouts`, once per step and split), then listed through the live server: a grader's
score filtered through each database's JSON functions, paging, isolation. (tests/jobs/test_rollouts.py lists the
records of a real training job.)"""

from __future__ import annotations

import time

from sqlmodel import select

from tests.api.test_bad_input import rft
from tests.conftest import make_settings
from tests.helpers import MULTI_GRADER, assert_openai_error, jsonl, rl_row


def _record(group: int, sample: int, colour: float, close: float) -> dict:
    return {"group": group, "sample": sample, "line": group + 1, "completion": f"answer {group}.{sample}",
            "reward": 0.5 * colour + 0.5 * close, "sub_rewards": {"colour": colour, "close": close},
            "advantage": None, "errors": [], "error_message": None, "completion_tokens": 3, "truncated": False}


def test_filters_paging_and_isolation_on_each_database(deployment) -> None:  # noqa: ANN001
    from api.db import session_scope
    from api.services.rollouts import add_rollouts
    from api.tables import Job

    with deployment.http() as h:
        f = h.post("/files", files={"file": ("r.jsonl", jsonl([rl_row(0), rl_row(1)]))},
                   data={"purpose": "fine-tune"}).json()
        for _ in range(600):
            if h.get(f"/files/{f['id']}").json()["status"] == "processed":
                break
            time.sleep(0.05)
        r = h.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": f["id"],
                                              "method": rft(MULTI_GRADER)})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]

    closes = [0.0, 0.25, 0.5, 0.75, 1.0, 0.6]
    batches = {
        (1, "train"): [_record(g, k, float(g == k), closes[2 * g + k]) for g in range(2) for k in range(2)],
        (2, "validation"): [_record(g, 0, 1.0, closes[4 + g]) for g in range(2)],
    }
    settings = make_settings(deployment.env, deployment.server.home)
    with session_scope(settings) as s:
        job = s.exec(select(Job).where(Job.id == job_id)).one()
        for (step, split), records in batches.items():
            assert add_rollouts(s, job, step=step, split=split, records=records) == len(records)
    with session_scope(settings) as s:  # a step run again after a resume: its first records stay
        job = s.exec(select(Job).where(Job.id == job_id)).one()
        assert add_rollouts(s, job, step=1, split="train", records=batches[(1, "train")][:1]) == 0

    stored = [(step, split, r) for (step, split), records in batches.items() for r in records]

    def listed(h, **params) -> list[tuple]:  # noqa: ANN001
        r = h.get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return [(x["step"], x["split"], x["group"], x["sample"]) for x in r.json()["data"]]

    def expected(keep) -> list[tuple]:  # noqa: ANN001
        return [(step, split, r["group"], r["sample"]) for step, split, r in stored if keep(step, split, r)]

    with deployment.http() as h:
        assert listed(h) == expected(lambda *_: True)
        assert listed(h, order="desc") == expected(lambda *_: True)[::-1]
        assert listed(h, step=1) == expected(lambda step, split, r: step == 1)
        assert listed(h, split="validation") == expected(lambda step, split, r: split == "validation")
        assert listed(h, grader="close", min_reward=0.5) == expected(lambda s, p, r: r["sub_rewards"]["close"] >= 0.5)
        assert listed(h, grader="close", min_reward=0.25, max_reward=0.6) == expected(
            lambda s, p, r: 0.25 <= r["sub_rewards"]["close"] <= 0.6)
        assert listed(h, grader="colour", max_reward=0) == expected(lambda s, p, r: r["sub_rewards"]["colour"] <= 0)
        assert listed(h, min_reward=0.5, split="train") == expected(lambda s, p, r: p == "train" and r["reward"] >= 0.5)
        page = h.get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"limit": 2}).json()
        assert page["has_more"] is True and len(page["data"]) == 2 and page["last_id"] == page["data"][1]["id"]
        rest = h.get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"limit": 100, "after": page["last_id"]}).json()
        assert [x["id"] for x in page["data"] + rest["data"]] == [
            x["id"] for x in h.get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"limit": 100}).json()["data"]]
        assert_openai_error(h.get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"grader": "iou"}), 400,
                            param="grader", contains="'close', 'colour'")
    with deployment.http(deployment.other_key) as b:
        assert_openai_error(b.get(f"/fine_tuning/jobs/{job_id}/rollouts"), 404)
