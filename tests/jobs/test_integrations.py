"""A job's integrations through the live server, after a real tiny RFT job: W&B (offline mode, the run read back
from the `.wandb` file it wrote) holds each metrics event's numbers at its step and a rollout table per step;
TensorBoard event files, stored with the checkpoints and attached as result files, hold the same numbers.
Without a W&B key the job is refused at creation; a worker that takes a job over logs no step twice; a W&B
that fails never fails the job."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import synthetic
from tests.helpers import REPO, LiveServer, assert_openai_error
from tests.jobs.conftest import training_env
from tests.jobs.test_rollouts import GRADER
from tests.jobs.test_training_jobs import TERMINAL, upload, wait

pytestmark = pytest.mark.sdk
WANDB = {"project": "vrft-tests", "entity": "vrft-team", "name": "tiny grounding", "tags": ["tiny", "ci"]}
STEPS, G, RECORDED = 2, 2, 2


def wandb_records(path: Path) -> list:
    """The records of a `.wandb` file: W&B's LevelDB-log framing (a 7-byte `:W&B` header, 32 KiB blocks of
    chunks with a 7-byte header: crc32, length, type full/first/middle/last) around `Record` protobufs. wandb no
    longer ships a Python reader (its Go core reads them), so the framing is read here, the records by wandb's
    own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if not data:
        return []  # not written yet
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), (ident, magic)
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
        elif kind == 0 and n == 0:
            continue
    return out


def wandb_run(wandb_dir: Path, run_id: str) -> tuple[list, dict[int, dict]]:
    """The run records and the history rows by step, over every offline run file of `run_id` (a resumed run
    writes a file of its own)."""
    # W&B's core writes the file, and its exit record after finish(), in a process of its own: on a loaded machine
    # that may come after the job's end (the runner waits only a third of a lease for it)
    deadline = time.monotonic() + 120
    while not (files := sorted(wandb_dir.rglob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))):
        assert time.monotonic() < deadline, list(wandb_dir.rglob("*"))
        time.sleep(0.2)
    runs, history = [], {}
    for f in files:
        deadline = time.monotonic() + 120
        while not (records := wandb_records(f)) or records[-1].WhichOneof("record_type") != "exit":
            assert time.monotonic() < deadline, f"{f} has no exit record"  # W&B's core writes it after finish()
            time.sleep(0.2)
        for rec in records:
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                runs.append(rec.run)
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
                step = row.pop("_step")
                assert step not in history, f"step {step} logged twice"
                history[step] = row
    return runs, history


def numbers(data: dict, top: bool = True) -> dict[str, float]:
    """The spec, written out: every number of a metrics event by its path, the graders' lists by name; the
    event's own `step` is the step, not a metric."""
    out = {}
    for k, v in data.items():
        if (top and k == "step") or v is None or isinstance(v, (bool, str)):
            continue
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in numbers(v, False).items()})
        elif isinstance(v, list):
            for g in v:
                out.update({f"{k}/{g['name']}/{kk}": vv for kk, vv in numbers(g, False).items() if kk != "name"})
        else:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("integrations-home")
    wandb_dir = tmp_path_factory.mktemp("wandb")
    env = training_env(home, tiny_model, VRFT_ROLLOUT_ENGINE="hf", WANDB_MODE="offline", WANDB_DIR=str(wandb_dir),
                       WANDB_SILENT="true")
    srv = LiveServer(env, home)
    srv.env.pop("WANDB_API_KEY", None)  # offline mode is what lets it run without one
    srv.wandb_dir = wandb_dir
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="module")
def job(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.env["VRFT_API_KEY"], max_retries=0,
                           timeout=60)
    tmp = tmp_path_factory.mktemp("integrations-data")
    train = upload(client, tmp, synthetic.generate("grounding", 4, seed=11, short=True), "train.jsonl")
    valid = upload(client, tmp, synthetic.generate("grounding", 2, seed=12, short=True, split="valid"), "valid.jsonl")
    created = client.fine_tuning.jobs.create(
        model="tiny-qwen2-vl", training_file=train, validation_file=valid, seed=5,
        integrations=[{"type": "wandb", "wandb": WANDB}, {"type": "tensorboard"}],  # type: ignore[list-item]
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
            "n_epochs": 1, "batch_size": 2, "num_generations": G, "max_completion_length": 12,
            "eval_interval": 1, "eval_samples": 1, "rollout_records": RECORDED}}})
    finished = wait(client, created.id, lambda j: j.status in TERMINAL, timeout=600)
    assert finished.status == "succeeded", finished.error
    http = httpx.Client(base_url=server.url + "/v1", timeout=60,
                        headers={"Authorization": f"Bearer {server.env['VRFT_API_KEY']}"})
    events = http.get(f"/fine_tuning/jobs/{created.id}/events", params={"limit": 1000}).json()["data"]
    records = http.get(f"/fine_tuning/jobs/{created.id}/rollouts", params={"limit": 1000}).json()["data"]
    return {"id": created.id, "job": finished, "client": client, "events": events[::-1], "records": records}


