"""This process and its peers: the environment, the process group, collectives, seeds, signals."""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_environment() -> None:
    """Environment defaults for this process, before torch/vLLM/DeepSpeed are imported.

    Without a launcher (one rank) the rank variables are filled in; on a machine without CUDA DeepSpeed is
    told to use its CPU accelerator and vLLM its CPU platform.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's engine in this process (no engine-core subprocess): direct weight sync, faster start.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if "RANK" not in os.environ:  # started as plain `python -m trainer`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    if not (os.path.exists("/dev/nvidia0") or os.environ.get("CUDA_VISIBLE_DEVICES")):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        # Intra-op threads per rank: the cores split between the ranks on this machine.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(local_world, 1))))


def init_distributed(timeout_seconds: float) -> Dist:
    """The process group (gloo on CPU, NCCL on GPUs). A world of one meets nobody: its group is set up on an
    in-memory store, with no address or port; several ranks meet at the launcher's MASTER_ADDR:MASTER_PORT.
    `timeout_seconds` bounds every collective and the rendezvous: a rank whose peer's host is gone raises
    (`is_peer_lost` says so) instead of waiting for ever."""
    from datetime import timedelta

    import deepspeed

    timeout = timedelta(seconds=timeout_seconds)

    cpu = not torch.cuda.is_available()
    backend = "gloo" if cpu else "nccl"
    if cpu:
        # Compile nothing at run time on CPU: DeepSpeed's shared-memory allreduce is a JIT-built op.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if os.environ.get("WORLD_SIZE", "1") == "1":
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1,
                                             timeout=timeout)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cpu:
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return Dist(rank, world, local_rank, device)


PEER_LOST_SIGNS = ("connection closed by peer", "connection reset by peer", "timed out", "timeout", "broken pipe",
                   "connection refused", "no route to host", "watchdog", "socket closed")


def is_peer_lost(e: BaseException) -> bool:
    """True when `e` is the process group failing: a peer rank died, its host or the network went away, or a
    collective outwaited `init_distributed`'s timeout (gloo and NCCL say it in their own words)."""
    dist_errors = tuple(getattr(torch.distributed, n) for n in ("DistError", "DistBackendError", "DistNetworkError")
                        if hasattr(torch.distributed, n))
    text = f"{type(e).__name__}: {e}".lower()
    in_group = isinstance(e, dist_errors) or "gloo" in text or "nccl" in text or "c10d" in text
    return in_group and any(sign in text for sign in PEER_LOST_SIGNS)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(x, op=ops[op])
    return x


def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0 (rank order)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def seed_everything(*keys: int) -> None:
    """Seed python, numpy and torch from a tuple of ints (e.g. (seed, step)): same keys, same numbers."""
    import numpy as np

    s = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def derive_seed(*keys: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the rows in `epoch`: a permutation fixed by (seed, epoch), so resuming needs no state."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


class Cancelled(BaseException):
    """Raised by the SIGTERM handler: stop now."""


class Signals:
    """SIGUSR1 asks for a pause at the next step boundary; SIGTERM cancels at once (raises Cancelled)."""

    def __init__(self):
        self.pause_requested = False
        self.cancel_requested = False
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_usr1(self, signum, frame):
        self.pause_requested = True

    def _on_term(self, signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills outright
        # Kept for `should_pause`: code the exception lands in may swallow it (a torch.compile'd frame's
        # guard code does), and the next step boundary must still stop.
        self.cancel_requested = True
        raise Cancelled()

    def should_pause(self, device: torch.device) -> bool:
        """True on every rank when any rank was asked to pause (a collective: call it on all ranks).
        Raises Cancelled if a SIGTERM came and its exception was lost on the way."""
        if self.cancel_requested:
            raise Cancelled()
        flag = torch.tensor([1.0 if self.pause_requested else 0.0], device=device)
        return bool(all_reduce(flag, "max").item() > 0)


def write_pid(output_dir: Path) -> None:
    """output_dir/trainer.pid: the process that takes SIGUSR1 (rank 0; the launcher does not forward it)."""
    (output_dir / "trainer.pid").write_text(f"{os.getpid()}\n")


def memory_stats() -> dict:
    """Peak resident memory of this process (and peak GPU memory allocated by torch), in MB.

    VmHWM, the peak of this process image's own memory, not getrusage's ru_maxrss: Linux carries ru_maxrss
    across exec, so a trainer started from a large parent (a test runner holding a model) would report the
    parent's peak."""
    try:
        status = Path("/proc/self/status").read_text()
        peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_peak_mb": peak_kb / 1024}
    if torch.cuda.is_available():
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
