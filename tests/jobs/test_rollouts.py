"""Rollout records through the live server, after a real tiny RFT job: `GET /v1/fine_tuning/jobs/{id}/rollouts`
(OpenAI's list shape, cursor paging, filters, per-project isolation, OpenAI-shaped 400s naming the parameter)
and the `vrft jobs` commands (list, watch while the job runs, rollouts) against the same server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import synthetic
from api.jobs_cli import one_line
from tests.conftest import make_settings
from tests.helpers import REPO, LiveServer, assert_openai_error
from tests.jobs.conftest import training_env
from tests.jobs.test_training_jobs import TERMINAL, upload, wait

GRADER = {  # scores that vary between the random tiny model's completions: a fuzzy match and a format check
    "type": "multi", "name": "fmt-close",
    "graders": {
        "close": {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                  "reference": "{{item.solution}}", "evaluation_metric": "fuzzy_match"},
        "format": {"type": "format", "name": "format", "input": "{{sample.output_text}}",
                   "pattern": "<answer>\\s*\\S.*?</answer>"},
    },
    "calculate_output": "0.5 * close + 0.5 * format",
}
STEPS, G, RECORDED = 2, 2, 2  # 4 rows, batch 2 -> 2 steps; both prompts recorded; 2 validation rows each step


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """`vrft serve` whose worker trains (the `hf` rollout engine: quick to start), and a second project's key."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope

    home = tmp_path_factory.mktemp("rollouts-home")
    env = training_env(home, tiny_model, VRFT_ROLLOUT_ENGINE="hf")
    settings = make_settings(env, home)
    migrate(settings)
    with session_scope(settings) as s:
        other_key = add_key(s, get_or_create_project(s, "other"))
    server = LiveServer(env, home).start()
    yield server, other_key
    server.stop()


def cli(server: LiveServer, *args: str, key: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`vrft ...` as a user runs it, the server and key from the SDK's variables."""
    env = {**os.environ, "OPENAI_BASE_URL": server.url + "/v1", "OPENAI_API_KEY": key or server.env["VRFT_API_KEY"]}
    return subprocess.run([sys.executable, "-m", "api", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def job(server, tmp_path_factory) -> dict:
    """A real RFT job, followed from creation to its end by `vrft jobs watch` (its output kept)."""
    srv, _ = server
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.env["VRFT_API_KEY"], max_retries=0, timeout=60)
    tmp = tmp_path_factory.mktemp("rollouts-data")
    train_rows = synthetic.generate("grounding", 4, seed=11, short=True)
    valid_rows = synthetic.generate("grounding", 2, seed=12, short=True, split="valid")
    train, valid = upload(client, tmp, train_rows, "train.jsonl"), upload(client, tmp, valid_rows, "valid.jsonl")
    created = client.fine_tuning.jobs.create(
        model="tiny-qwen2-vl", training_file=train, validation_file=valid, seed=5, method={
            "type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
                "n_epochs": 1, "batch_size": 2, "num_generations": G, "max_completion_length": 12,
                "eval_interval": 1, "eval_samples": 1, "rollout_records": RECORDED}}})
    started = time.monotonic()
    watched = cli(srv, "jobs", "watch", created.id, "--interval", "0.5", timeout=600)
    finished = wait(client, created.id, lambda j: j.status in TERMINAL, timeout=30)
    assert finished.status == "succeeded", (finished.error, watched.stdout[-3000:], watched.stderr[-3000:])
    return {"id": created.id, "train": train, "valid": valid, "train_rows": train_rows, "valid_rows": valid_rows,
            "watch": watched, "watch_seconds": time.monotonic() - started, "client": client,
            "model": finished.fine_tuned_model}


def http(server, key: str | None = None) -> httpx.Client:
    srv, _ = server
    return httpx.Client(base_url=srv.url + "/v1", headers={"Authorization": f"Bearer {key or srv.env['VRFT_API_KEY']}"},
                        timeout=60)


