"""DPO (trainer/dpo.py) on the tiny models: the loss by hand, the answer log-probs equal to those of full
sequences, and whole jobs (`python -m trainer JOB.json`) on synthetic grounding pairs (the right box preferred
to the same box in the wrong coordinate space) that raise the margin on held-out pairs over the starting model;
with LoRA and freeze_vision on LLaVA-OneVision, and under ZeRO-3 equal to ZeRO-0."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

import synthetic
from tests.trainer.conftest import (
    assert_same_weights,
    load_safetensors,
    read_events,
    run_trainer,
    start_trainer,
    trainer_env,
    wait_for_event,
)
from trainer.dpo import answer_logps, dpo_loss, measure, pair_batches, pair_of
from trainer.families import family_of

BETA = 0.1


# ------------------------------------------------------------------------------------------- the loss


def test_dpo_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 5 for _ in range(4))
    loss, rw, rl = dpo_loss(pc, pr, rc, rr, BETA)
    for i in range(6):
        d = BETA * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        assert loss[i].item() == pytest.approx(math.log1p(math.exp(-d)), rel=1e-5)  # -log sigmoid(d)
        assert rw[i].item() == pytest.approx(BETA * (pc[i] - rc[i]).item(), rel=1e-5)
        assert rl[i].item() == pytest.approx(BETA * (pr[i] - rr[i]).item(), rel=1e-5)


def test_dpo_gradient_raises_the_preferred_and_lowers_the_other():
    pc, pr = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.zeros(3), torch.zeros(3), BETA)
    assert loss.tolist() == pytest.approx([math.log(2)] * 3)  # policy = reference: -log sigmoid(0)
    loss.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises log pi(y_w), lowers log pi(y_l)
    assert pc.grad.tolist() == pytest.approx([-BETA / 2] * 3)  # d/dx -log sigmoid(beta x) at 0 = -beta / 2


# ----------------------------------------------------------------------------------------- the data


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    """Grounding preference rows: 32 to train on, 16 held out (another stream of rows)."""
    d = tmp_path_factory.mktemp("pairs")
    out = {}
    for split, n in (("train", 32), ("valid", 16)):
        rows = synthetic.generate("grounding", n, seed=0, split=split, short=True, dpo=True, wrong="space")
        out[split] = d / f"{split}.jsonl"
        out[split].write_bytes(synthetic.to_jsonl(rows))
    return out


def test_the_answer_log_probs_are_those_of_the_full_sequence(tiny_model, pairs):
    """Shared prompt pass + both answers == each answer's tokens scored in prompt + answer, as the processor
    renders the whole conversation (images expanded, M-RoPE positions by the model itself)."""
    from trainer.data import ChatData, read_jsonl
    from trainer.model import load_model, load_processor

    processor = load_processor(str(tiny_model), True)
    rows, lines = read_jsonl(pairs["valid"])
    data = ChatData(rows, lines, processor, True, "pairs")
    model = load_model(str(tiny_model), True, torch.float32).eval()
    batch = [pair_of(data, i, 1 << 30) for i in range(3)]
    (mb,) = pair_batches(batch, 3, processor.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        ours = answer_logps(model, mb, shared_prefix=True)  # [6]
        for k, (prompt, chosen, rejected) in enumerate(batch):
            for j, (key, answer) in enumerate((("preferred_output", chosen), ("non_preferred_output", rejected))):
                msgs = rows[k]["input"]["messages"] + rows[k][key]
                text = processor.apply_chat_template(
                    [{"role": m["role"], "content": m["content"] if isinstance(m["content"], list)
                      else [{"type": "text", "text": m["content"]}]} for m in msgs], tokenize=False)
                enc = processor(text=[text], images=prompt.images, return_tensors="pt")
                ids = enc["input_ids"][0]
                assert ids[:len(prompt.input_ids)].tolist() == prompt.input_ids
                assert ids[len(prompt.input_ids):].tolist() == answer  # the answer and its end-of-turn tokens
                logits = model(**enc).logits[0, :-1].float()  # [T-1, V], position t predicts t+1
                logp = torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]
                full = logp[len(prompt.input_ids) - 1:].sum()
                assert ours[2 * k + j].item() == pytest.approx(full.item(), abs=2e-4)


# ----------------------------------------------------------------------------------------- the jobs


def write_dpo_job(folder: Path, model: Path, data: dict, **hp) -> Path:
    from trainer.job_spec import JobSpec

    folder.mkdir(parents=True, exist_ok=True)
    spec = JobSpec(job_id="ftjob-dpo", method="dpo", model_path=str(model), train_file=str(data["train"]),
                   validation_file=str(data["valid"]), output_dir=str(folder / "out"),
                   hyperparameters={"n_epochs": 1, "batch_size": 8, "eval_interval": 2, "beta": BETA, **hp}, seed=3)
    spec.write(folder / "job.json")
    return folder / "job.json"


def metrics_of(events: list[dict]) -> list[dict]:
    return [e["data"] for e in events if e["type"] == "metrics"]


@pytest.fixture(scope="module")
def dpo_run(tiny_model, pairs, tmp_path_factory):
    """32 pairs, batch 8 (two micro-batches of 4): 4 steps, evaluations at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("dpo")
    job = write_dpo_job(tmp, tiny_model, pairs, micro_batch_size=4)
    rc, events, log = run_trainer(job, tmp)
    assert rc == 0, log[-5000:]
    return tmp / "out", events


