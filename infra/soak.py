"""Soak test of the compose topology as processes: many workers under faults (issue 26, items 3 and 4).

    .venv/bin/python -m infra.soak                       # 30 jobs, 3 workers, 2 APIs (the README's figures)
    .venv/bin/python -m infra.soak --jobs 8 --kill-every 6

What runs, on loopback only: PostgreSQL (a fresh database on the machine's server, VRFT_SOAK_PG, dropped at the
end), S3 (moto in server mode, in its own process), 2 `vrft serve` API processes and 3 `vrft worker` processes.
Their settings are infra/compose.yaml's, read from that file here (the `x-vrft-env` block, the `api` service's
`VRFT_WORKER_TRAIN: "false"`, infra/Dockerfile's `VRFT_BASE_MODELS` and `VRFT_HOME`), with only the addresses
replaced (database URL, S3 endpoint, API port, home folder, model folder) and a few knobs that bound the run
(SOAK_ENV: a short lease so a dead worker's job is taken over in seconds, the `hf` rollout engine instead of a
vLLM engine per trainer start, no serving engine started for finished jobs).

Faults: every `--kill-every` seconds (on average) a worker that holds a job (checking its files, staging,
training) is SIGKILLed, or for `--stop-fraction` of the faults stopped gracefully (SIGTERM: it pauses the job and
puts it back in the queue), and started again as a supervisor would (each worker slot keeps its home folder, like
a container's filesystem); one job is hit `--max-hits-per-job` times at most, so that every job can end. All the
database's connections are dropped once (`pg_terminate_backend`). Job requests alternate between the 2 APIs.

Checks once every job has ended, each failure a violation (exit status 1):
- every job `succeeded`, with its fine-tuned model stored (`models/<job>/config.json`) and its result file;
- its events: the lifecycle messages (created, files validated, model created, completed) exactly once,
  "started" once plus once per requeue by a graceful stop, no error event, the metrics steps exactly
  1..total_steps (none lost, none repeated), each "Checkpoint created at step N" at most once;
- storage against the database: every `checkpoints/<job>/step-N/` prefix in S3 has its checkpoint row and every
  row its objects (config.json); every object under `files/` has its File row and every `models/<job>/` a job
  with that output;
- no trainer process outlives the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "infra" / "compose.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
PG_ADMIN = os.environ.get("VRFT_SOAK_PG", os.environ.get("VRFT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
SOAK_ENV = {
    "VRFT_JOB_LEASE_SECONDS": "6",  # compose: the default 60 s; a dead worker's job waits out its lease
    "VRFT_WORKER_POLL_SECONDS": "0.5",
    "VRFT_ROLLOUT_ENGINE": "hf",  # no vLLM engine start per trainer start on a CPU host
    "VRFT_SERVING_PREWARM": "false",  # the APIs start no engine for each finished model
    "VRFT_ACCELERATOR": "cpu",
}
"""What the soak sets beyond compose.yaml: knobs that bound the run on a small CPU host, no addresses."""
LIFECYCLE = ("Files validated, moving job to queued state", "The job has successfully completed")
REQUEUED = "The worker is shutting down; the job goes back to the queue and resumes from its last checkpoint"


# ---------------------------------------------------------------- compose.yaml's settings


def compose_env() -> tuple[dict[str, str], dict[str, str]]:
    """(API env, worker env) as infra/compose.yaml and infra/Dockerfile give them, `${VAR:?...}` left as is."""
    import yaml

    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    dockerfile_env: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENV "):
            for k, v in re.findall(r"(\w+)=('[^']*'|\S+)", line[4:]):
                dockerfile_env[k] = v.strip("'")

    def env_of(name: str) -> dict[str, str]:
        return {**dockerfile_env, **{k: str(v) for k, v in services[name]["environment"].items()}}

    assert services["worker"]["command"] == ["vrft", "worker"], services["worker"]["command"]
    return env_of("api"), env_of("worker")


def localize(env: dict[str, str], *, database_url: str, s3_endpoint: str, api_key: str, home: Path,
             model: Path, port: int | None = None) -> dict[str, str]:
    """compose's settings with this host's addresses: the database, the S3 endpoint, the home folder, the model
    folder, the port; `${VRFT_API_KEY:?...}` from `api_key`. Everything else as compose has it."""
    out = dict(env)
    out["VRFT_DATABASE_URL"] = database_url
    out["VRFT_S3_ENDPOINT_URL"] = s3_endpoint
    out["VRFT_API_KEY"] = api_key
    out["VRFT_HOME"] = str(home)
    out["VRFT_BASE_MODELS"] = json.dumps([str(model)])
    out["HOST"] = "127.0.0.1"
    if port is not None:
        out["PORT"] = str(port)
    for k, v in out.items():
        assert "${" not in v, (k, v)
    return out


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict[str, str]:
    """This process's environment without any VRFT_* or AWS_* of its own (compose's settings only)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VRFT_", "AWS_", "HF_"))}


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> Proc:
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n==== soak: start {self.starts} of {self.name}\n".encode())
        self.popen = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=open(self.log, "ab"),
                                      stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)

    def terminate(self) -> None:
        """A graceful stop (`docker compose stop`): the worker pauses its job at a step boundary, queues it."""
        if self.alive():
            self.popen.terminate()

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_http(url: str, proc: Proc, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{proc.name} did not answer at {url}: {proc.log.read_text()[-3000:]}")


# ---------------------------------------------------------------- the run


@dataclass
class Result:
    jobs: int = 0
    methods: Counter = field(default_factory=Counter)
    workers: int = 0
    apis: int = 0
    kills: int = 0
    stops: int = 0
    """Graceful stops (SIGTERM) of a worker holding a job, which then requeues it."""
    takeovers: int = 0
    """"Worker ... took over the job" events: a running job resumed by another worker after its lease ran out."""
    requeues: int = 0
    """Jobs put back in the queue by a worker's graceful stop (then started again)."""
    claims: int = 0
    """Training claims in the worker logs: one per job, plus one per retry (a job claimed again after a kill)."""
    db_drops: int = 0
    db_backends_dropped: int = 0
    wall_s: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    events: int = 0
    checkpoints: int = 0
    checkpoint_prefixes: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return self.claims - self.jobs

    def figures(self) -> str:
        methods = ", ".join(f"{n} {m}" for m, n in sorted(self.methods.items()))
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        lines = [
            f"soak: {self.jobs} jobs ({methods}) on {self.workers} workers and {self.apis} APIs, "
            "PostgreSQL + S3 (moto), settings from infra/compose.yaml",
            f"  wall time        {self.wall_s:.0f} s (first job created to last job ended)",
            f"  worker faults    {self.kills} SIGKILLs and {self.stops} graceful stops (SIGTERM) of a worker holding "
            "a job, each worker restarted",
            f"  retries          {self.retries} (training claims {self.claims} for {self.jobs} jobs); "
            f"takeovers of a running job: {self.takeovers}, requeued by a graceful stop: {self.requeues}",
            f"  database drops   {self.db_drops} ({self.db_backends_dropped} connections terminated)",
            f"  jobs             {statuses}",
            f"  events           {self.events}; checkpoints {self.checkpoints} rows, "
            f"{self.checkpoint_prefixes} stored",
            f"  violations       {len(self.violations)}" + "".join(f"\n    - {v}" for v in self.violations),
        ]
        return "\n".join(lines)


def _pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def _moto(run_dir: Path, env: dict[str, str]) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc("moto", [sys.executable, "-m", "moto.server", "-p", str(port)],
                {**_base_env(), **{k: v for k, v in env.items() if k.startswith("AWS_")}},
                run_dir / "moto.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url, proc, 60)
    return proc, url


def _rows(n_sft: int, seed: int) -> tuple[bytes, bytes, bytes, dict]:
    import synthetic

    sft = synthetic.to_jsonl(synthetic.generate("classification", n_sft, seed=seed, short=True, sft=True))
    rft = synthetic.to_jsonl(synthetic.generate("classification", 2, seed=seed + 1, short=True))
    valid = synthetic.to_jsonl(synthetic.generate("classification", 1, seed=seed + 2, short=True, split="valid"))
    return sft, rft, valid, synthetic.grader_spec("classification", short=True)


def run(*, jobs: int = 30, workers: int = 3, apis: int = 2, kill_every: float = 6.0, db_drop_after: float = 0.3,
        stop_fraction: float = 0.2, max_hits_per_job: int = 2, timeout: float = 1500, seed: int = 0,
        model: Path | None = None, run_dir: Path | None = None, keep: bool = False, log=print) -> Result:  # noqa: ANN001
    """The soak: start everything, run `jobs` jobs under the faults, check, stop everything. Every `kill_every`
    seconds (on average) a worker that holds a job is SIGKILLed, or for `stop_fraction` of the faults stopped with
    SIGTERM, then started again; a job is hit `max_hits_per_job` times at most (so that every job can end).
    `db_drop_after`: the fraction of jobs ended before the one database drop."""
    import boto3
    import openai
    import psycopg

    rng = random.Random(seed)
    res = Result(jobs=jobs, workers=workers, apis=apis)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="vrft-soak-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    model = Path(model or REPO / ".vrft" / "models" / "tiny-qwen2-vl").resolve()
    if not (model / "config.json").is_file():
        from trainer.tiny_model import build_tiny_model

        model = build_tiny_model(run_dir / "models" / "tiny-qwen2-vl", seed=0)
    api_env, worker_env = compose_env()
    db_name = "vrft_soak_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    db_url = _pg_url(db_name)
    api_key = "sk-soak-" + secrets.token_hex(8)
    procs: list[Proc] = []
    try:
        moto, s3_url = _moto(run_dir, worker_env)
        procs.append(moto)
        bucket, _, prefix = worker_env["VRFT_STORAGE"].removeprefix("s3://").partition("/")
        aws = {k: worker_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"], region_name=aws["AWS_DEFAULT_REGION"])
        s3.create_bucket(Bucket=bucket)  # compose's minio-bucket service

        def env_for(base: dict[str, str], name: str, port: int | None = None) -> dict[str, str]:
            home = run_dir / name
            home.mkdir(exist_ok=True)
            return {**_base_env(), **localize(base, database_url=db_url, s3_endpoint=s3_url, api_key=api_key,
                                              home=home, model=model, port=port), **SOAK_ENV}

        api_procs = []
        for i in range(apis):
            port = free_port()
            p = Proc(f"api{i}", [sys.executable, "-m", "api", "serve"], env_for(api_env, f"api{i}", port),
                     run_dir / f"api{i}.log")
            api_procs.append((p, f"http://127.0.0.1:{port}"))
            procs.append(p.start())
            if i == 0:
                wait_http(f"http://127.0.0.1:{port}/health", p)  # the first one migrates the database alone
        for p, url in api_procs:
            wait_http(url + "/health", p)
        worker_procs = [Proc(f"worker{i}", [sys.executable, "-m", "api", "worker"], env_for(worker_env, f"worker{i}"),
                             run_dir / f"worker{i}.log") for i in range(workers)]
        for p in worker_procs:
            procs.append(p.start())
        clients = [openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=5, timeout=60)
                   for _, url in api_procs]
        log(f"soak: {apis} APIs {[u for _, u in api_procs]}, {workers} workers, database {db_name}, S3 {s3_url}, "
            f"run folder {run_dir}")

        sft, rft, valid, grader = _rows(2, seed)
        files = {}
        for i, (name, data) in enumerate((("sft.jsonl", sft), ("rft.jsonl", rft), ("valid.jsonl", valid))):
            c = clients[i % apis]
            f = c.files.create(file=(name, data), purpose="fine-tune")
            f = c.files.wait_for_processing(f.id, poll_interval=0.5, max_wait_seconds=300)
            assert f.status == "processed", f.status_details
            files[name] = f.id

        t0 = time.time()
        job_ids: list[str] = []
        for i in range(jobs):
            c = clients[i % apis]
            if i % 2 == 0:
                method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 2}}}
                job = c.fine_tuning.jobs.create(model=model.name, training_file=files["sft.jsonl"], method=method,
                                                suffix=f"soak{i}", seed=i)
            else:
                method = {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
                    "n_epochs": 1, "batch_size": 1, "num_generations": 2, "max_completion_length": 8,
                    "eval_interval": 1, "eval_samples": 1}}}
                job = c.fine_tuning.jobs.create(model=model.name, training_file=files["rft.jsonl"],
                                                validation_file=files["valid.jsonl"], method=method,
                                                suffix=f"soak{i}", seed=i)
            res.methods[method["type"]] += 1
            job_ids.append(job.id)
        log(f"soak: {jobs} jobs created in {time.time() - t0:.1f} s")

        admin = psycopg.connect(db_url, autocommit=True)
        next_kill = time.time() + kill_every * rng.uniform(0.5, 1.5)
        dropped = False
        hits: Counter = Counter()
        stopping: set = set()
        ended = 0
        last_report = 0.0
        while True:
            rows = admin.execute("SELECT status, claimed_by, id FROM job").fetchall()
            status = Counter(r[0] for r in rows)
            ended = sum(status[s] for s in ("succeeded", "failed", "cancelled"))
            if ended == jobs:
                break
            now = time.time()
            if now - t0 > timeout:
                res.violations.append(f"stuck: {jobs - ended} job(s) not ended after {timeout:.0f} s: {dict(status)}")
                break
            if now - last_report > 30:
                log(f"soak: {now - t0:4.0f} s {dict(status)}; kills {res.kills}")
                last_report = now
            if not dropped and ended >= db_drop_after * jobs:
                n = admin.execute(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()) t", (db_name,)).fetchone()[0]
                res.db_drops += 1
                res.db_backends_dropped += n
                dropped = True
                log(f"soak: {now - t0:4.0f} s dropped the database's {n} connections")
            for p in worker_procs:  # the supervisor restarts a worker that stopped
                if not p.alive():
                    p.start()
            if now >= next_kill:
                holding = {r[1].split("/")[0]: r[2] for r in rows
                           if r[1] and r[0] in ("validating_files", "queued", "running")}
                alive = [p for p in worker_procs if p.alive() and p.popen not in stopping]
                busy = [p for p in alive if hits[holding.get(f"{socket.gethostname()}:{p.pid}")] < max_hits_per_job
                        and f"{socket.gethostname()}:{p.pid}" in holding]
                if busy:  # a fault that hits no job (an idle worker) tests little and slows the run
                    victim = rng.choice(busy)
                    hits[holding[f"{socket.gethostname()}:{victim.pid}"]] += 1
                    if rng.random() < stop_fraction:
                        victim.terminate()  # restarted above once it has exited
                        stopping.add(victim.popen)
                        res.stops += 1
                    else:
                        victim.kill()
                        res.kills += 1
                        time.sleep(rng.uniform(0.2, 1.5))  # the supervisor notices, then restarts it
                        victim.start()
                next_kill = time.time() + kill_every * rng.uniform(0.5, 1.5)
            stopping = {po for po in stopping if po.poll() is None}
            time.sleep(0.5)
        res.wall_s = time.time() - t0
        admin.close()
        log(f"soak: all {ended} jobs ended in {res.wall_s:.0f} s; checking")
        for p in worker_procs:
            p.stop()
        res.claims = sum(p.log.read_text(errors="replace").count(": claimed for training") for p in worker_procs)
        check(res, db_url, s3, bucket, prefix, job_ids, clients[-1], run_dir)
    finally:
        for p in procs:
            p.stop(10)
        if keep and res.violations:
            log(f"soak: kept the database {db_name} and {run_dir}")
        else:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        if not keep and not res.violations:
            shutil.rmtree(run_dir, ignore_errors=True)
    return res


