"""The `kubernetes` trainer launcher (`VRFT_TRAINER_LAUNCHER=kubernetes`): each training job runs as its own
batch/v1 Job in the cluster, sized from the job's memory plan, so GPUs are held only while a job trains.

The worker (a small pod without GPUs) stages the job's data into the job folder as always, writes JOB.json, and
creates a Job whose single pod runs `python -m api.k8s_pod JOB.json --ranks N` (api/k8s_pod.py: the trainer,
DeepSpeed's launcher for several ranks) in the worker's own image, with `VRFT_HOME` on a ReadWriteMany volume
mounted at the same path, so the runner reads output/events.jsonl exactly as it does for a local trainer.
`KubernetesTrainer` is what the runner watches in place of a `subprocess.Popen`:

- `poll()`/`wait()`: None while the Job runs; then the trainer's exit code, from the pod's terminated container
  (OOMKilled: 137), 0 for a Job that completed. A Job that fails without a trainer exit code (deadline exceeded,
  image not pullable, the Job deleted by someone else) gets code 1 and a line in trainer.log that says why, which
  the runner's error message quotes.
- cancel (`signal(SIGTERM)`): the Job is deleted (foreground propagation, preconditioned on its uid): Kubernetes
  sends the pod SIGTERM, which api/k8s_pod.py forwards to every rank. `SIGKILL`: deleted with no grace period.
- pause (`pause()`): the file output/pause.request, which api/k8s_pod.py turns into SIGUSR1 to rank 0 (a pod's
  SIGTERM is the cancel); a Job whose pod has not started yet is deleted instead (nothing to checkpoint).

Jobs are named `vrft-<job id>-<random>` (generateName) and labelled with the job id: before it creates one, the
launcher deletes any Job left for the same job (a worker that died while its trainer ran), so that two trainers
never write the same folder.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.k8s_pod import PAUSE_FILE
from api.settings import Settings
from trainer.job_spec import JobSpec

log = logging.getLogger("vrft.k8s")

LABEL_JOB_ID = "vrft.dev/job-id"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_NAME = "app.kubernetes.io/name"
CONTAINER = "trainer"
GIB = 1 << 30
MIB = 1 << 20
FATAL_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError")
"""A training container waiting for one of these reasons will not start by itself: the job fails."""
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# ------------------------------------------------------------------------------------- the Job's spec

@dataclass
class Sizing:
    """What a training pod asks of the cluster, from the job's memory plan."""

    ranks: int
    gpus: int
    memory_bytes: int
    """the request: ranks x (the per-rank base + what the plan puts in host memory)"""
    memory_limit_bytes: int | None
    cpu: float
    plan: str | None = None
    """the plan's message, or why there is none"""
    host_bytes_per_rank: dict[str, int] = field(default_factory=dict)
    """the request's terms per rank: base, offloaded (ZeRO offload), vllm_sleep (a sleeping vLLM's weights)"""


def sizing(spec: JobSpec, settings: Settings) -> Sizing:
    """The pod's GPUs, memory and CPU for `spec`. GPUs: one per rank (`trainer_num_ranks`) where the trainer runs
    on GPUs. Host memory per rank: `k8s_host_memory_per_rank_gib` (imports, CUDA context on the host side, data)
    plus what the memory plan (trainer/memory.py) places in host memory: the optimizer state and parameters ZeRO
    offloads, and on a GPU under vLLM the weights vLLM keeps in host memory while it sleeps (sleep level 1). On
    the CPU the device is the host: the plan's whole per-rank total is host memory."""
    from trainer.memory import check_job, default_device

    ranks = max(1, spec.num_ranks)
    device = {"auto": default_device(), "cpu": "cpu", "cuda": "gpu"}[settings.accelerator]
    base = int(settings.k8s_host_memory_per_rank_gib * GIB)
    terms = {"base": base}
    message = None
    try:
        import json

        config = json.loads((Path(spec.model_path) / "config.json").read_text())
        plan = check_job(config, spec.method, dict(spec.hyperparameters), settings.device_memory_gib, ranks,
                                rollout_engine=spec.rollout_engine, device=device)
    except (OSError, KeyError, TypeError, ValueError) as e:  # as at job creation: no plan, the base alone
        plan, message = None, f"no memory plan ({type(e).__name__}: {e})"
    if plan is not None:
        est, job = plan.estimate, plan.job
        message = plan.message
        if device == "gpu":
            terms["offloaded"] = est.offloaded
            if job.method == "reinforcement" and job.rollout_engine == "vllm":
                terms["vllm_sleep"] = est.parameters * job.dtype_bytes
        else:
            terms["plan_total"] = est.total
    per_rank = sum(terms.values())
    request = ranks * per_rank
    factor = settings.k8s_memory_limit_factor
    return Sizing(ranks=ranks, gpus=ranks if device == "gpu" else 0, memory_bytes=request,
                  memory_limit_bytes=int(request * factor) if factor else None, cpu=ranks * settings.k8s_cpu_per_rank,
                  plan=message, host_bytes_per_rank=terms)


