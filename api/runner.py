"""The job runner: runs one claimed job from `queued` (or from a dead worker's `running`) to its end.

It stages the job's data, writes JOB.json (trainer/job_spec.py), launches the trainer, and applies the
trainer's events.jsonl to the database one event per transaction, recording the last applied `seq` in the
same transaction, so a worker that dies and the one that takes over neither lose nor repeat an event. It
watches the job's status for the user's cancel and pause, renews its lease, and ends the job with a state and
an error a user can act on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from api import hub, integrations, k8s_pod
from api.db import session_scope
from api.errors import APIError
from api.ids import derived_id, now
from api.services import jobs as svc
from api.services import rollouts
from api.settings import Settings
from api.staging import Stager, StagingError, local_model_path
from api.storage import delete_tree, get_tree, put_tree, storage_for
from api.tables import Checkpoint, File, Job, JobEvent, Project
from trainer.job_spec import JobSpec

log = logging.getLogger("vrft.runner")
POLL_SECONDS = 0.5
STAGING_CHECK_SECONDS = 1.0
"""How often staging renews the lease and looks for the user's cancel or pause."""


PAUSING_ERRORS = ("host_lost", "resume_world_size_changed")
"""Trainer errors that pause the job instead of failing it: the hosts failed, not the job (`_pause_lost`)."""


class JobStopped(Exception):
    """Staging stopped before the trainer started: why is the message (`shutdown`, `lost`, or the job's new
    status, `cancelled` or `paused`)."""