# ---------------------------------------------------------------- the checks


def check(res: Result, db_url: str, s3, bucket: str, prefix: str, job_ids: list[str], client, run_dir: Path) -> None:  # noqa: ANN001
    import psycopg

    bad = res.violations.append
    with psycopg.connect(db_url) as conn:
        jobs = {r[0]: r for r in conn.execute(
            "SELECT id, status, fine_tuned_model, result_files, output_key, error FROM job").fetchall()}
        events: dict[str, list[tuple]] = {}
        for job_id, seq, level, message, type_, data in conn.execute(
                "SELECT job_id, seq, level, message, type, data FROM jobevent ORDER BY seq").fetchall():
            events.setdefault(job_id, []).append((seq, level, message, type_, data))
        ckpts = conn.execute("SELECT job_id, step_number, storage_key FROM checkpoint").fetchall()
        file_keys = {r[0]: r[1] for r in conn.execute("SELECT storage_key, id FROM file").fetchall()}
        repeated_records = conn.execute(
            "SELECT job_id, step, split, group_index, sample_index, count(*) FROM rollout "
            "GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1").fetchall()
    res.events = sum(len(v) for v in events.values())
    for job_id, step, split, group, sample, n in repeated_records:
        bad(f"{job_id}: rollout record {split} step {step} group {group} sample {sample} stored {n} times")
    res.checkpoints = len(ckpts)
    if set(jobs) != set(job_ids):
        bad(f"jobs in the database {len(jobs)} != jobs created {len(job_ids)}")
    listed = {j.id: j.status for j in client.fine_tuning.jobs.list(limit=100).data}
    for job_id in job_ids:
        _, status, ft_model, result_files, output_key, error = jobs[job_id]
        res.statuses[status] += 1
        if status != "succeeded":
            bad(f"{job_id}: {status}, error {error}")
        if listed.get(job_id) != status:
            bad(f"{job_id}: the API lists it as {listed.get(job_id)}, the database says {status}")
        evs = events.get(job_id, [])
        messages = Counter(e[2] for e in evs)
        for m in LIFECYCLE + (f"Created fine-tuning job: {job_id}", f"New fine-tuned model created: {ft_model}"):
            if messages[m] != 1:
                bad(f"{job_id}: event {m!r} {messages[m]} times")
        if messages["Fine-tuning job started"] != 1 + messages[REQUEUED]:
            bad(f"{job_id}: 'Fine-tuning job started' {messages['Fine-tuning job started']} times, requeued by a "
                f"worker's shutdown {messages[REQUEUED]} times")
        res.requeues += messages[REQUEUED]
        for e in evs:
            if e[1] == "error":
                bad(f"{job_id}: error event {e[2]!r}")
        metrics = [e[4] for e in evs if e[3] == "metrics"]
        steps = [m["step"] for m in metrics]
        total = metrics[-1]["total_steps"] if metrics else None
        if not total or steps != list(range(1, total + 1)):
            bad(f"{job_id}: metrics steps {steps}, total {total}")
        made = Counter(int(m.rsplit(" ", 1)[1]) for m in messages.elements()
                       if m.startswith("Checkpoint created at step "))
        if any(n > 1 for n in made.values()):
            bad(f"{job_id}: checkpoint events repeated {dict(made)}")
        rows = sorted(step for j, step, _ in ckpts if j == job_id)
        if len(rows) != len(set(rows)) or not set(rows) <= set(made):
            bad(f"{job_id}: checkpoint rows at steps {rows}, events at {sorted(made)}")
        res.takeovers += sum(n for m, n in messages.items() if m.startswith("Worker ") and "took over" in m)
        if status == "succeeded":
            if not output_key or not _exists(s3, bucket, f"{prefix}/{output_key}/config.json"):
                bad(f"{job_id}: its model {output_key} is not stored")
            if not result_files or any(f not in file_keys.values() for f in result_files):
                bad(f"{job_id}: result files {result_files} missing")

    # storage against the database
    keys = _list(s3, bucket, prefix + "/")
    stored_ckpts = {"/".join(k.split("/")[:3]) for k in keys if k.startswith("checkpoints/")}
    res.checkpoint_prefixes = len(stored_ckpts)
    rows = {key for _, _, key in ckpts}
    for k in sorted(stored_ckpts - rows):
        bad(f"orphaned checkpoint in storage: {k}/ ({sum(x.startswith(k + '/') for x in keys)} objects, no row)")
    for k in sorted(rows - stored_ckpts):
        bad(f"checkpoint row without storage: {k}")
    for k in sorted(rows & stored_ckpts):
        if f"{k}/config.json" not in keys:
            bad(f"checkpoint {k} stored without its config.json")
    for k in sorted(k for k in keys if k.startswith("files/") and k not in file_keys):
        bad(f"orphaned file in storage: {k}")
    outputs = {r[4] for r in jobs.values() if r[4]}
    for k in sorted({"/".join(k.split("/")[:2]) for k in keys if k.startswith("models/")} - outputs):
        bad(f"orphaned model in storage: {k}/")
    # no trainer outlives its worker
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left = [line.strip() for line in out.splitlines()
            if "-m trainer" in line or ("JOB.json" in line and str(run_dir) in line)]
    left = [line for line in left if str(run_dir) in line or any(j in line for j in job_ids)]
    if left:
        bad(f"trainer processes left: {left}")


