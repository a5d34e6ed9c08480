"""A fake Kubernetes API server for the `kubernetes` trainer launcher's tests: the batch/v1 Jobs endpoints the
launcher calls (create, list, read status, delete) and the pods list/delete, over real HTTP, so that the official
`kubernetes` client talks to it as to a cluster. It "schedules" a created Job by running its container's command
as a local process (the kubelet's part), in the container's workingDir with its env, and reports the process as
the Job's pod: Running, then Succeeded or Failed with the exit code as the container's terminated state.

What it checks like a real API server: the bearer token; every created Job against the client's OpenAPI schema
(tests/infra/k8s_schema.py; `fieldValidation=Strict` refuses unknown fields); `generateName`; a delete's uid
precondition (409 when it does not match). Deleting a Job sends its pod SIGTERM and SIGKILL after the pod's
terminationGracePeriodSeconds; under `Foreground` propagation the Job stays (with a deletionTimestamp) until its
pod has ended. Not modelled: scheduling on resources, images, volumes (the job folder is this machine's disk),
watches, the TTL controller.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.infra.k8s_schema import validate


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _matches(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class Pod:
    def __init__(self, job: dict, log_dir: Path, env: dict[str, str], start: bool, waiting_reason: str | None):
        name = f"{job['metadata']['name']}-{secrets.token_hex(3)[:5]}"
        spec = job["spec"]["template"]["spec"]
        self.container = spec["containers"][0]
        self.grace = spec.get("terminationGracePeriodSeconds", 30)
        jname, uid = job["metadata"]["name"], job["metadata"]["uid"]
        labels = {**job["spec"]["template"].get("metadata", {}).get("labels", {}),
                  "job-name": jname, "batch.kubernetes.io/job-name": jname,
                  "controller-uid": uid, "batch.kubernetes.io/controller-uid": uid}
        self.obj: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": job["metadata"]["namespace"], "labels": labels,
                         "uid": secrets.token_hex(8), "creationTimestamp": _now()},
            "spec": spec,
            "status": {"phase": "Pending"},
        }
        self.proc: subprocess.Popen | None = None
        self.log = log_dir / f"{name}.log"
        if waiting_reason:
            self.obj["status"]["containerStatuses"] = [{
                "name": self.container["name"], "image": self.container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "state": {"waiting": {"reason": waiting_reason, "message": "fake: never starts"}}}]
        elif start:
            self.start(env)

    def start(self, env: dict[str, str]) -> None:
        c = self.container
        bin_dir = str(Path(sys.executable).parent)  # the image's `python`: this venv's
        full_env = {**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        for e in c.get("env", []):
            full_env[e["name"]] = e.get("value", "")
        self.proc = subprocess.Popen(
            list(c.get("command", [])) + list(c.get("args", [])), cwd=c.get("workingDir"), env=full_env,
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.obj["status"] = {"phase": "Running", "startTime": _now(), "containerStatuses": [{
            "name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0,
            "started": True, "state": {"running": {"startedAt": _now()}}}]}

    def kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def ended(self) -> bool:
        """True once its process ended (its status then says how)."""
        if self.proc is None:
            return False
        code = self.proc.poll()
        if code is None:
            return False
        if self.obj["status"]["phase"] == "Running":
            code = 128 - code if code < 0 else code
            self.obj["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            self.obj["status"]["containerStatuses"][0].update(ready=False, state={"terminated": {
                "exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}})
        return True


class FakeKube:
    """The server; `url` for a kubeconfig, `requests` for assertions, `jobs`/`pods` for the state."""

    def __init__(self, log_dir: Path, token: str = "fake-token", env: dict[str, str] | None = None) -> None:
        self.log_dir, self.token, self.env = log_dir, token, env or {}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.deleted_jobs: list[dict] = []
        self.requests: list[tuple[str, str, dict, Any]] = []
        self.schema_errors: list[str] = []
        self.start_pods = True
        self.waiting_reason: str | None = None
        self.unreachable: str | None = None
        """While set, no request is answered: "drop" closes each connection (an API server that is down), "silent"
        holds it open until this is unset (one cut off behind a firewall that drops packets)."""
        self.lock = threading.RLock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                if fake.unreachable == "silent":
                    while fake.unreachable and not fake._stop.is_set():
                        time.sleep(0.1)
                if fake.unreachable:
                    self.close_connection = True
                    return
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                with fake.lock:
                    fake.requests.append((method, url.path, query, body))
                    if self.headers.get("Authorization") != f"Bearer {fake.token}":
                        return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                    code, out = fake.route(method, url.path.rstrip("/").split("/"), query, body)
                self._send(code, out)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                        threading.Thread(target=self._controller, daemon=True)]
        for t in self.threads:
            t.start()

    def kubeconfig(self, path: Path, namespace: str = "vrft-test") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
        return path

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            for pod in self.pods.values():
                pod.kill(signal.SIGKILL)
        self.server.shutdown()

    # ---- the API

    def route(self, method: str, parts: list[str], query: dict, body: Any) -> tuple[int, dict]:
        # /apis/batch/v1/namespaces/{ns}/jobs[/{name}[/status]]   /api/v1/namespaces/{ns}/pods[/{name}]
        if parts[1:4] == ["apis", "batch", "v1"] and len(parts) >= 7 and parts[4] == "namespaces" \
                and parts[6] == "jobs":
            ns, name = parts[5], parts[7] if len(parts) > 7 else None
            if name is None and method == "POST":
                return self.create_job(ns, query, body)
            if name is None and method == "GET":
                items = [j for (n_, _), j in self.jobs.items() if n_ == ns
                         and _matches(j["metadata"].get("labels", {}), query.get("labelSelector"))]
                return 200, {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items}
            if name is not None and method == "GET":
                job = self.jobs.get((ns, name))
                return (200, job) if job else (404, _status(404, "NotFound", f'jobs.batch "{name}" not found'))
            if name is not None and method == "DELETE":
                return self.delete_job(ns, name, query, body or {})
        if parts[1:3] == ["api", "v1"] and len(parts) >= 6 and parts[3] == "namespaces" and parts[5] == "pods":
            ns, name = parts[4], parts[6] if len(parts) > 6 else None
            if name is None and method == "GET":
                items = [p.obj for (n_, _), p in self.pods.items() if n_ == ns
                         and _matches(p.obj["metadata"]["labels"], query.get("labelSelector"))]
                return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
            if name is not None and method == "DELETE":
                pod = self.pods.get((ns, name))
                if pod is None:
                    return 404, _status(404, "NotFound", f'pods "{name}" not found')
                grace = int((body or {}).get("gracePeriodSeconds", query.get("gracePeriodSeconds", pod.grace)))
                self._terminate(pod, grace)
                return 200, pod.obj
        return 404, _status(404, "NotFound", f"fake: no route for {method} {'/'.join(parts)}")

    def create_job(self, ns: str, query: dict, body: dict) -> tuple[int, dict]:
        errors = validate(body, "V1Job")
        if errors:
            self.schema_errors += errors
            return 422, _status(422, "Invalid", "; ".join(errors))
        if query.get("fieldValidation") != "Strict":
            self.schema_errors.append("create without fieldValidation=Strict")
        meta = body["metadata"]
        name = meta.get("name") or meta["generateName"] + secrets.token_hex(3)[:5]
        if (ns, name) in self.jobs:
            return 409, _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        job = json.loads(json.dumps(body))
        job["metadata"].update(name=name, namespace=ns, uid=secrets.token_hex(16), creationTimestamp=_now(),
                               resourceVersion="1")
        job["status"] = {"active": 1, "startTime": _now()}
        self.jobs[(ns, name)] = job
        pod = Pod(job, self.log_dir, self.env, self.start_pods, self.waiting_reason)
        self.pods[(ns, pod.obj["metadata"]["name"])] = pod
        return 201, job

    def delete_job(self, ns: str, name: str, query: dict, options: dict) -> tuple[int, dict]:
        job = self.jobs.get((ns, name))
        if job is None:
            return 404, _status(404, "NotFound", f'jobs.batch "{name}" not found')
        uid = (options.get("preconditions") or {}).get("uid")
        if uid is not None and uid != job["metadata"]["uid"]:
            return 409, _status(409, "Conflict", "Precondition failed: UID in precondition does not match")
        policy = options.get("propagationPolicy") or query.get("propagationPolicy") or "Background"
        job["metadata"]["deletionTimestamp"] = _now()
        self.deleted_jobs.append({"name": name, "options": options})
        for (pns, _), pod in list(self.pods.items()):
            if pns == ns and pod.obj["metadata"]["labels"]["job-name"] == name:
                self._terminate(pod, pod.grace)
        if policy != "Foreground":
            del self.jobs[(ns, name)]
        return 200, job

    def _terminate(self, pod: Pod, grace: int) -> None:
        pod.obj["metadata"].setdefault("deletionTimestamp", _now())
        if pod.proc is None:  # never started: gone at once
            pod.obj["_gone"] = True
            return
        pod.kill(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        if grace > 0:
            threading.Timer(grace, pod.kill, args=(signal.SIGKILL,)).start()

    # ---- the controllers: the kubelet's view of each process, the Job controller, garbage collection

    def _controller(self) -> None:
        while not self._stop.wait(0.2):
            with self.lock:
                for key, pod in list(self.pods.items()):
                    ended = pod.ended() or pod.obj.get("_gone")
                    labels = pod.obj["metadata"]["labels"]
                    job = self.jobs.get((key[0], labels["job-name"]))
                    if ended and job is not None and "deletionTimestamp" not in job["metadata"]:
                        ok = pod.obj["status"]["phase"] == "Succeeded"
                        job["status"] = {
                            "startTime": job["status"].get("startTime"), "completionTime": _now() if ok else None,
                            "succeeded" if ok else "failed": 1,
                            "conditions": [
                                {"type": "SuccessCriteriaMet" if ok else "FailureTarget", "status": "True"},
                                {"type": "Complete" if ok else "Failed", "status": "True",
                                 **({} if ok else {"reason": "BackoffLimitExceeded",
                                                   "message": "Job has reached the specified backoff limit"})}]}
                    if ended and "deletionTimestamp" in pod.obj["metadata"]:
                        del self.pods[key]
                for key, job in list(self.jobs.items()):
                    if "deletionTimestamp" in job["metadata"] and not any(
                            k[0] == key[0] and p.obj["metadata"]["labels"]["job-name"] == key[1]
                            for k, p in self.pods.items()):
                        del self.jobs[key]