def test_dpo_events_in_openai_layout_with_margins(dpo_run):
    out, events = dpo_run
    metrics = metrics_of(events)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(m["total_steps"] == 4 for m in metrics)
    for m in metrics:
        assert m["train_loss"] > 0 and 0 <= m["train_reward_accuracy"] <= 1
        assert m["train_reward_margin"] == pytest.approx(m["train_chosen_reward"] - m["train_rejected_reward"],
                                                         abs=1e-6)
    first = metrics[0]  # the policy is the reference before its first update
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["train_reward_margin"] == 0 and first["train_reward_accuracy"] == 0
    assert metrics[-1]["train_loss"] < first["train_loss"]
    assert {"valid_loss", "valid_reward_margin", "valid_reward_accuracy"} <= set(metrics[1])
    assert "valid_loss" not in metrics[2]
    assert {"full_valid_loss", "full_valid_reward_margin", "full_valid_reward_accuracy"} <= set(metrics[-1])
    final = events[-1]
    assert final["type"] == "final" and final["metrics"]["full_valid_reward_margin"] == \
        metrics[-1]["full_valid_reward_margin"]
    assert (out / final["path"] / "config.json").exists()


def test_dpo_raises_the_held_out_margin_over_the_starting_model(tiny_model, pairs, dpo_run):
    out, events = dpo_run
    before = measure(str(tiny_model), str(pairs["valid"]))
    after = measure(str(out / "final"), str(pairs["valid"]), reference=str(tiny_model), beta=BETA)
    assert after["pairs"] == 16
    assert after["logp_margin"] > before["logp_margin"]
    assert after["logp_accuracy"] > before["logp_accuracy"]
    assert after["reward_margin"] > 0 and after["reward_accuracy"] > 0.5
    # the trainer's own held-out figures are these: reward margin = beta x (margin after - margin before)
    last = metrics_of(events)[-1]
    assert after["reward_margin"] == pytest.approx(BETA * (after["logp_margin"] - before["logp_margin"]), abs=1e-6)
    assert last["full_valid_reward_margin"] == pytest.approx(after["reward_margin"], abs=2e-4)
    assert last["full_valid_reward_accuracy"] == pytest.approx(after["reward_accuracy"])