def quantity_bytes(n: int) -> str:
    """A memory quantity in whole MiB, rounded up (`12288Mi`)."""
    return f"{max(1, math.ceil(n / MIB))}Mi"


def quantity_cpu(cores: float) -> str:
    return f"{max(1, math.ceil(cores * 1000))}m"


def _env_from(entries: list[str]) -> list[dict]:
    out = []
    for entry in entries:
        kind, _, name = entry.partition(":")
        if kind.lower() not in ("configmap", "secret") or not name:
            raise ValueError(f"VRFT_K8S_ENV_FROM: {entry!r} is neither configmap:NAME nor secret:NAME")
        out.append({"configMapRef": {"name": name}} if kind.lower() == "configmap" else {"secretRef": {"name": name}})
    return out


def job_name_prefix(job_id: str) -> str:
    """`generateName` of a job's Jobs: a DNS label (lowercase; the exact id is in the label)."""
    safe = "".join(c if c.isalnum() else "-" for c in job_id.lower()).strip("-")
    return f"vrft-{safe[:40]}-"


def job_manifest(spec: JobSpec, job_dir: Path, settings: Settings, size: Sizing, worker_id: str = "") -> dict:
    """The batch/v1 Job (a plain dict in the API's own field names) that runs `spec`'s trainer."""
    if not settings.k8s_image:
        raise ValueError("VRFT_TRAINER_LAUNCHER=kubernetes needs VRFT_K8S_IMAGE (the worker's image)")
    home = str(settings.home)
    labels = {LABEL_NAME: "vrft", LABEL_COMPONENT: "trainer", LABEL_JOB_ID: spec.job_id}
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": quantity_cpu(size.cpu), "memory": quantity_bytes(size.memory_bytes)}}
    limits = {}
    if size.memory_limit_bytes:
        limits["memory"] = quantity_bytes(size.memory_limit_bytes)
    if size.gpus:
        limits[settings.k8s_gpu_resource] = str(size.gpus)  # extended resources: the request follows the limit
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.k8s_image,
        "command": ["python", "-m", "api.k8s_pod", str(job_dir / "JOB.json"), "--ranks", str(size.ranks)],
        "workingDir": str(job_dir),
        "env": [
            {"name": "VRFT_HOME", "value": home},
            {"name": "VRFT_JOB_ID", "value": spec.job_id},
            # torch.compile's kernels outlive the job, on the shared volume (as the process launcher does)
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": str(settings.cache_dir / "inductor")},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": resources,
        "volumeMounts": [{"name": "home", "mountPath": home}, {"name": "shm", "mountPath": "/dev/shm"}],
    }
    if settings.k8s_env_from:
        container["envFrom"] = _env_from(settings.k8s_env_from)
    if settings.k8s_image_pull_policy:
        container["imagePullPolicy"] = settings.k8s_image_pull_policy
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": int(settings.k8s_termination_grace_seconds),
        "containers": [container],
        "volumes": [
            {"name": "home", "persistentVolumeClaim": {"claimName": settings.k8s_home_claim}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity_bytes(int(settings.k8s_shm_gib
                                                                                            * GIB))}},
        ],
    }
    if settings.k8s_service_account:
        pod["serviceAccountName"] = settings.k8s_service_account
    else:
        pod["automountServiceAccountToken"] = False  # the trainer calls no Kubernetes API
    if settings.k8s_node_selector:
        pod["nodeSelector"] = dict(settings.k8s_node_selector)
    if settings.k8s_tolerations:
        pod["tolerations"] = [dict(t) for t in settings.k8s_tolerations]
    if settings.k8s_priority_class:
        pod["priorityClassName"] = settings.k8s_priority_class
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,  # a failed trainer fails the job: the worker decides about resuming, not the Job
        "completions": 1,
        "parallelism": 1,
        "ttlSecondsAfterFinished": int(settings.k8s_ttl_seconds_after_finished),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if settings.k8s_active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = int(settings.k8s_active_deadline_seconds)
    annotations = {"vrft.dev/worker": worker_id} if worker_id else {}
    if size.plan:
        annotations["vrft.dev/memory-plan"] = size.plan[:1000]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": job_name_prefix(spec.job_id), "labels": {**settings.k8s_labels, **labels},
                     "annotations": annotations},
        "spec": job_spec,
    }


