"""Training through the public API with the openai SDK: RFT and SFT jobs on the tiny model reach
`succeeded` with metrics, checkpoints, a result file and a servable model id; cancel stops the trainer;
pause/resume ends where an uninterrupted run ends; a SIGKILLed worker's job is taken over from its last
checkpoint with no event lost or repeated; a crashing trainer fails the job and the worker goes on."""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

import synthetic
from tests.api.sdk_checks import strict
from tests.helpers import REPO, LiveServer
from tests.jobs.conftest import training_env

TERMINAL = ("succeeded", "failed", "cancelled")


def upload(client: openai.OpenAI, tmp_path: Path, rows: list[dict], name: str) -> str:
    path = tmp_path / name
    path.write_bytes(synthetic.to_jsonl(rows))
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.2, max_wait_seconds=120)
    assert f.status == "processed", f.status_details
    return f.id


def wait(client: openai.OpenAI, job_id: str, until, timeout: float = 600) -> FineTuningJob:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        time.sleep(0.5)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50)]
    raise AssertionError(f"job {job_id} is {job.status} after {timeout}s; events: {events}")


def events_of(client: openai.OpenAI, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=100))[::-1]  # oldest first


def rft_method(task: str = "grounding", **hp) -> dict:
    return {"type": "reinforcement", "reinforcement": {
        "grader": synthetic.grader_spec(task, short=True),
        "hyperparameters": {"n_epochs": 1, "batch_size": 2, "num_generations": 2, "max_completion_length": 12,
                            "eval_interval": 1, "eval_samples": 1, **hp}}}


def test_rft_job_end_to_end(client: openai.OpenAI, tmp_path: Path) -> None:
    train = upload(client, tmp_path, synthetic.generate("grounding", 4, seed=1, short=True), "train.jsonl")
    valid = upload(
        client, tmp_path, synthetic.generate("grounding", 2, seed=2, short=True, split="valid"), "valid.jsonl"
    )
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, validation_file=valid,
                                         method=rft_method(), suffix="rft", seed=3)
    job = wait(client, job.id, lambda j: j.status in TERMINAL)
    assert job.status == "succeeded", job.error
    strict(FineTuningJob, job)
    assert job.fine_tuned_model.startswith("ft:tiny-qwen2-vl:default:rft:") and job.finished_at

    events = events_of(client, job.id)
    for e in events:
        strict(FineTuningJobEvent, e)
    messages = [e.message for e in events]
    assert messages.index("Fine-tuning job started") < messages.index(
        f"New fine-tuned model created: {job.fine_tuned_model}"
    )
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert [m.data["step"] for m in metrics] == list(range(1, len(metrics) + 1)) and len(metrics) >= 2
    scores = metrics[-1].data["scores"]
    assert 0.0 <= scores["train_reward_mean"] <= 1.0 and "valid_reward_mean" in scores
    assert {"sampling", "training"} <= set(metrics[-1].data["timing"]["step"])

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert ckpts
    for c in ckpts:
        strict(FineTuningJobCheckpoint, c)
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
    ids = [m.id for m in client.models.list()]
    assert job.fine_tuned_model in ids and all(c.fine_tuned_model_checkpoint not in ids for c in ckpts)
    assert client.models.retrieve(ckpts[0].fine_tuned_model_checkpoint).id == ckpts[0].fine_tuned_model_checkpoint

    [result] = job.result_files
    assert client.files.retrieve(result).purpose == "fine-tune-results"
    table = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
    assert [int(r["step"]) for r in table] == [m.data["step"] for m in metrics]
    assert "scores.train_reward_mean" in table[0]


COLOURS = ["blue", "green", "red"]
VALID_JSON_GRADER = {"type": "python", "name": "valid", "source": f"""
import json

def grade(sample, item):
    try:
        answer = json.loads(sample["output_text"])
    except ValueError:
        return 0.0
    return 1.0 if isinstance(answer, dict) and set(answer) == {{"colour"}} and answer["colour"] in {COLOURS!r} else 0.0
"""}


def test_rft_response_format_constrains_every_sample(client: openai.OpenAI, tmp_path: Path) -> None:
    """A json_schema response_format: every training and validation sample of the random tiny model (which
    never writes JSON on its own) is an object of exactly the schema, as the grader scores it."""
    train = upload(client, tmp_path, synthetic.generate("classification", 4, seed=5, short=True), "train.jsonl")
    valid = upload(
        client, tmp_path, synthetic.generate("classification", 2, seed=6, short=True, split="valid"), "valid.jsonl"
    )
    method = rft_method(max_completion_length=32)
    method["reinforcement"]["grader"] = VALID_JSON_GRADER
    method["reinforcement"]["response_format"] = {
        "type": "json_schema",
        "json_schema": {
            "name": "colour",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"colour": {"type": "string", "enum": COLOURS}},
                "required": ["colour"],
                "additionalProperties": False,
            },
        },
    }
    job = client.fine_tuning.jobs.create(
        model="tiny-qwen2-vl", training_file=train, validation_file=valid, method=method, seed=1
    )
    job = wait(client, job.id, lambda j: j.status in TERMINAL)
    assert job.status == "succeeded", job.error
    metrics = [e.data for e in events_of(client, job.id) if e.type == "metrics"]
    assert len(metrics) == 2
    for m in metrics:
        assert m["scores"]["train_reward_mean"] == 1.0 and m["scores"]["valid_reward_mean"] == 1.0, m["scores"]