def metrics_of(job: dict) -> dict[int, dict]:
    out = {e["data"]["step"]: e["data"] for e in job["events"] if e["type"] == "metrics"}
    assert sorted(out) == list(range(1, STEPS + 1))
    return out


def test_wandb_run_has_the_jobs_metrics_at_their_steps(server, job):
    runs, history = wandb_run(server.wandb_dir, job["id"])
    [run] = runs
    assert (run.project, run.entity, run.display_name) == (WANDB["project"], WANDB["entity"], WANDB["name"])
    assert run.run_id == job["id"]
    assert set(WANDB["tags"]) | {"vrft/finetune", "vrft/tiny-qwen2-vl", f"vrft/{job['id']}"} == set(run.tags)
    metrics = metrics_of(job)
    assert sorted(history) == sorted(metrics)
    for step, data in metrics.items():
        expected = numbers(data)
        assert len(expected) > 20 and "train/kl" in expected and "scores/valid_reward_mean" in expected
        assert "timing/step/training" in expected and any(k.startswith("scores/graders/close/") for k in expected)
        logged = {k: v for k, v in history[step].items() if not k.startswith(("_", "rollouts/"))}
        assert logged == pytest.approx(expected, rel=1e-12), step
    # no warning: W&B worked
    assert not [e["message"] for e in job["events"] if e["level"] == "warn"]
    assert any(e["message"] == "Reporting to: wandb, tensorboard" for e in job["events"])


def test_wandb_rollout_table_per_step(server, job):
    _, history = wandb_run(server.wandb_dir, job["id"])
    [run_dir] = server.wandb_dir.glob(f"wandb/offline-run-*-{job['id']}")
    for step in range(1, STEPS + 1):
        for split, n in (("train", RECORDED * G), ("validation", 2)):
            row = history[step]
            assert row[f"rollouts/{split}/_type"] == "table-file" and row[f"rollouts/{split}/nrows"] == n
            table = json.loads((run_dir / "files" / row[f"rollouts/{split}/path"]).read_text())
            cols = table["columns"]
            got = [dict(zip(cols, r)) for r in table["data"]]
            stored = [x for x in job["records"] if x["step"] == step and x["split"] == split]
            assert [(r["step"], r["split"], r["group"], r["sample"], r["completion"], r["line"]) for r in got] == [
                (x["step"], x["split"], x["group"], x["sample"], x["completion"], x["line"]) for x in stored]
            assert [r["reward"] for r in got] == pytest.approx([x["reward"] for x in stored])
            assert [json.loads(r["sub_rewards"]) for r in got] == [x["sub_rewards"] for x in stored]


def test_tensorboard_files_are_stored_and_attached(server, job, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client = job["client"]
    results = [client.files.retrieve(f) for f in job["job"].result_files]
    assert results[0].filename == "step_metrics.csv"
    tb = [f for f in results if f.filename.startswith("events.out.tfevents.")]
    assert tb and all(f.purpose == "fine-tune-results" for f in tb)
    for f in tb:
        (tmp_path / f.filename).write_bytes(client.files.content(f.id).content)
    stored = server.home / "storage" / "tensorboard" / job["id"]  # with the checkpoints, in the job's storage
    assert sorted(p.name for p in stored.iterdir()) == sorted(f.filename for f in tb)
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    ea.Reload()
    metrics = metrics_of(job)
    expected = {step: numbers(d) for step, d in metrics.items()}
    assert set(ea.Tags()["scalars"]) == {k for d in expected.values() for k in d}
    for tag in ea.Tags()["scalars"]:
        got = {e.step: e.value for e in ea.Scalars(tag)}
        want = {s: d[tag] for s, d in expected.items() if tag in d}
        assert got == pytest.approx(want, rel=1e-6, abs=1e-30), tag  # float32 in the event files


def test_wandb_without_a_key_is_refused_at_creation(tiny_model, tmp_path):
    home = tmp_path / "home"
    srv = LiveServer(training_env(home, tiny_model, VRFT_WORKER_TRAIN="false"), home)
    srv.env.pop("WANDB_API_KEY", None)
    srv.env.pop("WANDB_MODE", None)
    srv.start()
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.env["VRFT_API_KEY"], max_retries=0)
        train = upload(client, tmp_path, synthetic.generate("grounding", 2, seed=1, short=True), "t.jsonl")
        with pytest.raises(openai.BadRequestError) as e:
            client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train,
                                           integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
                                           method={"type": "reinforcement", "reinforcement": {"grader": GRADER}})
        assert_openai_error(e.value.response, 400, param="integrations", contains="WANDB_API_KEY")
        tb = client.fine_tuning.jobs.create(  # TensorBoard needs no key
            model="tiny-qwen2-vl", training_file=train, integrations=[{"type": "tensorboard"}],  # type: ignore[list-item]
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER}})
        assert tb.integrations[0].type == "tensorboard"
    finally:
        srv.stop()