# ------------------------------------------------------------------------------------- the cluster

def api_client(settings: Settings) -> Any:
    """A kubernetes ApiClient: the kubeconfig of `k8s_kubeconfig`, else the pod's service account, else
    `$KUBECONFIG` / ~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if settings.k8s_kubeconfig:
        config.load_kube_config(config_file=settings.k8s_kubeconfig, client_configuration=cfg)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(client_configuration=cfg)

    class TimedApiClient(client.ApiClient):
        """Every call bounded by `k8s_request_timeout_seconds` (the client has no default: an API server that
        accepts the connection and never answers would hold the worker's thread)."""

        def call_api(self, method, url, header_params=None, body=None, post_params=None,  # noqa: ANN001, ANN202
                     _request_timeout=None):
            timeout = settings.k8s_request_timeout_seconds if _request_timeout is None else _request_timeout
            return super().call_api(method, url, header_params, body, post_params, _request_timeout=timeout)

    return TimedApiClient(cfg)


def namespace(settings: Settings) -> str:
    if settings.k8s_namespace:
        return settings.k8s_namespace
    if not settings.k8s_kubeconfig and IN_CLUSTER_NAMESPACE.is_file():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=settings.k8s_kubeconfig)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kubeconfig: the default namespace
        return "default"


def _note(job_dir: Path, line: str) -> None:
    """A line in trainer.log: the runner quotes its last lines when the job fails."""
    with open(job_dir / "trainer.log", "a") as f:
        f.write(f"[vrft kubernetes] {line}\n")


def launch(settings: Settings, job_dir: Path, worker_id: str = "",
           before_create: Callable[[], None] = lambda: None) -> KubernetesTrainer:
    """Create the training Job of the job in `job_dir` (its JOB.json written) and return its handle.
    `before_create` runs once the Jobs an earlier worker left are gone (no trainer of theirs writes to the job's
    folder any more), before the new one is created."""
    from kubernetes import client

    if settings.trainer_hostfile:
        raise ValueError("VRFT_TRAINER_HOSTFILE (multi-node) is not supported by the kubernetes launcher")
    spec = JobSpec.read(job_dir / "JOB.json")
    out_dir = Path(spec.output_dir)
    (out_dir / "trainer.pid").unlink(missing_ok=True)
    (out_dir / PAUSE_FILE).unlink(missing_ok=True)
    api = api_client(settings)
    ns = namespace(settings)
    batch = client.BatchV1Api(api)
    _delete_leftovers(batch, client.CoreV1Api(api), ns, spec.job_id, settings)
    before_create()
    size = sizing(spec, settings)
    body = job_manifest(spec, job_dir, settings, size, worker_id)
    created = batch.create_namespaced_job(ns, client.V1Job.from_dict(body), field_validation="Strict")
    name, uid = created.metadata.name, created.metadata.uid
    said = (f"{size.gpus} GPU(s), " if size.gpus else "no GPU, ") + (
        f"{quantity_bytes(size.memory_bytes)} memory, {quantity_cpu(size.cpu)} CPU")
    log.info("job %s: created Kubernetes Job %s/%s (%s)", spec.job_id, ns, name, said)
    _note(job_dir, f"created Job {ns}/{name}: {said}; {size.plan or 'no memory plan'}")
    return KubernetesTrainer(settings, job_dir, api, ns, name, uid, out_dir=Path(spec.output_dir))


