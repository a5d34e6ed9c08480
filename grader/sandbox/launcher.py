"""How a sandboxed worker is started: the mode, the bwrap command line, the rlimits.

Modes (chosen once per process by `resolve_mode`):

- ``bwrap-root``: the service runs as root. bubblewrap runs privileged (no user namespace) to build the
  mounts and namespaces, keeps only CAP_SETUID/SETGID/SETPCAP, and `setpriv` then drops to a dedicated
  unprivileged uid (``uid_base + n``) with no capabilities, an empty bounding set and no_new_privs.
  The process really runs as that uid on the host, so RLIMIT_NPROC bounds it (root is exempt from it).
  RLIMIT_NPROC counts per uid, host-wide: `lease_uid` gives each worker a uid no other worker on the host
  holds (the API and the job workers are separate processes), by a lock file per uid.
- ``bwrap-userns``: the service runs as a normal user. bubblewrap builds an unprivileged user namespace
  (uid 65534 inside); RLIMIT_NPROC is set to the service user's current task count plus the budget.
- ``none``: no bubblewrap. Refused unless the operator sets ``allow_unsandboxed`` (env
  ``VRFT_GRADER_ALLOW_UNSANDBOXED=1``): then the worker is a plain child process of the service user
  with the same rlimits, a clean environment and a private working directory, but it can read what the
  service user can read, reach the network and signal the user's processes. Development machines only.

In both bwrap modes the worker sees: /usr and the Python installation and virtualenv, read-only; a fresh
/proc and minimal /dev; a private /tmp tmpfs of `tmp_bytes`, emptied after each call; nothing else (no /etc,
/home, /root, no project or data folders). It has its own network namespace (loopback only, down), pid, ipc,
uts and cgroup namespaces, a new session (no terminal injection), and dies with its parent.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_PATH = Path(__file__).with_name("worker.py")
UID_RANGE = 4096
"""bwrap-root: sandbox uids are uid_base .. uid_base + UID_RANGE - 1."""
_uid_start = itertools.count()


class SandboxUnavailable(RuntimeError):
    """No sandbox can run here, and unsandboxed execution was not allowed."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class SandboxConfig:
    """Limits and placement of python-grader workers (defaults: OpenAI's 2 min, 2 GB of memory, 1 GB of disk).

    The private /tmp is a tmpfs (RAM), so `memory_bytes` is the whole budget of a worker: /tmp gets `tmp_bytes`
    (`disk_bytes`, at most half) and the address space (RLIMIT_AS) the rest; N workers never hold more than
    N x `memory_bytes` of RAM. The default budget of 3 GB is OpenAI's 2 GB of memory plus its 1 GB of disk.
    """

    mode: str = field(default_factory=lambda: os.environ.get("VRFT_GRADER_SANDBOX", "auto"))
    """auto | bwrap | none. auto = bwrap when it works, else refuse (or `none` if allowed)."""
    allow_unsandboxed: bool = field(default_factory=lambda: _env_flag("VRFT_GRADER_ALLOW_UNSANDBOXED"))
    """Operator opt-in to run user code without bubblewrap when it is unavailable."""
    workers: int | None = None
    """Warm workers per pool; default: the CPU count."""
    timeout_s: float = 120.0
    """Wall-clock limit for one grade() call (and for loading the source)."""
    grace_s: float = 5.0
    """Extra time before a worker that ignores its alarm is killed."""
    memory_bytes: int = 3 << 30
    """All the RAM a worker may hold: its address space (RLIMIT_AS) plus its /tmp (see above)."""
    disk_bytes: int = 1 << 30
    """Size of the private /tmp (and RLIMIT_FSIZE), at most half of `memory_bytes`."""
    cpu_s: int = 3600
    """RLIMIT_CPU of a worker over its life (it is restarted after `max_tasks_per_worker`)."""
    max_processes: int = 32
    """Processes/threads a worker may have (RLIMIT_NPROC)."""
    max_open_files: int = 256
    max_tasks_per_worker: int = 200_000
    uid_base: int = field(default_factory=lambda: int(os.environ.get("VRFT_SANDBOX_UID_BASE", "200000")))
    """bwrap-root: workers run as uid_base + n (n < UID_RANGE), ids no account uses."""
    uid_lock_dir: str = field(default_factory=lambda: os.environ.get("VRFT_SANDBOX_UID_LOCK_DIR", "/run/vrft-sandbox"))
    """bwrap-root: a host-wide folder with one lock file per sandbox uid (see `lease_uid`). Every process
    that starts sandboxes on a host must use the same one."""
    bwrap: str | None = field(default_factory=lambda: os.environ.get("VRFT_BWRAP") or shutil.which("bwrap"))
    python: str = field(default_factory=lambda: sys.executable)

    @property
    def tmp_bytes(self) -> int:
        """Size of the private /tmp: `disk_bytes`, at most half the memory budget."""
        return min(self.disk_bytes, self.memory_bytes // 2)

    def rlimits(self, nproc: int) -> dict:
        """The limits the worker applies to itself before it runs any user code."""
        return {
            "RLIMIT_AS": self.memory_bytes - self.tmp_bytes,
            "RLIMIT_FSIZE": self.tmp_bytes,
            "RLIMIT_CPU": self.cpu_s,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }


def lease_uid(config: SandboxConfig) -> tuple[int, int]:
    """(uid, fd): a sandbox uid that no other worker on this host runs as, held while `fd` stays open.

    RLIMIT_NPROC counts per uid host-wide, so workers sharing a uid would share one process budget. Each uid
    has a lock file in `uid_lock_dir`, flocked for the worker's life (the kernel frees it when the holder dies).
    SandboxUnavailable when all UID_RANGE uids are held."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    start = next(_uid_start)  # rotate, so a uid just given back is not the next one taken
    try:
        os.makedirs(config.uid_lock_dir, mode=0o700, exist_ok=True)
        for i in range(UID_RANGE):
            uid = config.uid_base + (start + i) % UID_RANGE
            fd = os.open(os.path.join(config.uid_lock_dir, str(uid)), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return uid, fd
    except OSError as e:
        raise SandboxUnavailable(f"cannot lock a sandbox uid in {config.uid_lock_dir}: {e}") from None
    raise SandboxUnavailable(f"all {UID_RANGE} sandbox uids ({config.uid_base}-{config.uid_base + UID_RANGE - 1}) "
                             "are in use on this host: too many python-grader workers at once")


def count_uid_tasks(uid: int) -> int:
    """Tasks (processes and threads) the user `uid` has now, as RLIMIT_NPROC counts them."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return n


def _python_roots(python: str) -> list[str]:
    """Directories the interpreter needs: its installation prefix and the virtualenv, resolved."""
    roots = []
    for p in {sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(os.path.realpath(python)))}:
        real = os.path.realpath(p)
        if real and real != "/" and not real.startswith("/usr/") and real != "/usr":
            roots.append(real)
    # venv paths that are symlinks (e.g. /work/x/.venv -> elsewhere) need their own path as well
    for p in (sys.prefix,):
        if os.path.realpath(p) != os.path.abspath(p):
            roots.append(os.path.abspath(p))
    return sorted(set(roots))


