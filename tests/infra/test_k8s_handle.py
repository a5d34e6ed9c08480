"""The training Job's handle (api/k8s_launcher.py KubernetesTrainer), as the runner sees it, against the fake API
server with pods that never start by themselves: the states a CPU machine cannot bring about for real (an
OOM-killed container, a deadline exceeded, an unschedulable pod, a Job deleted by someone else) are set on the
fake's objects, and the handle must turn each into the exit code and the trainer.log line the runner reports."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from api import k8s_launcher
from api.settings import Settings
from tests.infra.fake_kube import FakeKube
from tests.infra.test_k8s_specs import SMALL_CONFIG
from trainer.job_spec import JobSpec

NS = "vrft-test"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKube]:
    f = FakeKube(tmp_path / "pods")
    f.start_pods = False
    yield f
    f.close()


@pytest.fixture
def setup(fake: FakeKube, tmp_path: Path) -> tuple[Settings, Path]:
    home = tmp_path / "home"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMALL_CONFIG))
    job_dir = home / "jobs" / "ftjob-h1"
    (job_dir / "output").mkdir(parents=True)
    JobSpec(job_id="ftjob-h1", method="supervised", model_path=str(model), train_file=str(job_dir / "t.jsonl"),
            output_dir=str(job_dir / "output")).write(job_dir / "JOB.json")
    st = Settings(home=home, k8s_image="vrft:test", accelerator="cpu", device_memory_gib=8, k8s_poll_seconds=0.05,
                  k8s_kubeconfig=str(fake.kubeconfig(tmp_path / "kubeconfig", NS)))
    return st, job_dir


def _pod(fake: FakeKube, name: str) -> dict:
    [pod] = [p.obj for p in fake.pods.values() if p.obj["metadata"]["labels"]["job-name"] == name]
    return pod


def _fail(fake: FakeKube, name: str, reason: str = "BackoffLimitExceeded", message: str = "") -> None:
    fake.jobs[(NS, name)]["status"] = {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": reason, "message": message}]}


def test_an_oom_killed_trainer_ends_with_137(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    assert h.poll() is None
    with fake.lock:
        _pod(fake, h.name)["status"] = {"phase": "Failed", "containerStatuses": [{
            "name": "trainer", "image": "vrft:test", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
        _fail(fake, h.name)
    assert h.wait() == 137
    assert "OOMKilled (exit code 137)" in (job_dir / "trainer.log").read_text()


def test_a_deadline_exceeded_fails_with_its_reason(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    with fake.lock:
        _pod(fake, h.name)["status"] = {"phase": "Failed", "reason": "DeadlineExceeded", "message": "too long"}
        _fail(fake, h.name, "DeadlineExceeded", "Job was active longer than specified deadline")
    assert h.wait() == 1
    assert "DeadlineExceeded: Job was active longer than specified deadline" in (job_dir / "trainer.log").read_text()


def test_an_unschedulable_pod_is_noted_once_and_waits(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    with fake.lock:
        _pod(fake, h.name)["status"] = {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
    for _ in range(3):
        h._last = 0.0
        assert h.poll() is None
    assert (job_dir / "trainer.log").read_text().count("Insufficient nvidia.com/gpu") == 1


def test_pausing_a_job_whose_pod_never_started_deletes_it_and_ends_with_0(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    h.pause()
    assert (job_dir / "output" / "pause.request").exists()
    assert h.wait() == 0
    assert [d["name"] for d in fake.deleted_jobs] == [h.name]
    assert not fake.jobs


def test_sigkill_deletes_the_job_and_its_pods_without_grace(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    h.signal(signal.SIGKILL)
    assert h.wait() == -signal.SIGKILL
    [d] = fake.deleted_jobs
    assert d["options"]["gracePeriodSeconds"] == 0 and d["options"]["preconditions"]["uid"] == h.uid
    assert any(m == "DELETE" and "/pods/" in p for m, p, _, _ in fake.requests)


def test_a_job_deleted_by_someone_else_fails(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    with fake.lock:
        del fake.jobs[(NS, h.name)]
    assert h.wait() == 1
    assert f"the Job {h.name} was deleted by someone else" in (job_dir / "trainer.log").read_text()


def test_a_new_launch_first_deletes_the_jobs_an_earlier_worker_left(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    first = k8s_launcher.launch(st, job_dir)
    jobs_then: list[list] = []
    second = k8s_launcher.launch(st, job_dir, before_create=lambda: jobs_then.append(list(fake.jobs)))
    assert jobs_then == [[]]  # the hook (the runner cuts events.jsonl there) ran once the old Job was gone
    assert first.name != second.name
    assert [d["name"] for d in fake.deleted_jobs] == [first.name]
    assert fake.deleted_jobs[0]["options"]["preconditions"]["uid"] == first.uid
    assert list(fake.jobs) == [(NS, second.name)]
    assert any(m == "DELETE" and "/pods/" in p and q.get("gracePeriodSeconds") == "0"
               for m, p, q, _ in fake.requests)  # its pod killed at once


def test_the_delete_precondition_protects_a_namesake(fake: FakeKube, setup) -> None:
    st, job_dir = setup
    h = k8s_launcher.launch(st, job_dir)
    h.uid = "someone-else"
    h.signal(signal.SIGTERM)  # 409 from the server: logged, the Job left alone
    assert (NS, h.name) in fake.jobs and not fake.deleted_jobs