def test_a_worker_without_a_key_fails_the_job_before_training(tiny_model, tmp_path):
    """An API that can (offline mode) accepts the job; a worker of its own (`vrft worker`) without a key fails
    it before anything stages, with an error that says why."""
    home = tmp_path / "home"
    api = LiveServer(training_env(home, tiny_model, VRFT_EMBEDDED_WORKER="false", WANDB_MODE="offline"), home)
    api.start()
    worker = None
    try:
        client = openai.OpenAI(base_url=api.url + "/v1", api_key=api.env["VRFT_API_KEY"], max_retries=0)
        train = upload_unchecked(client, tmp_path, synthetic.generate("grounding", 2, seed=1, short=True))
        created = client.fine_tuning.jobs.create(
            model="tiny-qwen2-vl", training_file=train, integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER}})
        env = {k: v for k, v in api.env.items() if not k.startswith("WANDB_")}
        worker = subprocess.Popen([sys.executable, "-m", "api", "worker"], cwd=REPO, env=env,
                                  stdout=open(tmp_path / "worker.log", "ab"), stderr=subprocess.STDOUT)
        failed = wait(client, created.id, lambda j: j.status in TERMINAL, timeout=120)
        assert failed.status == "failed" and failed.error.code == "invalid_integration", failed.error
        assert "WANDB_API_KEY" in failed.error.message and failed.error.param is None
        events = [e.message for e in client.fine_tuning.jobs.list_events(created.id, limit=50)]
        assert not any("started" in m for m in events), events  # it never ran
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        api.stop()


def upload_unchecked(client: openai.OpenAI, tmp_path: Path, rows: list[dict]) -> str:
    """A file upload that does not wait for a worker to check it (here none runs yet)."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(synthetic.to_jsonl(rows))
    return client.files.create(file=path.open("rb"), purpose="fine-tune").id


# ------------------------------------------------------------------------------------------- the reporter itself


@pytest.fixture
def fresh_wandb() -> Iterator[None]:
    """wandb reads its environment once per process (its `setup` singleton): a test that changes it starts and
    ends with a new one."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


class FakeJob:
    def __init__(self, job_id: str, integrations: list[dict]) -> None:
        self.id, self.model, self.method, self.seed = job_id, "tiny-qwen2-vl", {"type": "reinforcement"}, 1
        self.training_file, self.validation_file, self.suffix, self.hyperparameters = "file-t", None, None, {}
        self.integrations = integrations


def test_a_takeover_continues_the_run_without_repeating_a_step(tmp_path, monkeypatch, fresh_wandb):
    """Worker A logs steps 1-2 and dies; worker B resumes from a checkpoint at step 1, so the trainer runs step 2
    again, and the runner (whose last kept step was 2) hands on only step 3: the run has each step once, with
    A's step 2."""
    from api.integrations import JobIntegrations
    from api.storage import LocalStorage

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # each worker's run in its job folder: two machines
    monkeypatch.setenv("WANDB_SILENT", "true")
    job = FakeJob("ftjob-takeover1", [{"type": "wandb", "wandb": {"project": "p"}}, {"type": "tensorboard"}])
    storage = LocalStorage(tmp_path / "storage")
    a = JobIntegrations(job, tmp_path / "a", storage, floor=0)
    for step in (1, 2):
        a.metrics(step, {"step": step, "train": {"loss": float(step)}})
    a.close(exit_code=1, timeout=60)
    b = JobIntegrations(job, tmp_path / "b", storage, floor=2)  # another machine: its TensorBoard from storage
    for step in (2, 3):
        b.metrics(step, {"step": step, "train": {"loss": 10.0 * step}})
    b.close(exit_code=0, timeout=60)
    assert a.drain_warnings() == [] and b.drain_warnings() == []
    runs, history = wandb_run(tmp_path, job.id)
    assert len(runs) == 2 and {r.run_id for r in runs} == {job.id}
    assert {s: h["train/loss"] for s, h in history.items()} == {1: 1.0, 2: 2.0, 3: 30.0}
    stored = sorted(p.name for p in (tmp_path / "storage" / "tensorboard" / job.id).iterdir())
    assert len(stored) == 2  # A's file, fetched and kept, and B's


def test_a_failing_wandb_is_a_warning_not_a_failure(tmp_path, monkeypatch, fresh_wandb):
    """W&B online with a key it cannot use, at a server that is not there: the reporter warns and goes on."""
    from api.integrations import JobIntegrations
    from api.storage import LocalStorage

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    job = FakeJob("ftjob-failing1", [{"type": "wandb", "wandb": {"project": "p"}}])
    reports = JobIntegrations(job, tmp_path / "job", LocalStorage(tmp_path / "storage"), floor=0)
    started = time.monotonic()
    reports.metrics(1, {"step": 1, "train": {"loss": 1.0}})  # returns at once: the run starts in its thread
    assert time.monotonic() - started < 1
    reports.close(exit_code=0, timeout=60)
    [warning] = reports.drain_warnings()
    assert warning.startswith("Weights & Biases: starting the run failed") and "goes on without it" in warning
