"""The `kubernetes` trainer launcher end to end against a fake Kubernetes API server (tests/infra/fake_kube.py):
jobs created with the openai SDK on a live `vrft serve` whose worker has VRFT_TRAINER_LAUNCHER=kubernetes; the
worker posts each training Job through the official `kubernetes` client (a kubeconfig with a bearer token); the fake
checks the Job against the client's schema and "schedules" it by running its command (api/k8s_pod.py, then the real
trainer on the tiny model) as a local process; the worker applies the trainer's events from the job folder. A job
succeeds; cancel deletes its Job; pause makes the pod's trainer checkpoint and stop, and the resumed job (a second
Job) finishes; a container that cannot start fails the job with the reason.

Untested here: a real cluster (scheduling on GPUs, the ReadWriteMany volume, image pulls, the Job and garbage
collection controllers, the TTL controller); see infra/README.md, "Kubernetes"."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import synthetic
from tests.helpers import LiveServer
from tests.infra.fake_kube import FakeKube
from tests.jobs.conftest import training_env
from tests.jobs.test_training_jobs import TERMINAL, cancel_and_wait_stopped, events_of, upload, wait

NS = "vrft-test"


@pytest.fixture(scope="module")
def cluster(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeKube, LiveServer]]:
    root = tmp_path_factory.mktemp("k8s")
    fake = FakeKube(root / "pods")
    home = root / "home"
    env = training_env(home, tiny_model, VRFT_TRAINER_LAUNCHER="kubernetes",
                       VRFT_K8S_KUBECONFIG=str(fake.kubeconfig(root / "kubeconfig", NS)),
                       VRFT_K8S_IMAGE="registry.example/vrft:test", VRFT_K8S_POLL_SECONDS="0.3",
                       VRFT_K8S_TERMINATION_GRACE_SECONDS="20", VRFT_K8S_ENV_FROM='["configmap:vrft-gpu"]',
                       VRFT_K8S_DELETE_GIVE_UP_SECONDS="5", VRFT_K8S_REQUEST_TIMEOUT_SECONDS="2")
    server = LiveServer(env, home).start()
    try:
        yield fake, server
    finally:
        server.stop()
        fake.close()


@pytest.fixture
def client(cluster: tuple[FakeKube, LiveServer]) -> openai.OpenAI:
    _, server = cluster
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.env["VRFT_API_KEY"], max_retries=0, timeout=60)


def _created(fake: FakeKube, job_id: str) -> list[dict]:
    return [body for method, path, _, body in fake.requests
            if method == "POST" and path == f"/apis/batch/v1/namespaces/{NS}/jobs"
            and body["metadata"]["labels"]["vrft.dev/job-id"] == job_id]


def _sft(n_epochs: int, batch_size: int) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs, "batch_size": batch_size}}}


def _pod_processes(job_id: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if job_id in line and ("trainer" in line or "k8s_pod" in line)]


def test_cancel_deletes_the_job_and_its_pod_stops(cluster, client: openai.OpenAI, tmp_path: Path) -> None:
    fake, _ = cluster
    train = upload(client, tmp_path, synthetic.generate("classification", 8, seed=2, short=True, sft=True), "c.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(50, 1))
    wait(client, job.id, lambda j: any(  # the trainer runs, its signal handlers set
        e.message.startswith("Trainer started") for e in client.fine_tuning.jobs.list_events(j.id, limit=5)))
    cancel_and_wait_stopped(client, job.id)
    [body] = _created(fake, job.id)
    [deleted] = [d for d in fake.deleted_jobs if d["name"].startswith(body["metadata"]["generateName"])]
    assert deleted["options"]["propagationPolicy"] == "Foreground"
    assert deleted["options"]["preconditions"]["uid"]
    assert not [k for k in fake.jobs if k[1] == deleted["name"]]  # the Job is gone, its pod first
    assert not _pod_processes(job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


@pytest.mark.parametrize("unreachable", ["drop", "silent"])
def test_a_cancel_the_api_server_does_not_answer_lets_the_job_go_with_a_warning(
    cluster, client: openai.OpenAI, tmp_path: Path, unreachable: str
) -> None:
    """The API server stops answering while the job trains (it drops connections, or holds them open: each call
    then ends at k8s_request_timeout_seconds, 2 s here); the user cancels: the worker tries to delete the Job for
    k8s_delete_give_up_seconds (5 s here), then lets the job go, with a warning event naming the Job to delete by
    hand, instead of waiting on the cluster forever (its job slot held)."""
    fake, _ = cluster
    train = upload(client, tmp_path, synthetic.generate("classification", 8, seed=5, short=True, sft=True), "u.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(50, 1))
    wait(client, job.id, lambda j: any(
        e.message.startswith("Trainer started") for e in client.fine_tuning.jobs.list_events(j.id, limit=5)))
    [body] = _created(fake, job.id)
    fake.unreachable = unreachable
    try:
        t0 = time.time()
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        wait(client, job.id, lambda j: any(e.message == "Training process stopped" for e in events_of(client, j.id)),
             timeout=90)
        took = time.time() - t0
        assert not [d for d in fake.deleted_jobs if d["name"].startswith(body["metadata"]["generateName"])]
    finally:
        fake.unreachable = None
    assert took >= 5, took  # it tried for the time it was given
    [warning] = [e for e in events_of(client, job.id) if e.message.startswith("Gave up deleting the training Job")]
    assert warning.level == "warn"
    name = next(n for (_, n) in fake.jobs if n.startswith(body["metadata"]["generateName"]))
    assert f"kubectl delete job -n {NS} {name}" in warning.message
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with fake.lock:  # what the warning asks of the operator
        fake.delete_job(NS, name, {}, {"propagationPolicy": "Background"})


def test_a_job_trains_as_a_kubernetes_job_pauses_in_its_pod_and_resumes_in_a_second_job(
    cluster, client: openai.OpenAI, tmp_path: Path
) -> None:
    fake, server = cluster
    # 96 steps of ~0.1 s: the pause (API, worker poll, pause file, pod poll, SIGUSR1) must reach the trainer before
    # its last step on a loaded machine too; with 24 it once arrived after it ("finished before it could pause")
    rows = synthetic.generate("classification", 16, seed=3, short=True, sft=True)
    train = upload(client, tmp_path, rows, "p.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(6, 1))
    wait(client, job.id, lambda j: any(
        e.type == "metrics" and e.data["step"] >= 2 for e in client.fine_tuning.jobs.list_events(j.id, limit=5)))
    [body] = _created(fake, job.id)
    c = body["spec"]["template"]["spec"]["containers"][0]
    job_dir = server.home / "jobs" / job.id
    assert c["command"] == ["python", "-m", "api.k8s_pod", str(job_dir / "JOB.json"), "--ranks", "1"]
    assert c["image"] == "registry.example/vrft:test" and c["envFrom"] == [{"configMapRef": {"name": "vrft-gpu"}}]
    assert {"name": "VRFT_HOME", "value": str(server.home)} in c["env"]
    assert body["spec"]["backoffLimit"] == 0 and not fake.schema_errors
    assert [p for m, p, _, _ in fake.requests if m == "GET" and p.endswith("/status")], "no Job status read"

    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait(client, job.id, lambda j: any("Training stopped at step" in e.message for e in events_of(client, j.id)),
         timeout=120)
    # the pause came through the job folder (pause.request -> SIGUSR1 in the pod), not as a deleted Job
    assert not any(d["name"].startswith(body["metadata"]["generateName"]) for d in fake.deleted_jobs)
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait(client, job.id, lambda j: j.status in TERMINAL, timeout=300)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model and done.result_files
    assert len(_created(fake, job.id)) == 2 and not fake.schema_errors  # the resumed job ran as a Job of its own
    spec = json.loads((job_dir / "JOB.json").read_text())
    assert spec["resume_from"] and "checkpoints/step-" in spec["resume_from"]
    steps = [e.data["step"] for e in events_of(client, job.id) if e.type == "metrics"]
    assert steps == list(range(1, steps[-1] + 1)), steps  # each step once, none missing
    log = (job_dir / "trainer.log").read_text()
    assert log.count(f"[vrft kubernetes] created Job {NS}/vrft-{job.id.lower()}-") == 2
    def pod_logs() -> str:
        return "".join(p.read_text() for p in fake.log_dir.glob(f"vrft-{job.id.lower()}-*.log"))

    # the job succeeds on the trainer's final event; its pod writes its last line as it exits, a moment later
    deadline = time.time() + 60
    while pod_logs().count("[vrft k8s_pod] trainer exited with code 0") < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert "[vrft k8s_pod] pause requested: SIGUSR1 to rank 0" in pod_logs()
    assert pod_logs().count("[vrft k8s_pod] trainer exited with code 0") == 2
    messages = [e.message for e in events_of(client, job.id)]
    assert "The job has successfully completed" in messages


def test_a_container_that_cannot_start_fails_the_job_with_the_reason(
    cluster, client: openai.OpenAI, tmp_path: Path
) -> None:
    fake, _ = cluster
    train = upload(client, tmp_path, synthetic.generate("classification", 2, seed=4, short=True, sft=True), "i.jsonl")
    fake.waiting_reason = "ImagePullBackOff"
    try:
        job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(1, 2))
        done = wait(client, job.id, lambda j: j.status in TERMINAL, timeout=120)
    finally:
        fake.waiting_reason = None
    assert done.status == "failed"
    assert "ImagePullBackOff" in done.error.message, done.error
    [body] = _created(fake, job.id)
    assert any(d["name"].startswith(body["metadata"]["generateName"]) for d in fake.deleted_jobs)