def _dirs_args(path: str) -> list[str]:
    """`--perms 0755 --dir` for each ancestor of `path` (bwrap would create them 0700)."""
    out, cur = [], ""
    for part in Path(path).parts[1:-1]:
        cur += "/" + part
        out += ["--perms", "0755", "--dir", cur]
    return out


def bwrap_args(config: SandboxConfig, mode: str, uid: int | None) -> list[str]:
    """The bwrap command line; `uid` (bwrap-root only) is the one the worker drops to."""
    args = [config.bwrap, "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if mode == "bwrap-root":
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        p = "/" + name
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    # The private /tmp first: a Python or venv that lives under /tmp (a checkout in /tmp, say) is then bound on
    # top of it instead of being hidden by it.
    args += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(config.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    seen = set()
    for root in _python_roots(config.python):
        if root in seen or not os.path.exists(root):
            continue
        seen.add(root)
        args += _dirs_args(root) + ["--ro-bind", root, root]
    args += ["--perms", "0755", "--dir", "/sandbox",
             "--ro-bind", str(WORKER_PATH), "/sandbox/worker.py",
             "--remount-ro", "/",
             "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
             "--setenv", "LANG", "C.UTF-8", "--setenv", "TMPDIR", "/tmp",
             "--setenv", "VRFT_SANDBOX_PIDNS", "1",
             "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "OPENBLAS_NUM_THREADS", "1",
             "--setenv", "MKL_NUM_THREADS", "1",
             "--chdir", "/tmp", "--"]
    if mode == "bwrap-root":
        args += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    args += [config.python, "-I", "-B", "/sandbox/worker.py"]
    return args


def build_command(config: SandboxConfig, mode: str, uid: int | None) -> tuple[list[str], dict, tuple]:
    """(argv, env, fds to pass) that start one worker."""
    if mode == "none":
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return [config.python, "-I", "-B", str(WORKER_PATH)], env, ()
    return bwrap_args(config, mode, uid), {}, ()


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str, python: str, mode: str, uid_base: int, uid_lock_dir: str) -> str | None:
    """Run `python -c pass` in the sandbox once; None when it works, else the error."""
    cfg = SandboxConfig(bwrap=bwrap, python=python, uid_base=uid_base, uid_lock_dir=uid_lock_dir)
    uid, lease = lease_uid(cfg) if mode == "bwrap-root" else (None, None)
    argv = bwrap_args(cfg, mode, uid)
    argv = argv[: argv.index(python)] + [python, "-I", "-c", "import os; assert os.getuid() != 0"]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    finally:
        if lease is not None:
            os.close(lease)
    if r.returncode != 0:
        return (r.stderr or b"").decode(errors="replace").strip()[-500:] or f"exit status {r.returncode}"
    return None


def resolve_mode(config: SandboxConfig) -> str:
    """bwrap-root | bwrap-userns | none, or raise SandboxUnavailable."""
    wanted = (config.mode or "auto").lower()
    if wanted not in ("auto", "bwrap", "none"):
        raise SandboxUnavailable(f"unknown sandbox mode {config.mode!r} (auto, bwrap, none)")
    if wanted != "none" and config.bwrap:
        mode = "bwrap-root" if os.geteuid() == 0 else "bwrap-userns"
        if mode == "bwrap-root" and not shutil.which("setpriv"):
            err = "setpriv (util-linux) is missing"
        else:
            err = _probe(config.bwrap, config.python, mode, config.uid_base, config.uid_lock_dir)
        if err is None:
            return mode
        reason = f"bubblewrap does not work here ({err})"
    elif wanted != "none":
        reason = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap, or set VRFT_BWRAP"
    else:
        reason = "the sandbox was turned off (VRFT_GRADER_SANDBOX=none)"
    if config.allow_unsandboxed and wanted != "bwrap":
        log.warning("python graders run WITHOUT a sandbox: %s", reason)
        return "none"
    raise SandboxUnavailable(
        f"python graders need a sandbox: {reason}. An operator may allow unsandboxed execution with "
        "VRFT_GRADER_ALLOW_UNSANDBOXED=1 (development only)."
    )
