"""DPO through the public API with the openai SDK (run with both SDK majors: the `sdk` mark): preference files
uploaded and validated, a `method.type = "dpo"` job on the tiny model reaching `succeeded` with OpenAI's
metrics plus the reward margin and accuracy, checkpoints and a result file, and its model answering chat;
files that are not preference rows refused with clear 400s."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

import synthetic
from tests.api.sdk_checks import strict
from tests.jobs.test_training_jobs import TERMINAL, events_of, upload, wait

pytestmark = pytest.mark.sdk


def pairs(n: int, seed: int, split: str = "train") -> list[dict]:
    return synthetic.generate("grounding", n, seed=seed, split=split, short=True, dpo=True, wrong="space")


def test_dpo_job_end_to_end(client: openai.OpenAI, tmp_path: Path) -> None:
    train = upload(client, tmp_path, pairs(8, seed=1), "train.jsonl")
    valid = upload(client, tmp_path, pairs(4, seed=1, split="valid"), "valid.jsonl")
    assert client.files.retrieve(train).status == "processed"
    method = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "beta": 0.2}}}
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, validation_file=valid,
                                         method=method, suffix="dpo", seed=3)
    strict(FineTuningJob, job)
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.learning_rate_multiplier == "auto"  # OpenAI's fields show "auto"
    job = wait(client, job.id, lambda j: j.status in TERMINAL)
    assert job.status == "succeeded", job.error
    strict(FineTuningJob, job)
    assert job.fine_tuned_model.startswith("ft:tiny-qwen2-vl:default:dpo:") and job.trained_tokens > 0

    events = events_of(client, job.id)
    for e in events:
        strict(FineTuningJobEvent, e)
    assert any(e.message.startswith("DPO: 4 steps of 4 pairs, beta 0.2") for e in events)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[0]["train_loss"] == pytest.approx(0.6931, abs=1e-4)  # log 2: the start is the reference
    assert metrics[0]["train_reward_margin"] == 0 and metrics[0]["train_reward_accuracy"] == 0
    last = metrics[-1]
    assert {"valid_loss", "valid_reward_margin", "valid_reward_accuracy", "full_valid_loss",
            "full_valid_reward_margin", "full_valid_reward_accuracy"} <= set(last)
    assert 0 <= last["full_valid_reward_accuracy"] <= 1

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in ckpts] == [2]  # the end of the first epoch
    for c in ckpts:
        strict(FineTuningJobCheckpoint, c)
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.metrics.train_loss is not None
    [result] = job.result_files
    table = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
    assert [int(r["step"]) for r in table] == [1, 2, 3, 4] and "train_reward_margin" in table[0]

    reply = chat_when_started(client, job.fine_tuned_model, pairs(1, seed=9, split="chat")[0]["input"]["messages"])
    assert reply.model == job.fine_tuned_model and reply.choices[0].message.content is not None


def chat_when_started(client: openai.OpenAI, model: str, messages: list[dict], timeout: float = 300):  # noqa: ANN201
    """A chat completion from `model`, retried while its engine starts (503 model_starting, as the SDK's own
    retries would; they are off here)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.chat.completions.create(model=model, messages=messages, max_tokens=4)
        except openai.InternalServerError as e:
            if e.code != "model_starting" or time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_files_that_are_not_preference_rows_are_refused(client: openai.OpenAI, tmp_path: Path) -> None:
    sft = upload(client, tmp_path, synthetic.generate("grounding", 2, seed=1, short=True, sft=True), "sft.jsonl")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=sft, method={"type": "dpo"})
    assert e.value.code == "invalid_file" and e.value.param == "training_file"
    assert "not preference rows" in e.value.message

    dpo = upload(client, tmp_path, pairs(2, seed=1), "dpo.jsonl")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=dpo, method={"type": "supervised"})
    assert e.value.code == "invalid_file"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=dpo,
                                       method={"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}})
    assert "beta" in e.value.message

    bad = pairs(3, seed=1)
    bad[1]["preferred_output"] = [{"role": "user", "content": "a user answer"}]
    bad[2]["input"]["messages"] = bad[2]["input"]["messages"][:1]  # ends with the system message
    path = tmp_path / "bad.jsonl"
    path.write_bytes(synthetic.to_jsonl(bad))
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.2, max_wait_seconds=60)
    assert f.status == "error"
    assert "line 2: preferred_output[0].role must be 'assistant'" in f.status_details
    assert "line 3: input.messages must end with the user's message" in f.status_details