def _delete_leftovers(batch: Any, core: Any, ns: str, job_id: str, settings: Settings) -> None:
    """Delete the Jobs an earlier worker left for `job_id`, their pods at once (an orphan trainer dies as one of
    the `process` launcher does with its worker: SIGKILL, no last word in events.jsonl), and wait until they are
    gone."""
    from kubernetes import client

    jobs = batch.list_namespaced_job(ns, label_selector=f"{LABEL_JOB_ID}={job_id}").items
    for old in jobs:
        log.warning("job %s: deleting the Job %s an earlier worker left", job_id, old.metadata.name)
        try:
            batch.delete_namespaced_job(old.metadata.name, ns, body=client.V1DeleteOptions(
                propagation_policy="Foreground", grace_period_seconds=0,
                preconditions=client.V1Preconditions(uid=old.metadata.uid)))
            for pod in core.list_namespaced_pod(
                    ns, label_selector=f"batch.kubernetes.io/job-name={old.metadata.name}").items:
                core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
        except client.ApiException as e:
            if e.status not in (404, 409):
                raise
    deadline = time.time() + settings.k8s_termination_grace_seconds + 60
    while jobs and time.time() < deadline:
        jobs = batch.list_namespaced_job(ns, label_selector=f"{LABEL_JOB_ID}={job_id}").items
        if jobs:
            time.sleep(settings.k8s_poll_seconds)
    if jobs:
        raise RuntimeError(f"the Jobs {[j.metadata.name for j in jobs]} of {job_id} were not deleted in time")


# ------------------------------------------------------------------------------------- the handle