def all_records(server, job_id: str, **params) -> list[dict]:
    r = http(server).get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]


# ------------------------------------------------------------------------------------------- the endpoint


def test_records_of_every_step_and_evaluation(server, job):
    r = http(server).get(f"/fine_tuning/jobs/{job['id']}/rollouts", params={"limit": 100})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["object"] == "list" and page["has_more"] is False
    data = page["data"]
    assert page["first_id"] == data[0]["id"] and page["last_id"] == data[-1]["id"]
    train = [x for x in data if x["split"] == "train"]
    valid = [x for x in data if x["split"] == "validation"]
    assert len(train) == STEPS * RECORDED * G and len(valid) == STEPS * 2
    assert sorted({x["step"] for x in data}) == [1, 2]
    for x in data:
        assert x["object"] == "fine_tuning.job.rollout" and x["id"].startswith("ftrollout-")
        assert x["fine_tuning_job_id"] == job["id"]
        assert set(x["sub_rewards"]) == {"close", "format"}
        assert 1 <= x["completion_tokens"] <= 12 and isinstance(x["truncated"], bool)
        assert isinstance(x["errors"], list)
    for x in train:
        assert x["file_id"] == job["train"] and 1 <= x["line"] <= 4 and x["advantage"] is not None
    for x in valid:
        assert x["file_id"] == job["valid"] and x["advantage"] is None
    # the SDK has no method for it; its generic get does (README)
    sdk = job["client"].get(f"/fine_tuning/jobs/{job['id']}/rollouts", cast_to=object,
                            options={"params": {"step": 1, "limit": 100}})
    assert sdk["data"] == [x for x in data if x["step"] == 1]
    for step in (1, 2):  # every validation row, at each evaluation
        assert sorted(x["line"] for x in valid if x["step"] == step) == [1, 2]
        groups: dict[int, list[float]] = {}
        for x in train:
            if x["step"] == step:
                groups.setdefault(x["group"], []).append(x["advantage"])
        assert sorted(groups) == [0, 1] and all(abs(sum(a)) < 1e-4 and len(a) == G for a in groups.values())


def test_records_match_the_trainers_events(server, job):
    """The runner stored every record of the trainer's `rollouts` events once ."""
    srv, _ = server
    path = srv.home / "jobs" / job["id"] / "output" / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    from_events = [(e["step"], e["split"], r["group"], r["sample"], r["completion"]) for e in events
                   if e["type"] == "rollouts" for r in e["records"]]
    stored = [(x["step"], x["split"], x["group"], x["sample"], x["completion"]) for x in all_records(server, job["id"])]
    assert stored == from_events