def _list(s3, bucket: str, prefix: str) -> set[str]:  # noqa: ANN001
    out = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
    return out


def _exists(s3, bucket: str, key: str) -> bool:  # noqa: ANN001
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception:  # noqa: BLE001
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--apis", type=int, default=2)
    ap.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between worker faults")
    ap.add_argument("--stop-fraction", type=float, default=0.2, help="faults that are a SIGTERM, not a SIGKILL")
    ap.add_argument("--max-hits-per-job", type=int, default=2, help="faults aimed at one job at most")
    ap.add_argument("--db-drop-after", type=float, default=0.3, help="fraction of jobs ended before the DB drop")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds the jobs may take, all of them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, help="the tiny model folder (default .vrft/models/tiny-qwen2-vl)")
    ap.add_argument("--run-dir", type=Path, help="logs and homes (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (kept anyway on a violation)")
    a = ap.parse_args()
    res = run(jobs=a.jobs, workers=a.workers, apis=a.apis, kill_every=a.kill_every, db_drop_after=a.db_drop_after,
              stop_fraction=a.stop_fraction, max_hits_per_job=a.max_hits_per_job, timeout=a.timeout, seed=a.seed,
              model=a.model, run_dir=a.run_dir, keep=a.keep)
    print(res.figures(), flush=True)
    sys.exit(1 if res.violations else 0)


if __name__ == "__main__":
    main()
