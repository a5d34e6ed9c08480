"""The whole trainer as the job runner starts it (`python -m trainer JOB.json`, or DeepSpeed's launcher), on
the tiny Qwen2-VL with a synthetic image dataset: SFT then GRPO (vLLM rollouts from the SFT model), events in
OpenAI's layout, checkpoints that transformers loads, pause/resume equal to a straight run, SIGTERM, crashes,
and two CPU ranks that stay identical."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.trainer.conftest import (
    assert_same_weights,
    pause_then_resume,
    read_events,
    run_trainer,
    start_trainer,
    trainer_env,
    wait_for_event,
    write_job,
)
from tests.trainer.synth import MULTI_GRADER, make_rows, write_jsonl


def _by_type(events, kind):
    return [e for e in events if e["type"] == kind]


def _assert_seq(events):
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


@pytest.fixture(scope="module")
def sft_run(tiny_model, dataset, tmp_path_factory):
    """SFT: 8 rows, batch 4 (two micro-batches of 2), 2 epochs -> 4 steps."""
    tmp = tmp_path_factory.mktemp("sft")
    job = write_job(tmp, tiny_model, dataset, "supervised",
                    hyperparameters={"n_epochs": 2, "batch_size": 4, "micro_batch_size": 2, "eval_interval": 2})
    rc, events, log = run_trainer(job, tmp)
    assert rc == 0, log[-5000:]
    return job, events


def test_sft_smoke(sft_run):
    job, events = sft_run
    _assert_seq(events)
    metrics = _by_type(events, "metrics")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        d = m["data"]
        assert d["step"] == m["step"] and d["total_steps"] == 4
        assert d["train_loss"] > 0 and 0 <= d["train_mean_token_accuracy"] <= 1
        assert set(d["timing"]["step"]) >= {"training", "full_iteration"}
    assert "valid_loss" in metrics[1]["data"] and "full_valid_loss" in metrics[-1]["data"]
    assert metrics[-1]["data"]["train_loss"] < metrics[0]["data"]["train_loss"]  # it learns
    assert metrics[-1]["data"]["memory"]["rss_peak_mb"] < 2000  # the tiny model trains in well under 2 GB
    # A checkpoint at the end of epoch 1; the final model; both load with transformers.
    ckpts = _by_type(events, "checkpoint")
    assert [c["step"] for c in ckpts] == [2] and ckpts[0]["metrics"]["train_loss"] > 0
    (final,) = _by_type(events, "final")
    assert final["path"] == "final" and final["trained_tokens"] > 0 and events[-1]["type"] == "final"
    out = Path(json.loads(job.read_text())["output_dir"])
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for folder in (out / "checkpoints" / "step-2", out / "final"):
        model = AutoModelForImageTextToText.from_pretrained(folder)
        AutoProcessor.from_pretrained(folder)
        assert sum(p.numel() for p in model.parameters()) > 0
    assert (out / "checkpoints" / "step-2" / "trainer_state").is_dir()


@pytest.fixture(scope="module")
def grpo_run(sft_run, dataset, tmp_path_factory):
    """GRPO with vLLM rollouts, starting from the SFT model (vLLM loads the trainer's own output folder)."""
    sft_job, _ = sft_run
    model = Path(json.loads(sft_job.read_text())["output_dir"]) / "final"
    tmp = tmp_path_factory.mktemp("grpo")
    job = write_job(tmp, model, dataset, rollout_engine="vllm", grader=MULTI_GRADER,
                    hyperparameters={"n_epochs": 1, "batch_size": 2, "eval_interval": 1, "keep_checkpoints": 1,
                                     "num_iterations": 2, "beta": 0.04, "loss_type": "dapo"})
    rc, events, log = run_trainer(job, tmp)
    assert rc == 0, log[-5000:]
    return job, events, tmp


def test_grpo_smoke_events_in_openai_layout(grpo_run):
    job, events, _ = grpo_run
    _assert_seq(events)
    metrics = _by_type(events, "metrics")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        d = m["data"]
        assert d["step"] == m["step"] and d["total_steps"] == 4
        scores = d["scores"]
        assert 0 <= scores["train_reward_mean"] <= 1 and 0 <= scores["valid_reward_mean"] <= 1
        assert {g["name"] for g in scores["graders"]} == {"colour", "box", "fuzzy"}
        assert {g["type"] for g in scores["graders"]} == {"string_check", "iou", "text_similarity"}
        assert all("train_reward_mean" in g and "valid_reward_mean" in g for g in scores["graders"])
        (errors,) = d["errors"]["graders"]
        assert (
            errors["name"] == "visual"
            and "train_other_error_mean" in errors
            and "valid_sample_parse_error_count" in errors
        )
        assert set(d["timing"]["step"]) == {"sampling", "training", "eval", "full_iteration"}
        t = d["train"]
        for k in ("reward_std", "frac_reward_zero_std", "kl", "clip_ratio", "completion_length_mean", "grad_norm"):
            assert t[k] is not None and t[k] >= 0, k
        assert 1 <= t["completion_length_mean"] <= 12
        assert m["message"].startswith(f"Step {m['step']}/4: train mean reward=")
    assert metrics[0]["data"]["train"]["kl"] == 0.0  # the policy is the reference before the first step
    assert metrics[-1]["data"]["memory"]["rss_peak_mb"] < 2000  # vLLM in-process included
    assert any(m["data"]["train"]["kl"] > 0 for m in metrics[1:])


def test_grpo_checkpoints_best_and_last_kept(grpo_run):
    job, events, _ = grpo_run
    out = Path(json.loads(job.read_text())["output_dir"])
    made = {c["step"]: c for c in _by_type(events, "checkpoint")}
    assert sorted(made) == [1, 2, 3]  # one per evaluation, not at the last step (final/ is)
    assert all("valid_reward_mean" in c["metrics"] for c in made.values())
    deleted = {d["step"] for d in _by_type(events, "checkpoint_deleted")}
    kept = {int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")}
    assert kept == set(made) - deleted
    best = max(made.values(), key=lambda c: (c["metrics"]["valid_reward_mean"], c["step"]))["step"]
    assert kept == {best, 3}  # keep_checkpoints=1: the best by valid reward, plus the last
    # Only the newest keeps the optimizer state; every kept one is a loadable HF folder.
    assert (out / "checkpoints" / "step-3" / "trainer_state").is_dir()
    from transformers import AutoModelForImageTextToText

    for step in kept:
        AutoModelForImageTextToText.from_pretrained(out / "checkpoints" / f"step-{step}")
    AutoModelForImageTextToText.from_pretrained(out / "final")


def test_pause_then_resume_equals_straight_run(grpo_run, tmp_path):
    """SIGUSR1 -> checkpoint + `paused` + exit 0; resume_from -> same final weights as the straight run."""
    job, events, _ = grpo_run
    paused, all_events, out = pause_then_resume(job, tmp_path)
    assert paused["step"] < 4, paused
    _assert_seq(all_events)  # seq continues across the restart
    steps = [e["step"] for e in all_events if e["type"] == "metrics"]
    assert steps == [1, 2, 3, 4]  # no step lost or repeated
    assert_same_weights(Path(json.loads(job.read_text())["output_dir"]) / "final", out / "final")
    # Same rewards at every step as the straight run (same samples).
    straight_r = [e["data"]["scores"]["train_reward_mean"] for e in _by_type(events, "metrics")]
    resumed_r = [e["data"]["scores"]["train_reward_mean"] for e in _by_type(all_events, "metrics")]
    assert resumed_r == pytest.approx(straight_r, abs=1e-6)


def test_sigterm_stops_within_seconds(tiny_model, dataset, tmp_path):
    job = write_job(tmp_path, tiny_model, dataset, hyperparameters={"n_epochs": 20})
    proc = start_trainer(job, trainer_env(tmp_path), tmp_path / "trainer.log")
    wait_for_event(job, proc, lambda e: e["type"] == "metrics")
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(30)
    elapsed = time.monotonic() - t
    assert rc == 143, (tmp_path / "trainer.log").read_text()[-3000:]
    assert elapsed < 10, elapsed
    assert read_events(job)[-1]["type"] == "message" and "SIGTERM" in read_events(job)[-1]["message"]


def test_bad_row_found_late_gives_an_actionable_error(tiny_model, dataset, tmp_path):
    rows = make_rows(tmp_path / "img", 6, seed=3)
    rows[5]["messages"][1]["content"][0]["image_url"]["url"] = (tmp_path / "missing.png").as_uri()
    bad = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "valid": dataset["valid"]}
    job = write_job(tmp_path, tiny_model, bad)
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 1, log[-3000:]
    err = events[-1]
    assert err["type"] == "error" and err["code"] == "invalid_training_file"
    assert "line 6" in err["message"] and "image" in err["message"]


def test_response_format_on_the_hf_engine_fails_with_an_actionable_error(tiny_model, dataset, tmp_path):
    """The API refuses this combination at job creation; a JOB.json written by other means still gets a clear error."""
    job = write_job(tmp_path, tiny_model, dataset, response_format={"type": "json_object"})
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 1, log[-3000:]
    err = events[-1]
    assert err["type"] == "error" and err["code"] == "unsupported_response_format"
    assert "VRFT_ROLLOUT_ENGINE=vllm" in err["message"]


def test_two_cpu_ranks_under_the_deepspeed_launcher_stay_identical(tiny_model, dataset, tmp_path):
    job = write_job(tmp_path, tiny_model, dataset, rollout_engine="vllm",
                    hyperparameters={"n_epochs": 1, "batch_size": 2, "eval_interval": 2, "zero_stage": 2})
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                "--master_port", str(free_port())]
    rc, events, log = run_trainer(job, tmp_path, timeout=400, launcher=launcher,
                                  env_extra={"VRFT_RANK_DIGESTS": "1", "OMP_NUM_THREADS": "1"})
    assert rc == 0, log[-5000:]
    assert "2 rank(s)" in events[0]["message"]
    assert [e["step"] for e in _by_type(events, "metrics")] == [1, 2, 3, 4]
    digests = sorted((tmp_path / "out" / "rank-digests").glob("rank-*.json"))
    assert len(digests) == 2
    a, b = (json.loads(p.read_text()) for p in digests)
    assert a["step"] == b["step"] == 4 and a["sha256"] == b["sha256"]