def test_start_event_names_the_box_convention_the_trainer_resolved(server, job):
    """The trainer's start message keeps its data in the job's events: the resolved config, and the boxes the
    model's family answers in (what an IoU grader's input_format "auto" means; the dashboard draws with it)."""
    from trainer.families import FAMILIES

    with http(server) as c:
        events = c.get(f"/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    (start,) = [e for e in events if e["message"].startswith("GRPO:")]
    assert start["data"]["box_convention"] == FAMILIES["qwen2_vl"].box_convention
    assert start["data"]["config"]["num_generations"] >= 2


def test_rewards_are_what_the_grader_gives_each_completion(server, job):
    """Each record's reward and sub-rewards are what `alpha/graders/run` gives its text on its row."""
    rows = {"train": job["train_rows"], "validation": job["valid_rows"]}
    c = http(server)
    for x in all_records(server, job["id"]):
        item = rows[x["split"]][x["line"] - 1]
        r = c.post("/fine_tuning/alpha/graders/run", json={"grader": GRADER, "model_sample": x["completion"],
                                                            "item": item})
        assert r.status_code == 200, r.text
        ran = r.json()
        assert x["reward"] == pytest.approx(ran["reward"], abs=1e-9)
        assert x["sub_rewards"] == pytest.approx({k: ran["metadata"]["scores"][k] for k in ("close", "format")})


def test_filters(server, job):
    everything = all_records(server, job["id"])
    assert [x["step"] for x in all_records(server, job["id"], step=2)] == [x["step"] for x in everything
                                                                          if x["step"] == 2]
    assert all_records(server, job["id"], step=9) == []
    assert all_records(server, job["id"], split="validation") == [x for x in everything if x["split"] == "validation"]
    assert all_records(server, job["id"], step=1, split="train") == [
        x for x in everything if x["step"] == 1 and x["split"] == "train"]
    close = sorted({x["sub_rewards"]["close"] for x in everything})
    assert len(close) >= 3, close  # the fuzzy match varies between random completions
    mid = close[len(close) // 2]
    got = all_records(server, job["id"], grader="close", min_reward=mid)
    assert got == [x for x in everything if x["sub_rewards"]["close"] >= mid] and 0 < len(got) < len(everything)
    got = all_records(server, job["id"], grader="close", max_reward=mid)
    assert got == [x for x in everything if x["sub_rewards"]["close"] <= mid] and 0 < len(got) < len(everything)
    rewards = sorted({x["reward"] for x in everything})
    lo, hi = rewards[1], rewards[-2]
    got = all_records(server, job["id"], min_reward=lo, max_reward=hi)
    assert got == [x for x in everything if lo <= x["reward"] <= hi] and got
    # "format 1 but close below the middle": the filters combine by grader one at a time
    assert all_records(server, job["id"], grader="format", min_reward=1) == [
        x for x in everything if x["sub_rewards"]["format"] >= 1]


def test_cursor_paging_in_both_orders(server, job):
    everything = all_records(server, job["id"])
    c = http(server)
    for order, expected in (("asc", everything), ("desc", everything[::-1])):
        seen, after, pages = [], None, 0
        while True:
            params = {"limit": 5, "order": order, **({"after": after} if after else {})}
            page = c.get(f"/fine_tuning/jobs/{job['id']}/rollouts", params=params).json()
            seen += page["data"]
            pages += 1
            assert page["has_more"] == (len(seen) < len(expected))
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert [x["id"] for x in seen] == [x["id"] for x in expected] and pages == -(-len(expected) // 5)
    # paging within a filter
    valid = all_records(server, job["id"], split="validation")
    page = c.get(f"/fine_tuning/jobs/{job['id']}/rollouts",
                 params={"split": "validation", "limit": 1, "after": valid[0]["id"]}).json()
    assert page["data"] == [valid[1]]


def test_another_projects_job_is_not_found(server, job):
    _, other_key = server
    r = http(server, other_key).get(f"/fine_tuning/jobs/{job['id']}/rollouts")
    assert_openai_error(r, 404, contains="no fine-tuning job found")
    r = http(server).get("/fine_tuning/jobs/ftjob-nope/rollouts")
    assert_openai_error(r, 404)
    r = httpx.get(f"{server[0].url}/v1/fine_tuning/jobs/{job['id']}/rollouts")
    assert_openai_error(r, 401)


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": 0}, "limit"),
    ({"limit": 10001}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"split": "valid"}, "split"),
    ({"order": "sideways"}, "order"),
    ({"step": -1}, "step"),
    ({"step": "x"}, "step"),
    ({"min_reward": "high"}, "min_reward"),
    ({"min_reward": "nan"}, "min_reward"),
    ({"max_reward": "inf"}, "max_reward"),
    ({"min_reward": 0.8, "max_reward": 0.2}, "min_reward"),
    ({"grader": "iou"}, "grader"),
    ({"after": "ftrollout-nope"}, "after"),
])
def test_bad_input_is_a_400_naming_the_parameter(server, job, params, param):
    r = http(server).get(f"/fine_tuning/jobs/{job['id']}/rollouts", params=params)
    assert_openai_error(r, 400, param=param)
    assert r.headers["x-should-retry"] == "false"


# ------------------------------------------------------------------------------------------- the CLI


