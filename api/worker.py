"""The job worker. Two loops, each claiming one job at a time with the atomic claim and a lease:
- files: a new job's files are checked again and the job is queued;
- training: a queued job (or a running one whose worker's lease ran out) is run by the JobRunner.
Runs embedded in `vrft serve` or alone as `vrft worker`; several workers may share a PostgreSQL database."""

from __future__ import annotations

import logging
import os
import socket
import threading

from api.db import private_home, session_scope
from api.errors import APIError
from api.services import jobs as svc
from api.settings import Settings

log = logging.getLogger("vrft.worker")


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.train = settings.worker_train
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def files_step(self) -> bool:
        """Check one new job's files; False when there was nothing to do."""
        with session_scope(self.settings) as s:
            job = svc.claim_job(
                s,
                worker_id=self.worker_id + "/files",
                status="validating_files",
                lease_seconds=self.settings.job_lease_seconds,
            )
            if job is None:
                return False
            try:
                svc.validate_job_files(s, job)
                log.info("job %s: files checked, status %s", job.id, job.status)
            except APIError as e:  # the user changed the job meanwhile (cancelled it, say)
                log.info("job %s: %s", job.id, e.message)
            finally:
                svc.release(s, job, worker_id=self.worker_id + "/files")
        return True

    def train_step(self) -> bool:
        """Run one job to its end; False when there was nothing to do."""
        from api.runner import JobRunner

        with session_scope(self.settings) as s:
            job = svc.claim_job(
                s, worker_id=self.worker_id, status=("queued", "running"), lease_seconds=self.settings.job_lease_seconds
            )
            if job is None:
                return False
            job_id = job.id
        log.info("job %s: claimed for training", job_id)
        try:
            JobRunner(self.settings, self.worker_id, self.stopping).run(job_id)
        except Exception:
            log.exception("job %s: the runner crashed", job_id)
            with session_scope(self.settings) as s:
                from sqlmodel import select

                from api.tables import Job

                job = s.exec(select(Job).where(Job.id == job_id)).one()
                if job.status not in svc.TERMINAL:
                    try:
                        svc.transition(
                            s,
                            job,
                            "failed",
                            "Fine-tuning job failed: internal error in the job runner",
                            level="error",
                            error={
                                "code": "internal_error",
                                "message": "The job runner failed; see the server log.",
                                "param": None,
                            },
                        )
                    except APIError:
                        pass
                svc.release(s, job, worker_id=self.worker_id)
        return True

    def _loop(self, step) -> None:  # noqa: ANN001
        while not self.stopping.is_set():
            try:
                busy = step()
            except Exception:
                log.exception("worker step failed; retrying")
                busy = False
            if not busy:
                self.stopping.wait(self.settings.worker_poll_seconds)

    def start(self) -> None:
        private_home(self.settings)
        log.info("worker %s started", self.worker_id)
        loops = [("vrft-files", self.files_step)] + ([("vrft-train", self.train_step)] if self.train else [])
        for name, step in loops:
            t = threading.Thread(target=self._loop, args=(step,), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def run(self) -> None:
        """Run in the foreground until `stop()`."""
        self.start()
        self.stopping.wait()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)
        log.info("worker %s stopped", self.worker_id)

    def stop(self) -> None:
        self.stopping.set()