def test_sft_then_rft_from_the_sft_model(client: openai.OpenAI, tmp_path: Path) -> None:
    sft_file = upload(
        client, tmp_path, synthetic.generate("classification", 6, seed=4, short=True, sft=True), "sft.jsonl"
    )
    sft = client.fine_tuning.jobs.create(
        model="tiny-qwen2-vl",
        training_file=sft_file,
        suffix="warm",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 3}}},
    )
    sft = wait(client, sft.id, lambda j: j.status in TERMINAL)
    assert sft.status == "succeeded", sft.error
    metrics = [e for e in events_of(client, sft.id) if e.type == "metrics"]
    assert metrics and "train_loss" in metrics[-1].data and "train_mean_token_accuracy" in metrics[-1].data

    rl_file = upload(client, tmp_path, synthetic.generate("classification", 2, seed=5, short=True), "rl.jsonl")
    rft = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=rl_file, method=rft_method("classification", eval_interval="auto")
    )
    rft = wait(client, rft.id, lambda j: j.status in TERMINAL)
    assert rft.status == "succeeded", rft.error
    assert rft.fine_tuned_model.startswith("ft:tiny-qwen2-vl:default::")  # the root base, no suffix


@pytest.mark.parametrize(
    "extra", [{"freeze_vision": True}, {"lora": {"r": 4, "alpha": 8}}], ids=["freeze_vision", "lora"]
)
def test_sft_extras_train_the_language_model_only(
    client: openai.OpenAI, trainer_server: LiveServer, tiny_model: Path, tmp_path: Path, extra: dict
) -> None:
    """Our `freeze_vision` and `lora` extras, on a supervised job: the vision tower's weights come back as they
    went in (LoRA adapts the language model's projections, merged into the checkpoint), the language model's
    do not."""
    import torch
    from safetensors.torch import load_file

    train = upload(client, tmp_path, synthetic.generate("classification", 4, seed=8, short=True, sft=True), "fv.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2, **extra}}})
    job = wait(client, job.id, lambda j: j.status in TERMINAL)
    assert job.status == "succeeded", job.error
    shown = job.method.supervised.hyperparameters.model_dump()
    assert all(shown.get(k) == v or shown.get(k, {}).items() >= v.items() for k, v in extra.items()), shown
    base, tuned = load_file(tiny_model / "model.safetensors"), _final_weights(trainer_server.home, job)
    vision = [k for k in base if ".visual." in k or k.startswith("visual.")]
    assert vision and set(vision) <= tuned.keys()
    for k in vision:
        torch.testing.assert_close(tuned[k], base[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(tuned[k], base[k]) for k in base if k not in vision)


def cancel_and_wait_stopped(client: openai.OpenAI, job_id: str, within: float = 30) -> None:
    """Cancel a running job and wait for the runner's "Training process stopped": within `within` seconds."""
    t0 = time.time()
    assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    while "Training process stopped" not in [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=5)]:
        assert time.time() - t0 < within, f"the trainer did not stop within {within:.0f} s"
        time.sleep(0.2)


def test_cancel_stops_the_trainer_within_seconds(
    client: openai.OpenAI, trainer_server: LiveServer, tmp_path: Path
) -> None:
    train = upload(client, tmp_path, synthetic.generate("grounding", 8, seed=6, short=True), "long.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny-qwen2-vl", training_file=train, method=rft_method(n_epochs=50, batch_size=1)
    )
    wait(client, job.id, lambda j: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(j.id, limit=5)))
    cancel_and_wait_stopped(client, job.id)
    assert not _trainer_processes(job.id)


def _trainer_processes(job_id: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if job_id in line and "trainer" in line]


