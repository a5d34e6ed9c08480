"""Rollout records (trainer/rollout_records.py) from a whole tiny GRPO run: a sample of each step's completions
and every evaluated validation prompt, as `rollouts` events, with the rewards the grader gives their text, the
group's advantages, the grader's errors, token counts and truncation; `rollout_records: 0` writes none."""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict

import pytest

import grader
from grader import ERROR_FLAGS
from tests.helpers import free_port
from tests.trainer.conftest import run_trainer, write_job
from tests.trainer.synth import MULTI_GRADER

MAX_TOKENS = 12


HP = {"rollout_records": 1, "num_generations": 4, "max_completion_length": MAX_TOKENS, "eval_interval": 2, "beta": 0.0}


@pytest.fixture(scope="module")
def records_run(tiny_model, dataset, tmp_path_factory):
    """8 training rows, batch 2, G 4 -> 4 steps; 1 prompt per step recorded; 4 validation rows at steps 2, 4."""
    tmp = tmp_path_factory.mktemp("records")
    job = write_job(tmp, tiny_model, dataset, grader=MULTI_GRADER, hyperparameters=HP)
    rc, events, log = run_trainer(job, tmp)
    assert rc == 0, log[-5000:]
    return events


def _rows(path) -> dict[int, dict]:
    """The file's rows by line number."""
    return {n: json.loads(line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()}


def test_records_per_step_and_split(records_run):
    rollouts = [e for e in records_run if e["type"] == "rollouts"]
    train = [e for e in rollouts if e["split"] == "train"]
    valid = [e for e in rollouts if e["split"] == "validation"]
    assert [e["step"] for e in train] == [1, 2, 3, 4]
    assert [e["step"] for e in valid] == [2, 4]
    for e in train:  # the batch's first prompt, all G completions
        assert [(r["group"], r["sample"]) for r in e["records"]] == [(0, k) for k in range(4)]
        assert len({r["line"] for r in e["records"]}) == 1
    for e in valid:  # every validation prompt, eval_samples (1) completion each
        assert sorted(r["line"] for r in e["records"]) == [1, 2, 3, 4]
        assert sorted(r["group"] for r in e["records"]) == [0, 1, 2, 3]
        assert all(r["advantage"] is None and r["sample"] == 0 for r in e["records"])
    # each step's records follow its metrics event
    seq = {(e["type"], e["step"]): e["seq"] for e in records_run if e["type"] == "metrics"}
    assert all(e["seq"] > seq[("metrics", e["step"])] for e in rollouts)


def test_rewards_are_what_the_grader_gives_the_text(records_run, dataset, tiny_model):
    from transformers import AutoProcessor

    from trainer.model import model_family

    rows = {"train": _rows(dataset["train"]), "validation": _rows(dataset["valid"])}
    records = [(e["split"], r) for e in records_run if e["type"] == "rollouts" for r in e["records"]]
    # the grader as the trainer compiles it: iou's "auto" boxes are the model family's
    boxes = model_family(str(tiny_model)).box_convention_for(AutoProcessor.from_pretrained(tiny_model).image_processor)
    g = grader.compile(MULTI_GRADER, box_convention=boxes)
    graded = g.grade([{"output_text": r["completion"]} for _, r in records], [rows[s][r["line"]] for s, r in records])
    assert len(records) == 4 * 4 + 2 * 4
    for i, (_, r) in enumerate(records):
        assert set(r["sub_rewards"]) == {"colour", "box", "fuzzy"}
        for name, col in graded.sub_rewards.items():
            assert r["sub_rewards"][name] == pytest.approx(col[i], abs=1e-9), (name, r)
        assert r["reward"] == pytest.approx(graded.rewards[i], abs=1e-9)
        expected_errors = sorted(f for f, v in (graded.errors.get(i) or {}).items() if v is True)
        assert r["errors"] == expected_errors and set(r["errors"]) <= set(ERROR_FLAGS)
        assert (r["error_message"] is not None) == bool(expected_errors)
        assert 1 <= r["completion_tokens"] <= MAX_TOKENS
        assert isinstance(r["truncated"], bool) and (not r["truncated"] or r["completion_tokens"] == MAX_TOKENS)


def test_advantages_are_the_groups_normalised_rewards(records_run):
    groups = defaultdict(list)
    for e in records_run:
        if e["type"] == "rollouts" and e["split"] == "train":
            for r in e["records"]:
                groups[(e["step"], r["group"])].append(r)
    assert len(groups) == 4
    for group in groups.values():
        rewards = [r["reward"] for r in group]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1))  # unbiased, as torch.std
        assert sum(r["advantage"] for r in group) == pytest.approx(0.0, abs=1e-4)
        for r in group:
            assert r["advantage"] == pytest.approx((r["reward"] - mean) / (std + 1e-4), rel=1e-4, abs=1e-5)


def test_zero_keeps_no_records(tiny_model, dataset, tmp_path):
    job = write_job(tmp_path, tiny_model, dataset, hyperparameters={
        "rollout_records": 0, "batch_size": 8, "num_generations": 2, "max_completion_length": 4, "eval_interval": 1,
        "max_eval_prompts": 2})
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-5000:]
    assert [e["step"] for e in events if e["type"] == "metrics"] == [1]
    assert not [e for e in events if e["type"] == "rollouts"]


def _layout(events) -> list[tuple]:
    return [(e["step"], e["split"], [(r["group"], r["sample"], r["line"]) for r in e["records"]])
            for e in events if e["type"] == "rollouts"]


def test_two_ranks_record_the_same_prompts(records_run, tiny_model, dataset, tmp_path):
    """Under DeepSpeed's launcher with 2 CPU ranks (one prompt each per step, the validation rows split between
    them), rank 0 writes the same records as one rank does: the step's first prompt, every validation row."""
    job = write_job(tmp_path, tiny_model, dataset, grader=MULTI_GRADER, hyperparameters=HP)
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port())]
    rc, events, log = run_trainer(job, tmp_path, timeout=400, launcher=launcher, env_extra={"OMP_NUM_THREADS": "1"})
    assert rc == 0, log[-5000:]
    assert "2 rank(s)" in events[0]["message"]
    assert _layout(events) == _layout(records_run)
