"""One vLLM OpenAI server process: the command line and environment built from settings, start, health, stop.

The server is vLLM's own (`python -m vllm.entrypoints.openai.api_server`: the CPU build here, the CUDA build
on GPU hosts), bound to 127.0.0.1 on a free port, serving one model folder under the public model id.
Compile caches (torch.compile / inductor) live in `{home}/cache/` so a restart of the same model is faster.
The server fetches no media URL itself: the proxy fetches and checks images and sends data URLs
(serving/proxy.py); should a URL reach the server all the same, it may only name a domain that cannot
resolve, and no redirect is followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from serving.interface import ServingConfig

log = logging.getLogger("vrft.serving")

GiB = 1024**3
NO_MEDIA_DOMAIN = "vrft.invalid"
"""The one domain an engine may fetch media from (`--allowed-media-domains`): `.invalid` never resolves (RFC 2606)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for an engine here; for a trainer's rendezvous in api/runner.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device(settings: ServingConfig) -> str:
    if settings.serving_device != "auto":
        return settings.serving_device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _is_multimodal(model_path: Path) -> bool:
    try:
        cfg = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "vision_config" in cfg


def engine_command(settings: ServingConfig, model_path: Path, served_name: str, port: int) -> list[str]:
    """The vLLM command line for one model folder."""
    s = settings
    cmd = [
        s.serving_python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", s.serving_dtype, "--max-model-len", str(s.serving_max_model_len),
        "--max-num-seqs", str(s.serving_max_num_seqs),
        "--disable-uvicorn-access-log", "--allowed-media-domains", NO_MEDIA_DOMAIN,
    ]
    if _is_multimodal(model_path):
        cmd += ["--limit-mm-per-prompt", json.dumps({"image": s.max_images_per_row, "video": 0})]
    if s.serving_enforce_eager:
        cmd.append("--enforce-eager")
    if device(s) == "cuda":
        cmd += ["--tensor-parallel-size", str(s.serving_tensor_parallel_size)]
        if s.serving_kv_cache_gib is not None:
            cmd += ["--kv-cache-memory-bytes", str(int(s.serving_kv_cache_gib * GiB))]
        if s.serving_gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(s.serving_gpu_memory_utilization)]
    if s.serving_single_process and s.serving_tensor_parallel_size == 1:
        cmd += ["--distributed-executor-backend", "uni"]
    return cmd + list(s.serving_extra_args)


def engine_env(settings: ServingConfig) -> dict[str, str]:
    """The environment of a vLLM server: offline, caches under `{home}/cache`, no media redirects, CPU knobs
    on CPU hosts."""
    cache = settings.cache_dir
    tmp = settings.tmp_dir / "serving"
    # vLLM binds ZeroMQ IPC sockets under TMPDIR, and a Unix socket path holds at most 107 bytes: with a deep
    # VRFT_HOME (a temporary test folder, say) take a short private folder in the system's tmp instead.
    if len(str(tmp)) > 48:
        tmp = Path(tempfile.gettempdir()) / f"vrft-serving-{hashlib.sha256(str(tmp).encode()).hexdigest()[:12]}"
    tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TMPDIR": str(tmp), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",
    }
    if device(settings) == "cpu":
        env.update({
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": str(max(1, math.ceil(settings.serving_kv_cache_gib or 1))),
        })
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if settings.serving_single_process and settings.serving_tensor_parallel_size == 1:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def estimate_gib(settings: ServingConfig, model_path: Path) -> float:
    """What one engine of this folder is expected to hold in memory (for the memory budget)."""
    weights = sum(p.stat().st_size for p in model_path.glob("*.safetensors")) + sum(
        p.stat().st_size for p in model_path.glob("*.bin")
    )
    kv = settings.serving_kv_cache_gib or 1.0
    return weights / GiB + kv + settings.serving_engine_overhead_gib


@dataclass(eq=False)
class Engine:
    """A vLLM server for one model folder. `state`: starting -> ready -> (dead | stopped), or starting ->
    failed. `ready` is set once the state leaves `starting`."""

    key: str
    """What engines are shared by: the resolved model folder (managed) or the base URL (external)."""
    served_name: str
    base_url: str
    model_path: Path | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    state: str = "starting"
    failure: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    memory_gib: float = 0.0
    project_id: str | None = None
    """The project whose request (or succeeded job) started it: the budget's fair share counts engines by it."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def managed(self) -> bool:
        return self.proc is not None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    @classmethod
    def launch(cls, settings: ServingConfig, model_path: Path, served_name: str, project_id: str) -> Engine:
        port = free_port()
        logs = settings.home / "logs" / "serving"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{re.sub(r'[^A-Za-z0-9._-]', '_', served_name)}-{port}.log"
        cmd = engine_command(settings, model_path, served_name, port)
        log.info("starting vLLM for %s on port %d: %s", served_name, port, " ".join(cmd))
        with open(log_path, "ab") as out:
            # its own process group: stopping it also stops the engine-core and worker processes vLLM spawns
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=engine_env(settings),
                start_new_session=True,
                cwd=settings.home,
                preexec_fn=_die_with_the_api,
            )
        return cls(
            key=str(model_path),
            served_name=served_name,
            base_url=f"http://127.0.0.1:{port}",
            model_path=model_path,
            proc=proc,
            log_path=log_path,
            memory_gib=estimate_gib(settings, model_path),
            project_id=project_id,
        )

    async def wait_healthy(self, client: aiohttp.ClientSession, timeout: float) -> None:
        """Poll `/health` until it answers 200 (-> ready), the process exits or `timeout` passes (-> failed)."""
        deadline = time.monotonic() + timeout
        try:
            while self.state == "starting":
                if not self.alive():
                    self._fail(f"the engine exited with code {self.proc.returncode} while starting")
                    break
                if time.monotonic() > deadline:
                    self._fail(f"the engine was not healthy after {timeout:.0f} s")
                    await self.stop()
                    break
                try:
                    async with client.get(self.base_url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        healthy = r.status == 200
                    if healthy:
                        self.state = "ready"
                        log.info("vLLM for %s ready in %.1f s", self.served_name, time.monotonic() - self.started_at)
                        break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.25)
        finally:
            self.ready.set()

    def _fail(self, why: str) -> None:
        self.state = "failed"
        self.failure = why
        log.error("vLLM for %s failed: %s\n%s", self.served_name, why, self.log_tail(2000))

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the engine's process group, SIGKILL after `grace` seconds."""
        if self.state in ("starting", "ready"):
            self.state = "stopped"
        self.ready.set()
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:  # the server is gone: make sure no engine-core or worker outlives it
            _signal_group(proc, signal.SIGKILL)
            return
        log.info("stopping vLLM for %s (pid %d)", self.served_name, proc.pid)
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)


def _die_with_the_api() -> None:
    """In the engine's process, before it runs vLLM: SIGTERM when the API that started it dies (Linux's
    PR_SET_PDEATHSIG), so an API killed outright (SIGKILL, the OOM killer) leaves no engine holding its memory and
    GPU; on SIGTERM vLLM's server stops its engine core too. The signal follows the thread that started the
    engine: the API's event loop thread, which lives as long as the API."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except OSError:
        pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group we created with start_new_session: the engine and its children
    except ProcessLookupError:
        pass