class KubernetesTrainer:
    """A training Job, watched by the runner as it watches a trainer process (poll, wait, signal, pause)."""

    pid = None

    def __init__(self, settings: Settings, job_dir: Path, api: Any, ns: str, name: str, uid: str,
                 out_dir: Path | None = None) -> None:
        from kubernetes import client

        self.settings, self.job_dir, self.ns, self.name, self.uid = settings, job_dir, ns, name, uid
        self.out_dir = out_dir or job_dir / "output"
        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.returncode: int | None = None
        self.started = False
        """a pod of the Job ran (or runs) the trainer"""
        self._deleted: int | None = None
        """the code the Job ends with because this worker deleted it (SIGTERM: 143, SIGKILL: -9, pause: 0)"""
        self._last = 0.0
        self._waiting_noted = False
        self._unanswered_since: float | None = None
        """when the API server stopped answering this worker's deletion of the Job (None: it answers)"""
        self.abandoned: str | None = None
        """why the worker let the Job go without seeing it deleted (the runner makes it a warning event)"""

    # ---- what the runner calls

    def poll(self) -> int | None:
        if self.returncode is None and time.monotonic() - self._last >= self.settings.k8s_poll_seconds:
            self._last = time.monotonic()
            try:
                self.returncode = self._check()
                self._unanswered_since = None
            except Exception as e:  # noqa: BLE001 - the API server is away for a moment: the trainer goes on
                log.warning("Job %s: could not read its status: %s", self.name, e)
                self._unanswered(e)
        return self.returncode

    def _unanswered(self, e: Exception) -> None:
        """The API server did not answer. While the worker waits for a Job it asked to delete, it waits at most
        `k8s_delete_give_up_seconds` of that silence, then lets the job go (the cancel is the user's word; the
        worker must not hang on a cluster it cannot reach)."""
        if self._deleted is None:
            return  # the trainer runs on; its events come through the shared folder
        now = time.monotonic()
        self._unanswered_since = self._unanswered_since or now
        if self.returncode is None and now - self._unanswered_since >= self.settings.k8s_delete_give_up_seconds:
            self.abandoned = (f"Gave up deleting the training Job {self.ns}/{self.name} after "
                              f"{self.settings.k8s_delete_give_up_seconds:.0f} s: the Kubernetes API server does not "
                              f"answer ({type(e).__name__}). It may still run and hold its GPUs: "
                              f"kubectl delete job -n {self.ns} {self.name}")
            _note(self.job_dir, self.abandoned)
            self.returncode = self._deleted

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(min(0.5, self.settings.k8s_poll_seconds))
        return self.returncode  # type: ignore[return-value]

    def signal(self, sig: int) -> None:
        if sig == signal.SIGUSR1:
            self.pause()
        elif sig == signal.SIGKILL:
            self._delete(-signal.SIGKILL, grace=0)
        else:
            self._delete(143, grace=None)

    def pause(self) -> None:
        """Ask the trainer for a checkpoint and a stop (api/k8s_pod.py), or delete a Job that has not started."""
        path = self.out_dir / PAUSE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{time.time()}\n")
        tmp.replace(path)
        try:
            self.started = self.started or any(self._started(p) for p in self._pods())
        except Exception as e:  # noqa: BLE001
            log.warning("Job %s: could not read its pods: %s", self.name, e)
            return
        if not self.started:
            _note(self.job_dir, f"paused before its pod started: Job {self.name} deleted")
            self._delete(0, grace=0)

    # ---- the cluster

    def _delete(self, code: int, grace: int | None) -> None:
        from kubernetes import client

        if self._deleted is None:
            self._deleted = code
        options = client.V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=grace,
                                         preconditions=client.V1Preconditions(uid=self.uid))
        try:
            self.batch.delete_namespaced_job(self.name, self.ns, body=options)
            if grace == 0:  # the pods too, at once: the Job's garbage collection would give them their grace
                for pod in self._pods():
                    self.core.delete_namespaced_pod(pod.metadata.name, self.ns, grace_period_seconds=0)
        except client.ApiException as e:
            if e.status != 404:
                log.warning("Job %s: delete failed: %s", self.name, e)
        except Exception as e:  # noqa: BLE001 - no answer: the runner asks again, poll() bounds the wait
            log.warning("Job %s: delete failed, the API server does not answer: %s", self.name, e)
            self._unanswered(e)
        self._last = 0.0

    def _pods(self) -> list:
        return self.core.list_namespaced_pod(self.ns, label_selector=f"batch.kubernetes.io/job-name={self.name}",
                                             ).items

    @staticmethod
    def _started(pod: Any) -> bool:
        if pod.status is None:
            return False
        if pod.status.phase in ("Running", "Succeeded", "Failed"):
            return True
        return any(c.state and (c.state.running or c.state.terminated) for c in pod.status.container_statuses or ())

    def _exit_code(self, pods: list) -> tuple[int | None, str]:
        """The trainer container's exit code and why, from the Job's pods (the last one to end)."""
        for pod in reversed(pods):
            for c in (pod.status.container_statuses or ()) if pod.status else ():
                t = c.state.terminated if c.state else None
                if c.name == CONTAINER and t is not None:
                    code = 137 if t.reason == "OOMKilled" else t.exit_code
                    return code, f"pod {pod.metadata.name}: {t.reason or 'terminated'} (exit code {t.exit_code})" + (
                        f": {t.message}" if t.message else "")
            if pod.status and pod.status.reason:  # Evicted, DeadlineExceeded, ...
                return None, f"pod {pod.metadata.name}: {pod.status.reason}: {pod.status.message or ''}"
        return None, "no pod of the Job ran the trainer to its end"

    def _check(self) -> int | None:
        from kubernetes import client

        try:
            job = self.batch.read_namespaced_job_status(self.name, self.ns)
        except client.ApiException as e:
            if e.status != 404:
                raise
            if self._deleted is not None:
                return self._deleted
            _note(self.job_dir, f"the Job {self.name} was deleted by someone else")
            return 1
        if job.metadata.uid != self.uid:  # a namesake made after ours was deleted
            return self._deleted if self._deleted is not None else 1
        status = job.status
        conditions = {c.type: c for c in (status.conditions or ()) if c.status == "True"} if status else {}
        pods = self._pods()
        self.started = self.started or any(self._started(p) for p in pods)
        if "Complete" in conditions or (status and (status.succeeded or 0) > 0):
            return 0
        if "Failed" in conditions or (status and (status.failed or 0) > 0):
            code, why = self._exit_code(pods)
            failed = conditions.get("Failed")
            if failed is not None and failed.reason not in (None, "BackoffLimitExceeded"):
                why = f"{failed.reason}: {failed.message or ''}; {why}"
            if self._deleted is None:
                _note(self.job_dir, f"the Job {self.name} failed: {why}")
            return code if code not in (None, 0) else 1
        if self._deleted is None:  # a container that cannot start will not start by itself
            for pod in pods:
                for cond in (pod.status.conditions or ()) if pod.status else ():
                    if (cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable"
                            and not self._waiting_noted):  # it waits for GPUs: said once, the job stays running
                        self._waiting_noted = True
                        _note(self.job_dir, f"the pod waits to be scheduled: {cond.message or cond.reason}")
                for c in (pod.status.container_statuses or ()) if pod.status else ():
                    w = c.state.waiting if c.state else None
                    if w is not None and w.reason in FATAL_WAITING:
                        _note(self.job_dir, f"the trainer's container cannot start: {w.reason}: {w.message or ''}")
                        self._delete(1, grace=0)
                        return None
        return None