def test_cli_watch_followed_the_job_to_its_end(job):
    out = job["watch"]
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(job["id"])
    bars = [line for line in lines if line.startswith("[")]
    assert [b.split("]")[1].split()[0] for b in bars] == ["1/2", "2/2"]  # a progress bar at each step
    assert "train reward" in bars[-1] and "valid reward" in bars[-1] and "kl" in bars[-1]
    events = job["client"].fine_tuning.jobs.list_events(job["id"], limit=100)
    messages = [e.message for e in events if e.type != "metrics"]
    text, at = out.stdout, 0
    for m in messages[::-1]:  # every event, oldest first
        at = text.index(m, at) + len(m)
    assert text.index("Fine-tuning job started") < text.index(bars[0]) < text.index("The job has successfully")
    assert lines[-1] == f"succeeded: {job['model']}"


def test_cli_list(server, job):
    srv, other_key = server
    out = cli(srv, "jobs", "list")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "METHOD"]
    mine = [r for r in rows if r.startswith(job["id"])]
    assert len(mine) == 1 and mine[0].split()[1:4] == ["succeeded", "reinforcement", "tiny-qwen2-vl"]
    assert job["model"] in mine[0]
    out = cli(srv, "jobs", "list", key=other_key)
    assert out.returncode == 0 and job["id"] not in out.stdout and out.stdout.strip() == "no jobs"


def test_cli_rollouts_table(server, job):
    srv, other_key = server
    records = all_records(server, job["id"], step=2)
    out = cli(srv, "jobs", "rollouts", job["id"], "--step", "2", "--width", "200")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["STEP", "SPLIT", "LINE", "GROUP", "SAMPLE", "REWARD", "CLOSE", "FORMAT", "ADV",
                              "TOKENS", "ERRORS", "COMPLETION"]
    assert len(rows) == len(records)
    for row, x in zip(rows, records):
        cells = row.split()
        assert cells[:5] == ["2", x["split"], str(x["line"]), str(x["group"]), str(x["sample"])]
        assert cells[5:8] == [f"{x['reward']:.3f}", f"{x['sub_rewards']['close']:.3f}",
                              f"{x['sub_rewards']['format']:.3f}"]
        assert cells[8] == ("-" if x["advantage"] is None else f"{x['advantage']:+.3f}")
        assert cells[9] == f"{x['completion_tokens']}{'+' if x['truncated'] else ''}"
        assert row.endswith(one_line(x["completion"], 200).rstrip())  # on one line, unprintables shown as ·
    out = cli(srv, "jobs", "rollouts", job["id"], "--step", "2", "--split", "validation")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1 + 2
    out = cli(srv, "jobs", "rollouts", job["id"], "--step", "7")
    assert out.returncode == 0 and out.stdout.strip() == "no rollout records at step 7"


def test_cli_errors_are_the_servers_words(server, job):
    srv, other_key = server
    out = cli(srv, "jobs", "rollouts", job["id"], key=other_key)
    assert out.returncode == 1 and "No fine-tuning job found" in out.stderr
    out = cli(srv, "jobs", "rollouts", job["id"], "--split", "valid")
    assert out.returncode == 1 and "(param: split)" in out.stderr
    out = cli(srv, "jobs", "watch", job["id"], key="sk-wrong")
    assert out.returncode == 1 and "Incorrect API key" in out.stderr
    env = {**os.environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-x"}
    out = subprocess.run([sys.executable, "-m", "api", "jobs", "list"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "cannot reach http://127.0.0.1:9/v1" in out.stderr


# ------------------------------------------------------------------------------------------- last: a restart


def test_records_outlive_the_trainers_files_and_a_restart(server, job):
    """They are rows of the database, not files of the worker: the job's folder gone and the server restarted,
    the same records are listed."""
    srv, _ = server
    before = all_records(server, job["id"])
    shutil.rmtree(srv.home / "jobs" / job["id"])
    srv.restart()
    assert all_records(server, job["id"]) == before