def test_pause_then_resume_ends_where_the_straight_run_ends(tiny_model, pairs, dpo_run, tmp_path):
    """SIGUSR1 after the first step: a checkpoint and `paused`; resumed from it, the same metrics and final
    weights as the uninterrupted run (the reference is the starting model again, not the checkpoint)."""
    job = write_dpo_job(tmp_path, tiny_model, pairs, micro_batch_size=4)
    proc = start_trainer(job, trainer_env(tmp_path), tmp_path / "trainer.log")
    wait_for_event(job, proc, lambda e: e["type"] == "metrics")
    os.kill(int((tmp_path / "out" / "trainer.pid").read_text()), signal.SIGUSR1)
    assert proc.wait(300) == 0, (tmp_path / "trainer.log").read_text()[-4000:]
    paused = read_events(job)[-1]
    assert paused["type"] == "paused" and paused["step"] < 4, paused
    spec = json.loads(job.read_text())
    spec["resume_from"] = str(tmp_path / "out" / paused["path"])
    job.write_text(json.dumps(spec))
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-4000:]
    straight = {m["step"]: m for m in metrics_of(dpo_run[1])}
    for m in metrics_of(events):
        assert m["train_loss"] == pytest.approx(straight[m["step"]]["train_loss"], abs=1e-5), m["step"]
    assert [m["step"] for m in metrics_of(events)] == [1, 2, 3, 4]
    assert_same_weights(dpo_run[0] / "final", tmp_path / "out" / "final")


def test_dpo_under_zero3_equals_zero0(tiny_model, pairs, dpo_run, tmp_path):
    job = write_dpo_job(tmp_path, tiny_model, pairs, micro_batch_size=4, zero_stage=3)
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-5000:]
    assert "ZeRO-3" in next(e["message"] for e in events if e.get("message", "").startswith("DPO:"))
    for a, b in zip(metrics_of(dpo_run[1]), metrics_of(events), strict=True):
        for k in ("train_loss", "train_reward_margin", "full_valid_reward_margin"):
            if k in a:
                assert b[k] == pytest.approx(a[k], abs=1e-4), (a["step"], k)


def test_dpo_lora_and_frozen_vision_on_llava_onevision(pairs, tmp_path):
    """LoRA (the reference is the base weights: the adapters switched off) with the vision tower frozen, on
    another family: only the language model moves, and the held-out margin rises."""
    from trainer.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny-llava", seed=0, family="llava_onevision")
    job = write_dpo_job(tmp_path / "job", model, pairs, lora={}, freeze_vision=True)
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 0, log[-5000:]
    assert "reference the base weights (LoRA off)" in next(e["message"] for e in events
                                                          if e.get("message", "").startswith("DPO:"))
    metrics = metrics_of(events)
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)  # adapters off = the start
    assert metrics[-1]["full_valid_reward_margin"] > 0
    final = tmp_path / "job" / "out" / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "llava_onevision"
    before, after = load_safetensors(model), load_safetensors(final)
    family = family_of(json.loads((model / "config.json").read_text()))
    assert before.keys() == after.keys()  # LoRA merged into the layout it was loaded from
    vision = [k for k in before if family.is_vision_module(k)]
    assert vision and all(before[k].equal(after[k]) for k in vision)
    assert any(not before[k].equal(after[k]) for k in before if k not in vision)
    assert measure(str(final), str(pairs["valid"]))["logp_margin"] > measure(str(model), str(pairs["valid"]))[
        "logp_margin"]


def test_a_row_that_is_not_a_preference_row_gives_an_actionable_error(tiny_model, pairs, tmp_path):
    rows = [json.loads(line) for line in pairs["train"].read_text().splitlines()]
    rows[5]["non_preferred_output"] = [{"role": "user", "content": "no"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = write_dpo_job(tmp_path, tiny_model, {"train": bad, "valid": pairs["valid"]})
    rc, events, log = run_trainer(job, tmp_path)
    assert rc == 1
    err = events[-1]
    assert err["type"] == "error" and err["code"] == "invalid_training_file"
    assert "line 6" in err["message"] and "non_preferred_output" in err["message"]