def _final_weights(home: Path, job: FineTuningJob) -> dict:
    from safetensors.torch import load_file

    folder = home / "storage" / "models" / job.id
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_pause_resume_ends_where_an_uninterrupted_run_ends(
    client: openai.OpenAI, trainer_server: LiveServer, tmp_path: Path
) -> None:
    import torch

    rows = synthetic.generate("classification", 16, seed=7, short=True, sft=True)
    train = upload(client, tmp_path, rows, "pr.jsonl")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 1}}}
    straight = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=method, seed=11)
    straight = wait(client, straight.id, lambda j: j.status in TERMINAL)
    assert straight.status == "succeeded", straight.error

    paused = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=method, seed=11)
    wait(
        client,
        paused.id,
        lambda j: any(
            e.type == "metrics" and e.data["step"] >= 2 for e in client.fine_tuning.jobs.list_events(j.id, limit=5)
        ),
    )
    assert client.fine_tuning.jobs.pause(paused.id).status == "paused"
    wait(
        client,
        paused.id,
        lambda j: (
            "Training stopped at step" in client.fine_tuning.jobs.list_events(j.id, limit=1).data[0].message
            or any("Training stopped at step" in e.message for e in client.fine_tuning.jobs.list_events(j.id, limit=5))
        ),
        timeout=120,
    )
    assert client.fine_tuning.jobs.retrieve(paused.id).status == "paused"
    assert list(client.fine_tuning.jobs.checkpoints.list(paused.id))
    assert client.fine_tuning.jobs.resume(paused.id).status == "queued"
    resumed = wait(client, paused.id, lambda j: j.status in TERMINAL)
    assert resumed.status == "succeeded", resumed.error

    a, b = _final_weights(trainer_server.home, straight), _final_weights(trainer_server.home, resumed)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = [e.data["step"] for e in events_of(client, paused.id) if e.type == "metrics"]
    assert steps == sorted(set(steps)) and steps[-1] == max(steps)


def test_sigkilled_worker_job_is_taken_over_without_lost_or_repeated_events(tiny_model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = training_env(home, tiny_model, VRFT_WORKER_TRAIN="false", VRFT_JOB_LEASE_SECONDS="6")
    server = LiveServer(env, home).start()
    worker_env = {**server.env, "VRFT_WORKER_TRAIN": "true"}
    workers: list[subprocess.Popen] = []

    def start_worker() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "api", "worker"], cwd=REPO, env=worker_env,
                             stdout=open(home / f"worker{len(workers)}.log", "wb"), stderr=subprocess.STDOUT)
        workers.append(p)
        return p

    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=env["VRFT_API_KEY"], max_retries=0, timeout=60)
        train = upload(
            client, tmp_path, synthetic.generate("classification", 12, seed=8, short=True, sft=True), "k.jsonl"
        )
        method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}}
        job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=method)
        first = start_worker()
        wait(client, job.id, lambda j: len(list(client.fine_tuning.jobs.checkpoints.list(j.id))) > 0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        deadline = time.time() + 15
        while _trainer_processes(job.id):  # the trainer dies with its worker
            assert time.time() < deadline, "the trainer outlived its SIGKILLed worker"
            time.sleep(0.2)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        start_worker()
        done = wait(client, job.id, lambda j: j.status in TERMINAL)
        assert done.status == "succeeded", done.error
        events = events_of(client, job.id)
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert steps == list(range(1, steps[-1] + 1)), steps  # each step once, none missing
        messages = Counter(e.message for e in events if e.type == "message")
        assert sum(1 for m in messages if m.startswith("Worker ") and "took over" in m) == 1
        assert messages["The job has successfully completed"] == 1
        assert all(n == 1 for m, n in messages.items() if m.startswith("Checkpoint created at step")), messages
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
        server.stop()


def test_trainer_crash_fails_the_job_and_the_worker_goes_on(
    client: openai.OpenAI, trainer_server: LiveServer, tiny_model: Path, tmp_path: Path
) -> None:
    # A base model folder whose weights are missing: found by the API, discovered broken only by the trainer.
    broken = trainer_server.home / "models" / "broken-vlm"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (tiny_model / name).exists():
            (broken / name).write_bytes((tiny_model / name).read_bytes())
    rows = synthetic.generate("classification", 4, seed=9, short=True, sft=True)
    train = upload(client, tmp_path, rows, "c.jsonl")
    sft = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}}
    bad = client.fine_tuning.jobs.create(model="broken-vlm", training_file=train, method=sft)
    good = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=sft)
    bad = wait(client, bad.id, lambda j: j.status in TERMINAL)
    assert bad.status == "failed" and bad.error.code and bad.error.message
    assert "Traceback" not in bad.error.message
    assert events_of(client, bad.id)[-1].level == "error"
    good = wait(client, good.id, lambda j: j.status in TERMINAL)
    assert good.status == "succeeded", good.error


def test_image_url_on_loopback_fails_at_staging_with_a_clear_error(client: openai.OpenAI, tmp_path: Path) -> None:
    """Loopback is not a public host: staging refuses it before connecting (tests/api/test_staging_security.py
    has the rest of the address policy)."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    row = synthetic.generate("classification", 1, seed=10, short=True, sft=True)[0]
    for msg in row["messages"]:
        if isinstance(msg["content"], list):
            for part in msg["content"]:
                if part.get("type") == "image_url":
                    part["image_url"]["url"] = f"http://127.0.0.1:{port}/missing.png"
    train = upload(client, tmp_path, [row], "u.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method={"type": "supervised"})
    job = wait(client, job.id, lambda j: j.status in TERMINAL, timeout=120)
    assert job.status == "failed" and job.error.code == "image_url_not_allowed"
    assert "line 1: messages[" in job.error.message and "'127.0.0.1' is not a public internet host" in job.error.message
