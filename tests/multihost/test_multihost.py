"""One job's ranks across hosts (network namespaces with their own addresses and sshd), placed by DeepSpeed's own
multi-node launcher (pdsh over ssh) from the worker's `VRFT_TRAINER_HOSTFILE`, through the API and a worker:

- 2 hosts x 1 rank ends with the same weights, bit for bit, as 1 host x 2 ranks (same seed, same data);
- a host killed mid-job ends the job within a bounded time (no hang): it is paused at its last checkpoint, with an
  error event naming the lost contact; resumed on the remaining host alone it pauses again with an error that says
  the checkpoint needs 2 ranks (ZeRO's optimizer shards); resumed on the remaining host plus a fresh one, it
  continues from that checkpoint and succeeds.
"""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

import synthetic
from tests.helpers import LiveServer
from tests.jobs.test_training_jobs import TERMINAL, events_of, upload, wait
from tests.multihost.netns import NetnsHosts

pytestmark = pytest.mark.multihost
ENDED = (*TERMINAL, "paused")


def _final_weights(home: Path, job_id: str) -> dict:
    from safetensors.torch import load_file

    folder = home / "storage" / "models" / job_id
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _sft(n_epochs: int, batch_size: int = 2) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs, "batch_size": batch_size}}}


def test_two_hosts_by_one_rank_equal_one_host_by_two_ranks(
    client: openai.OpenAI, api: LiveServer, hosts: NetnsHosts, worker, tmp_path: Path
) -> None:
    import torch

    train = upload(client, tmp_path, synthetic.generate("classification", 4, seed=3, short=True, sft=True), "eq.jsonl")
    h1, h2 = hosts.hosts[:2]

    local = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(2), seed=5)
    with worker("local", VRFT_TRAINER_NUM_RANKS="2"):
        local = wait(client, local.id, lambda j: j.status in ENDED, timeout=400)
    assert local.status == "succeeded", local.error

    spread = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(2), seed=5)
    with worker("two-hosts", VRFT_TRAINER_HOSTFILE=str(hosts.hostfile([h1, h2]))):
        spread = wait(client, spread.id, lambda j: j.status in ENDED, timeout=400)
    assert spread.status == "succeeded", spread.error

    started = [e.message for e in events_of(client, spread.id) if e.message.startswith("Trainer started")]
    assert started and "2 rank(s)" in started[0], started
    log = (api.home / "jobs" / spread.id / "trainer.log").read_text()
    assert f"{h1.addr}: " in log and f"{h2.addr}: " in log, log[-3000:]  # pdsh's prefix: a rank ran on each host
    a, b = _final_weights(api.home, local.id), _final_weights(api.home, spread.id)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit: a sum of two ranks' gradients is the same either way


def test_killed_host_pauses_the_job_and_resume_continues_on_the_remaining_hosts(
    client: openai.OpenAI, api: LiveServer, hosts: NetnsHosts, worker, tmp_path: Path
) -> None:
    rows = synthetic.generate("classification", 8, seed=4, short=True, sft=True)
    train = upload(client, tmp_path, rows, "kill.jsonl")
    h1, h2, h3 = hosts.hosts
    job = client.fine_tuning.jobs.create(model="tiny-qwen2-vl", training_file=train, method=_sft(8), seed=6)
    with worker("kill", VRFT_TRAINER_HOSTFILE=str(hosts.hostfile([h1, h2])),
                VRFT_TRAINER_COLLECTIVE_TIMEOUT_SECONDS="30") as w:
        wait(client, job.id, lambda j: len(list(client.fine_tuning.jobs.checkpoints.list(j.id))) > 0, timeout=400)
        assert h2.pids(), "no process on the second host"
        killed_at = time.monotonic()
        h2.kill_all()  # the host is gone: its sshd, the launcher and the rank it ran
        paused = wait(client, job.id, lambda j: j.status != "running", timeout=120)
        took = time.monotonic() - killed_at
        assert paused.status == "paused", (paused.status, paused.error)
        lost = [e for e in events_of(client, job.id) if e.level == "error"]
        assert lost and "lost contact with the other ranks" in lost[-1].message, [e.message for e in lost]
        assert took < 90, took
        deadline = time.monotonic() + 60  # the launcher, pdsh and rank 0 end: nothing of the job hangs on
        while [p for p in h1.pids() if p != h1.sshd.pid]:
            assert time.monotonic() < deadline, f"processes left on {h1.name}: {h1.pids()}"
            time.sleep(0.5)
        assert w.poll() is None  # the worker goes on
        print(f"\nkilled host -> paused in {took:.1f}s: {lost[-1].message}")
    ckpts = sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id))
    steps_before = [e.data["step"] for e in events_of(client, job.id) if e.type == "metrics"]

    # The remaining host alone: one rank cannot take the optimizer state two ZeRO ranks wrote. The resume says so
    # and pauses again (nothing lost), rather than crashing half-way through DeepSpeed's load.
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    with worker("resume-one", VRFT_TRAINER_HOSTFILE=str(hosts.hostfile([h1]))):
        again = wait(client, job.id, lambda j: j.status in ENDED, timeout=400)
    assert again.status == "paused", (again.status, again.error)
    refused = [e.message for e in events_of(client, job.id) if e.level == "error"][-1]
    assert "cannot be split again" in refused and "Resume it with 2 rank(s)" in refused, refused
    print(f"resume on one rank -> paused: {refused}")

    # The remaining host with a fresh second one in place of the lost one: it continues from the last checkpoint.
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    with worker("resume", VRFT_TRAINER_HOSTFILE=str(hosts.hostfile([h1, h3]))):
        done = wait(client, job.id, lambda j: j.status in ENDED, timeout=400)
    assert done.status == "succeeded", done.error
    events = events_of(client, job.id)
    resumed = [e.message for e in events if "resuming from" in e.message]
    assert resumed and f"step-{ckpts[-1]}" in resumed[-1], resumed
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == sorted(set(steps)) and steps[-1] == 32 and steps[:len(steps_before)] == steps_before, steps

