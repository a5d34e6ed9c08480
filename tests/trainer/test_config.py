"""Hyperparameter resolution ("auto" from the dataset size, OpenAI fields -> settings), the learning-rate
schedule, checkpoint retention and the events file, in-process."""

from __future__ import annotations

import json

import pytest

from trainer.checkpoints import retention
from trainer.engine import lr_at
from trainer.events import EventLog
from trainer.hparams import DPOConfig, GRPOConfig, SFTConfig
from trainer.job_spec import TrainerError


def test_openai_fields_map_to_grpo_settings():
    c = GRPOConfig.resolve(
        {
            "batch_size": 4,
            "n_epochs": 2,
            "compute_multiplier": 1.5,
            "reasoning_effort": "high",
            "learning_rate_multiplier": 2,
            "eval_interval": "auto",
            "eval_samples": 3,
        },
        rows=10,
        world=2,
    )
    assert c.num_generations == 12 and c.max_completion_length == 1024
    assert c.total_steps == 5 and c.eval_interval == 1 and c.eval_samples == 3
    assert c.learning_rate_multiplier == 2.0 and c.beta == 0.04 and c.loss_type == "grpo"
    assert c.zero_stage == 2  # several ranks
    auto = GRPOConfig.resolve({}, rows=40, world=1)
    assert auto.batch_size == 8 and auto.n_epochs == 10 and auto.num_generations == 8
    assert auto.max_completion_length == 256 and auto.total_steps == 50 and auto.eval_interval == 5
    lora = GRPOConfig.resolve({"lora": {"r": 4, "alpha": 8}, "max_completion_length": 32}, rows=4, world=1)
    assert lora.lora.r == 4 and lora.lora.alpha == 8 and lora.max_completion_length == 32


@pytest.mark.parametrize("hp, word", [({"loss_type": "ppo"}, "loss_type"), ({"batch_size": 3}, "multiple"),
                                      ({"beta": -1}, "beta"), ({"n_epochs": "x"}, "n_epochs"),
                                      ({"nonsense": 1}, "unknown"), ({"lora": {"rank": 2}}, "lora"),
                                      ({"reasoning_effort": "max"}, "reasoning_effort")])
def test_bad_hyperparameters_are_user_errors(hp, word):
    with pytest.raises(TrainerError) as e:
        GRPOConfig.resolve(hp, rows=10, world=2)
    assert e.value.code == "invalid_hyperparameters" and word in e.value.message


def test_sft_auto():
    c = SFTConfig.resolve({}, rows=1000, world=1)
    assert c.batch_size == 2 and c.n_epochs == 3 and c.total_steps == 1500
    small = SFTConfig.resolve({}, rows=10, world=2)
    assert small.batch_size == 2 and small.n_epochs == 10


def test_dpo_auto():
    """OpenAI's "auto" for DPO: batch size and epochs as SFT's, beta 0.1; our SFT-style extras resolve too."""
    c = DPOConfig.resolve({"beta": "auto"}, rows=1000, world=1)
    assert (c.batch_size, c.n_epochs, c.total_steps, c.beta) == (2, 3, 1500, 0.1)
    small = DPOConfig.resolve({"beta": 0.5, "lora": {}, "freeze_vision": True}, rows=10, world=2)
    assert (small.batch_size, small.n_epochs, small.beta, small.lora.r, small.freeze_vision) == (2, 10, 0.5, 8, True)
    with pytest.raises(TrainerError, match="beta"):
        DPOConfig.resolve({"beta": 0}, rows=10, world=1)
    with pytest.raises(TrainerError, match="num_generations"):
        DPOConfig.resolve({"num_generations": 4}, rows=10, world=1)  # an RFT setting


def test_lr_schedule_is_a_pure_function_of_the_step():
    assert [lr_at(s, 4, 1.0, "linear", 0) for s in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_at(s, 4, 1.0, "constant", 2) for s in (1, 2, 3, 4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_at(1, 10, 2.0, "cosine", 0) == pytest.approx(2.0)


def test_retention_keeps_best_and_last():
    ck = [
        {"step": s, "metrics": {"valid_reward_mean": v}} for s, v in ((1, 0.5), (2, 0.9), (3, 0.1), (4, 0.7), (5, 0.2))
    ]
    assert [c["step"] for c in retention(ck, 3, "valid_reward_mean")] == [3]
    assert [c["step"] for c in retention(ck, 1, "valid_reward_mean")] == [1, 3, 4]
    ck.append({"step": 6, "metrics": {}})  # a pause checkpoint without a valid reward: kept while last
    assert [c["step"] for c in retention(ck, 2, "valid_reward_mean")] == [1, 3, 5]
    assert [c["step"] for c in retention(ck, 2, None)] == [1, 2, 3, 4]


def test_event_seq_continues_after_a_torn_line(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.message("a")
    log.metrics(1, {"x": float("nan")})
    with path.open("a") as f:
        f.write('{"seq": 3, "type": "mess')  # a crash mid-write
    log2 = EventLog(path)
    log2.error("internal_error", "boom")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3] and lines[1]["data"]["x"] is None
    assert lines[2]["code"] == "internal_error"
    EventLog(path, enabled=False).message("rank 1 writes nothing")
    assert len(path.read_text().splitlines()) == 3