def _set_pdeathsig() -> None:
    """In the child: die with the worker (Linux), so a SIGKILLed worker leaves no orphan trainer behind."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class JobRunner:
    def __init__(self, settings: Settings, worker_id: str, stopping: Any) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.stopping = stopping
        self.storage = storage_for(settings.storage_url, settings.s3_endpoint_url)
        self._events_read: dict[str, int] = {}
        """Bytes of each events.jsonl already applied: a poll reads only what came since (rollout records make
        the file long). The `seq` check below stays the guarantee; this only saves re-reading."""
        self.reports: integrations.JobIntegrations | None = None
        """The job's integrations (W&B, TensorBoard), when it has any: fed the events kept, once committed."""
        self._to_report: list[dict] = []

    # ------------------------------------------------------------ the run

    def run(self, job_id: str) -> None:
        st = self.settings
        job_dir = st.jobs_dir / job_id
        out_dir = job_dir / "output"
        out_dir.mkdir(parents=True, exist_ok=True)
        with session_scope(st) as s:  # a worker of its own (`vrft worker`) may lack what the API checked
            job = self._job(s, job_id)
            try:
                integrations.check_integrations(job.integrations)
            except APIError as e:
                self._fail(s, job, "invalid_integration", e.message)
                svc.release(s, job, worker_id=self.worker_id)
                return
        # No database session is held while the data stages: downloads can take minutes.
        try:
            spec = self._prepare(job_id, job_dir)
        except StagingError as e:
            with session_scope(st) as s:
                self._fail(s, self._job(s, job_id), e.code, f"Could not prepare the job's data: {e.message}")
            return
        except JobStopped as e:
            log.info("job %s: staging stopped (%s)", job_id, e)
            if str(e) != "lost":
                with session_scope(st) as s:
                    svc.release(s, self._job(s, job_id), worker_id=self.worker_id)
            return
        with session_scope(st) as s:
            job = self._job(s, job_id)
            if job.status == "queued":
                try:
                    svc.transition(s, job, "running", "Fine-tuning job started")
                except APIError:
                    svc.release(s, job, worker_id=self.worker_id)
                    return
            else:
                svc.add_event(
                    s,
                    job,
                    f"Worker {self.worker_id} took over the job"
                    + (f"; resuming from {Path(spec.resume_from).name}" if spec.resume_from else ""),
                    level="warn",
                )
                s.commit()
            if job.integrations:
                self.reports = integrations.JobIntegrations(
                    job, job_dir, self.storage, floor=(job.progress or {}).get("metrics_step", 0))
        spec.write(job_dir / "JOB.json")
        proc = self._launch(job_dir, applied=(job.progress or {}).get("trainer_seq", 0))
        outcome = self._watch(job_id, proc, out_dir)
        self._finish(job_id, proc, out_dir, job_dir, outcome)

    def _job(self, s: Session, job_id: str) -> Job:
        return s.exec(select(Job).where(Job.id == job_id)).one()

    def _heartbeat(self, job_id: str) -> Callable[[], None]:
        """What staging calls between rows and images and every second of a download: once a second it renews
        the lease and reads the job's status, as `_watch` does for the trainer, and it stops the staging
        (JobStopped) on a worker shutdown, on the user's cancel or pause, or when the lease was lost."""
        st = self.settings
        last = time.monotonic()

        def beat() -> None:
            nonlocal last
            if self.stopping.is_set():
                raise JobStopped("shutdown")
            if time.monotonic() - last < STAGING_CHECK_SECONDS:
                return
            with session_scope(st) as s:
                job = self._job(s, job_id)
                if not svc.renew_lease(s, job, worker_id=self.worker_id, lease_seconds=st.job_lease_seconds):
                    raise JobStopped("lost")
                if job.status not in ("queued", "running"):
                    raise JobStopped(job.status)
            last = time.monotonic()

        return beat

    def _prepare(self, job_id: str, job_dir: Path) -> JobSpec:
        st = self.settings
        data = job_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        with session_scope(st) as s:
            job = self._job(s, job_id)
            files = {
                f.id: f for f in s.exec(select(File).where(File.id.in_([job.training_file, job.validation_file]))).all()
            }
        stager = Stager.of(st, self.storage, self._heartbeat(job_id))

        def stage(file_id: str, name: str) -> str:
            if file_id not in files:
                raise StagingError("invalid_training_file", f"file {file_id} no longer exists")
            return str(stager.stage(files[file_id], data / name))

        train = stage(job.training_file, "train.jsonl")
        valid = stage(job.validation_file, "valid.jsonl") if job.validation_file else None
        pin = (job.progress or {}).get("hub")  # a Hugging Face id, pinned to a commit at creation
        model = self._download_model(job_id, job.model, pin, stager.heartbeat) if pin else None
        with session_scope(st) as s:
            model = model or local_model_path(s, st, self.storage, job.project_id, job.model)
            resume_from = self._resume_point(s, job, job_dir / "output")
        kind = job.method["type"]
        params = job.method.get(kind) or {}
        return JobSpec(
            job_id=job.id, method=kind, model_path=str(model), train_file=train, validation_file=valid,
            output_dir=str(job_dir / "output"), hyperparameters=params.get("hyperparameters", {}),
            grader=params.get("grader"), response_format=params.get("response_format"), seed=job.seed,
            resume_from=resume_from, grader_url=st.grader_url,
            rollout_engine=st.rollout_engine, rollout_compile=st.rollout_compile,
            num_ranks=st.trainer_num_ranks, collective_timeout_seconds=st.trainer_collective_timeout_seconds,
        )

    def _download_model(self, job_id: str, model_id: str, pin: dict, heartbeat: Callable[[], None]) -> Path:
        """The job's hub model at its pinned commit, downloaded into the hub cache if it is not there yet, with
        progress events (bytes done of total, one every `hub_progress_seconds` at most). The heartbeat renews
        the lease and stops the download on a cancel, a pause or a shutdown; a worker that takes the job over
        starts again from the files already complete."""
        st = self.settings
        ref = hub.HubRef(pin["repo"], pin["revision"])
        if (folder := hub.cached_snapshot(st, ref, pin["sha"])) is not None:
            return folder
        last = -float("inf")
        ended = False

        def progress(done: int, total: int) -> None:
            nonlocal last, ended
            heartbeat()
            t = time.monotonic()
            if ended or (done < total and t - last < st.hub_progress_seconds):
                return
            last, ended = t, done >= total > 0
            word = "Downloaded" if ended else "Downloading"
            message = (f"{word} {model_id}: {hub.human_bytes(total)}" if ended else
                       f"{word} {model_id}: {hub.human_bytes(done)} of {hub.human_bytes(total)}")
            with session_scope(st) as s:
                svc.add_event(s, self._job(s, job_id), message,
                              data={"downloaded_bytes": done, "total_bytes": total, "commit": pin["sha"]})

        try:
            return hub.download(st, ref, pin["sha"], on_progress=progress)
        except hub.HubUnavailable as e:
            raise StagingError("model_download_failed", f"the model could not be downloaded: {e}") from None

    def _resume_point(self, s: Session, job: Job, out_dir: Path) -> str | None:
        """The newest recorded checkpoint that still holds its optimizer state (`trainer_state/`), on this
        disk or fetched from storage. The trainer keeps that state only in its newest checkpoint, so after a
        crash the newest *recorded* one may have lost it locally while its stored copy still has it."""
        ckpts = s.exec(
            select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step_number.desc())
        ).all()
        for ckpt in ckpts:
            local = out_dir / "checkpoints" / f"step-{ckpt.step_number}"
            if (local / "trainer_state").is_dir():
                return str(local)
            if ckpt.storage_key and any(
                k.startswith("trainer_state/") for k in self.storage.list_keys(ckpt.storage_key)
            ):
                shutil.rmtree(local, ignore_errors=True)
                get_tree(self.storage, ckpt.storage_key, local)
                return str(local)
        return None

    def _launch(self, job_dir: Path, applied: int) -> subprocess.Popen:
        """Start the job's trainer; `applied`: the last trainer event the database took."""
        st = self.settings
        events = job_dir / "output" / "events.jsonl"

        def continue_events() -> None:  # once no earlier trainer of the job is left to write to the folder
            _continue_numbering(events, applied)
            self._events_read.pop(str(events), None)  # the file may have been cut: read it anew

        if st.trainer_launcher == "kubernetes":  # a batch/v1 Job in the cluster, watched as a process is
            from api import k8s_launcher

            return k8s_launcher.launch(st, job_dir, self.worker_id,  # type: ignore[return-value]
                                       before_create=continue_events)
        continue_events()  # an earlier trainer of this worker's died with it (PR_SET_PDEATHSIG)
        cmd = k8s_pod.trainer_command(str(job_dir / "JOB.json"), st.trainer_num_ranks, st.trainer_hostfile)
        env = {**os.environ}
        # torch.compile's kernels outlive the job (the next trainer start compiles in seconds, not a minute)
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(st.cache_dir / "inductor"))
        (job_dir / "output" / "trainer.pid").unlink(missing_ok=True)  # a stale pid must never be signalled
        log_file = open(job_dir / "trainer.log", "ab")  # noqa: SIM115  (handed to the child)
        log.info("launching %s", " ".join(cmd))
        return subprocess.Popen(
            cmd, cwd=job_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_set_pdeathsig
        )

    # ------------------------------------------------------------ watching

    def _watch(self, job_id: str, proc: subprocess.Popen, out_dir: Path) -> str:
        """Apply events while the trainer runs and act on the user's cancel/pause. Returns why it ended:
        'exited', 'cancelled', 'paused', 'lost' (another worker owns the job) or 'shutdown'."""
        asked: str | None = None
        deadline = None
        last_lease = 0.0
        while True:
            # The user's word first, then the trainer's news: a pause must reach the trainer while it runs.
            with session_scope(self.settings) as s:
                job = self._job(s, job_id)
                if time.time() - last_lease > min(5.0, self.settings.job_lease_seconds / 3):
                    if not svc.renew_lease(
                        s, job, worker_id=self.worker_id, lease_seconds=self.settings.job_lease_seconds
                    ):
                        self._signal(proc, signal.SIGKILL)
                        return "lost"
                    last_lease = time.time()
                status = job.status
            if asked is None:
                if status == "cancelled":
                    asked, deadline = "cancelled", time.time() + self.settings.trainer_stop_seconds
                    self._signal(proc, signal.SIGTERM)
                elif status == "paused":
                    asked, deadline = "paused", time.time() + max(self.settings.trainer_stop_seconds, 600)
                    self._pause(proc, out_dir)
                elif self.stopping.is_set():
                    asked, deadline = "shutdown", time.time() + max(self.settings.trainer_stop_seconds, 600)
                    self._pause(proc, out_dir)
            elif deadline is not None and time.time() > deadline:
                self._signal(proc, signal.SIGKILL)
            self._apply_events(job_id, out_dir)
            if proc.poll() is not None:
                return asked or "exited"
            time.sleep(POLL_SECONDS)

    def _pause(self, proc: subprocess.Popen, out_dir: Path) -> None:
        """SIGUSR1 to rank 0 (its pid is in trainer.pid): DeepSpeed's launcher would not forward it and dies
        of it. Rank 0 tells the other ranks to checkpoint at the next step boundary."""
        if not isinstance(proc, subprocess.Popen):  # a Kubernetes Job (api/k8s_launcher.py): a pause request file
            proc.pause()
            return
        try:
            os.kill(int((out_dir / "trainer.pid").read_text().strip()), signal.SIGUSR1)
        except (OSError, ValueError):
            self._signal(proc, signal.SIGUSR1)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        if not isinstance(proc, subprocess.Popen):  # a Kubernetes Job: SIGTERM and SIGKILL delete it
            proc.signal(sig)
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _apply_events(self, job_id: str, out_dir: Path) -> None:
        self._report_warnings(job_id)
        path = out_dir / "events.jsonl"
        if not path.exists():
            return
        with session_scope(self.settings) as s:
            job = self._job(s, job_id)
            done = (job.progress or {}).get("trainer_seq", 0)
        key = str(path)
        read = self._events_read.get(key, 0)
        if read > path.stat().st_size:
            read = 0  # not the file read before: from the start (`seq` skips what was applied)
        with open(path, "rb") as f:
            f.seek(read)
            lines = f.readlines()
        for line in lines:
            if not line.endswith(b"\n"):
                break  # a line the trainer is still writing
            ev = json.loads(line)
            if ev["seq"] > done:
                with session_scope(self.settings) as s:
                    job = self._job(s, job_id)
                    if (job.progress or {}).get("trainer_seq", 0) < ev["seq"]:
                        self._apply(s, job, ev, out_dir)
                        progress = dict(job.progress or {})
                        progress["trainer_seq"] = ev["seq"]
                        if ev["type"] == "metrics":
                            progress["metrics_step"] = max(progress.get("metrics_step", 0), ev["step"])
                        job.progress = progress
                        s.add(job)
                self._report(self._to_report)  # once committed: the integrations never hold what the job does not
                done = ev["seq"]
            read += len(line)
            self._events_read[key] = read

    def _report(self, events: list[dict]) -> None:
        while events:
            ev = events.pop(0)
            if self.reports is None:
                continue
            if ev["type"] == "metrics":
                self.reports.metrics(ev["step"], ev["data"])
            else:
                self.reports.rollouts(ev["step"], ev["split"], ev["records"])

    def _report_warnings(self, job_id: str) -> None:
        """The integrations' troubles, as warning events of the job (never its failure)."""
        if self.reports is None or not (warnings := self.reports.drain_warnings()):
            return
        with session_scope(self.settings) as s:
            job = self._job(s, job_id)
            for message in warnings:
                svc.add_event(s, job, message, level="warn")

    def _close_reports(self, job_id: str) -> None:
        """At the job's end: store the TensorBoard files, finish the W&B runs (waiting a third of a lease, renewed
        first; a run still sending then finishes in the background)."""
        if self.reports is None:
            return
        with session_scope(self.settings) as s:
            job = self._job(s, job_id)
            svc.renew_lease(s, job, worker_id=self.worker_id, lease_seconds=self.settings.job_lease_seconds)
            failed = job.status in ("failed", "cancelled")  # a paused job's run resumes with the job
        self.reports.close(exit_code=1 if failed else 0, timeout=self.settings.job_lease_seconds / 3)
        self._report_warnings(job_id)

    def _apply(self, s: Session, job: Job, ev: dict, out_dir: Path) -> None:
        kind = ev["type"]
        self._to_report.clear()
        if kind == "message":  # with its data: the resolved config, the box convention of the IoU grader's "auto"
            svc.add_event(s, job, ev["message"], level=ev.get("level", "info"), data=ev.get("data"))
        elif kind == "metrics":
            if ev["step"] <= (job.progress or {}).get("metrics_step", 0):
                return  # the step was re-run after a resume from an earlier checkpoint: keep the first report
            svc.add_event(s, job, _metrics_message(ev), type="metrics", data=ev["data"])
            self._to_report.append(ev)
        elif kind == "rollouts":  # a sample of the step's completions and grades (trainer/rollout_records.py)
            if rollouts.add_rollouts(s, job, step=ev["step"], split=ev["split"], records=ev["records"]):
                self._to_report.append(ev)
        elif kind == "checkpoint":
            self._register_checkpoint(s, job, ev["step"], out_dir / ev["path"], ev.get("metrics", {}))
        elif kind == "checkpoint_deleted":
            ckpt = s.exec(
                select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step_number == ev["step"])
            ).first()
            if ckpt is not None:
                if ckpt.storage_key:
                    delete_tree(self.storage, ckpt.storage_key)
                s.delete(ckpt)
        elif kind == "paused":  # the pause checkpoint is the one a resume starts from
            self._register_checkpoint(s, job, ev["step"], out_dir / ev["path"], ev.get("metrics", {}))
            svc.add_event(s, job, f"Training stopped at step {ev['step']}; resuming continues from there")
        elif kind == "final":
            self._succeed(s, job, ev, out_dir)
        elif kind == "error" and ev.get("code") in PAUSING_ERRORS:
            self._pause_lost(s, job, ev["message"])
        elif kind == "error":
            self._fail(s, job, ev.get("code", "training_error"), ev.get("message", "The trainer failed."))

    def _register_checkpoint(self, s: Session, job: Job, step: int, folder: Path, metrics: dict) -> None:
        """Upload a checkpoint folder and record it, once per step."""
        if (
            s.exec(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step_number == step)).first()
            is not None
        ):
            return
        key = f"checkpoints/{job.id}/step-{step}"
        # The trainer goes on while this uploads: it drops an older checkpoint's optimizer state when it writes
        # a newer one, and whole checkpoints that fall out of retention. What vanished is not an error.
        skipped = put_tree(self.storage, key, folder, vanishing_ok=True)
        if not (folder / "config.json").is_file():  # pruned as a whole: its checkpoint_deleted event follows
            delete_tree(self.storage, key)
            return
        if any(rel.startswith("trainer_state/") for rel in skipped):  # superseded: never resume from half of it
            delete_tree(self.storage, f"{key}/trainer_state")
        project = s.exec(select(Project).where(Project.id == job.project_id)).one()
        svc.register_checkpoint(s, job, project, step=step, metrics=metrics, storage_key=key)
        if self.reports is not None:
            self.reports.save()  # the TensorBoard files, stored with each checkpoint

    # ------------------------------------------------------------ endings

    def _succeed(self, s: Session, job: Job, ev: dict, out_dir: Path) -> None:
        project = s.exec(select(Project).where(Project.id == job.project_id)).one()
        key = f"models/{job.id}"
        put_tree(self.storage, key, out_dir / ev["path"])
        job.output_key = key
        job.fine_tuned_model = svc.fine_tuned_model_name(job, project)
        job.trained_tokens = ev.get("trained_tokens")
        job.result_files = [self._results_file(s, job).id]
        if self.reports is not None:  # the TensorBoard event files, downloadable like the metrics CSV
            job.result_files += [self._result_file(s, job, p.name, p.read_bytes()).id for p in self.reports.save()]
        s.add(job)
        s.flush()
        svc.add_event(s, job, f"New fine-tuned model created: {job.fine_tuned_model}")
        if job.status == "paused":
            svc.add_event(s, job, "The job finished before it could pause")
        try:
            svc.transition(s, job, "succeeded", "The job has successfully completed")
        except APIError as e:  # cancelled at the last moment: the user's word wins
            log.info("job %s finished but %s", job.id, e.message)

    def _results_file(self, s: Session, job: Job) -> File:
        """A CSV of the per-step metrics, as OpenAI attaches to a finished job."""
        rows = [
            e.data
            for e in s.exec(
                select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.seq)
            ).all()
        ]
        flat = [_flatten(r or {}) for r in rows]
        columns = ["step"] + sorted({k for r in flat for k in r} - {"step"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        w.writerows(flat)
        return self._result_file(s, job, "step_metrics.csv", buf.getvalue().encode())

    def _result_file(self, s: Session, job: Job, filename: str, data: bytes) -> File:
        # One id per job and name: the blob is stored before its row commits, and a worker killed in between
        # must leave nothing the next one does not overwrite (a random id left an orphan blob; soak test).
        file_id = derived_id("file-", f"{job.id}/results/{filename}")
        tmp = self.settings.tmp_dir / f"results-{file_id}"
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        key = f"files/{job.project_id}/{file_id}"
        self.storage.put_file(key, tmp)
        f = File(
            id=file_id,
            project_id=job.project_id,
            filename=filename,
            purpose="fine-tune-results",
            bytes=len(data),
            created_at=now(),
            status="processed",
            storage_key=key,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        s.add(f)
        return f

    def _fail(self, s: Session, job: Job, code: str, message: str) -> None:
        s.refresh(job)
        if job.status in svc.TERMINAL:
            return
        try:
            svc.transition(s, job, "failed", f"Fine-tuning job failed: {message}", level="error",
                           error={"code": code, "message": message, "param": None})
        except APIError as e:
            log.warning("job %s: could not fail it: %s", job.id, e.message)

    def _pause_lost(self, s: Session, job: Job, message: str) -> None:
        """A rank lost its peers (a host of the hostfile died or left the network), or a resume found fewer or more
        ranks than its checkpoint was written by: the job is paused, not failed. Nothing is wrong with the job, its
        last checkpoint stands, and the same hostfile may not work until an operator looks, so no automatic retry:
        the user's resume continues from that checkpoint."""
        s.refresh(job)
        if job.status != "running":
            return
        try:
            svc.transition(s, job, "paused", f"Training stopped: {message} The job is paused; resume it to continue "
                           "from its last checkpoint.", level="error")
        except APIError as e:
            log.warning("job %s: could not pause it: %s", job.id, e.message)

    def _finish(self, job_id: str, proc: subprocess.Popen, out_dir: Path, job_dir: Path, outcome: str) -> None:
        code = proc.wait()
        self._apply_events(job_id, out_dir)
        self._close_reports(job_id)
        with session_scope(self.settings) as s:
            job = self._job(s, job_id)
            if outcome == "lost":
                return
            if abandoned := getattr(proc, "abandoned", None):  # a Kubernetes Job the worker could not delete
                svc.add_event(s, job, abandoned, level="warn")
            if job.status in svc.TERMINAL or job.status == "paused":
                if job.status == "cancelled":
                    svc.add_event(s, job, "Training process stopped")
                    s.commit()
                svc.release(s, job, worker_id=self.worker_id)
                return
            if outcome == "paused" and code == 0 and job.status == "queued":
                # resumed while the trainer was stopping at its pause checkpoint (a Kubernetes Job's end is seen
                # seconds after its `paused` event): the next run starts from that checkpoint
                svc.release(s, job, worker_id=self.worker_id)
                return
            # -SIGUSR1: the pause reached a trainer still starting, before its handler was set (it died of it)
            if outcome == "shutdown" and code in (0, -signal.SIGUSR1):
                svc.transition(
                    s,
                    job,
                    "queued",
                    "The worker is shutting down; the job goes back to the queue and resumes from its last checkpoint",
                    level="warn",
                )
                svc.release(s, job, worker_id=self.worker_id)
                return
            if code == -signal.SIGKILL or code == 137:
                self._fail(
                    s,
                    job,
                    "out_of_memory",
                    "The trainer was killed (signal 9), most often by the kernel when memory runs out. "
                    "Lower batch_size, num_generations or max_completion_length, or use a larger machine.",
                )
            elif code != 0:
                tail = _tail(job_dir / "trainer.log")
                self._fail(s, job, "trainer_crashed", f"The trainer exited with code {code}. Last log lines: {tail}")
            else:
                self._fail(s, job, "trainer_exited_early", "The trainer exited without producing a model.")
            svc.release(s, job, worker_id=self.worker_id)


def _continue_numbering(path: Path, applied: int) -> None:
    """Make the trainer number its events after `applied`, the last `seq` the database took, with nothing in the
    file past it. A job taken over finds one of three things here:
    - no events.jsonl (a worker on another host), or one from an earlier turn on this host that ends before
      `applied`: the trainer would number its events from that file's end and the runner skip them as applied,
      the final one included. A line at `applied` (the runner skips it) makes the trainer continue after it.
    - events past `applied`: the dead worker's trainer wrote them here and the worker died before applying them
      (the trainer may even have finished). For the job they did not happen (no checkpoint of theirs is stored),
      so they are cut off and the new trainer redoes that work from the job's last stored checkpoint. Applied
      as well, beside the new trainer's, they ended the job twice (the soak test's third find).
    - a line cut short by a crash: dropped (the trainer drops it too)."""
    keep, last = 0, 0
    if path.exists():
        with path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    seq = int(json.loads(line)["seq"])
                except (ValueError, KeyError, TypeError):
                    seq = last
                if seq > applied:
                    break
                last, keep = max(last, seq), keep + len(line)
        if keep != path.stat().st_size:
            with path.open("r+b") as f:
                f.truncate(keep)
    if last < applied:
        with path.open("a") as f:
            f.write(json.dumps({"seq": applied, "type": "message", "created_at": int(time.time()), "level": "info",
                                "message": f"Events up to {applied} were applied by another worker"}) + "\n")


def _metrics_message(ev: dict) -> str:
    data = ev["data"]
    total = data.get("total_steps")
    head = f"Step {ev['step']}/{total}" if total else f"Step {ev['step']}"
    scores = data.get("scores") or {}
    if "train_reward_mean" in scores:
        return f"{head}: train reward={scores['train_reward_mean']:.4f}" + (
            f", valid reward={scores['valid_reward_mean']:.4f}" if scores.get("valid_reward_mean") is not None else "")
    if "train_loss" in data:
        return f"{head}: training loss={data['train_loss']:.4f}"
    return head


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])[-1500:]
