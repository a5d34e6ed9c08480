"""How a sandboxed worker is started: the mode, the bwrap command line, the rlimits.

Modes (chosen once per process by `resolve_mode`):

- ``bwrap-root``: the service runs as root. bubblewrap runs privileged (no user namespace) to build the
  mounts and namespaces, keeps only CAP_SETUID/SETGID/SETPCAP, and `setpriv` then drops to a dedicated
  unprivileged uid (``uid_base + n``) with no capabilities, an empty bounding set and no_new_privs.
  The process really runs as that uid on the host, so RLIMIT_NPROC bounds it (root is exempt from it).
- ``bwrap-userns``: the service runs as a normal user. bubblewrap builds an unprivileged user namespace
  (uid 65534 inside); RLIMIT_NPROC is set to the service user's current task count plus the budget.
- ``none``: no bubblewrap. Refused unless the operator sets ``allow_unsandboxed`` (env
  ``VRFT_GRADER_ALLOW_UNSANDBOXED=1``): then the worker is a plain child process of the service user
  with the same rlimits, a clean environment and a private working directory, but it can read what the
  service user can read, reach the network and signal the user's processes. Development machines only.

In both bwrap modes the worker sees: /usr and the Python installation and virtualenv, read-only; a fresh
/proc and minimal /dev; a private /tmp tmpfs of `disk_bytes`; nothing else (no /etc, /home, /root,
no project or data folders). It has its own network namespace (loopback only, down), pid, ipc, uts and
cgroup namespaces, a new session (no terminal injection), and dies with its parent.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_PATH = Path(__file__).with_name("worker.py")


class SandboxUnavailable(RuntimeError):
    """No sandbox can run here, and unsandboxed execution was not allowed."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class SandboxConfig:
    """Limits and placement of python-grader workers (defaults: OpenAI's 2 min, 2 GB, 1 GB disk)."""

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
    memory_bytes: int = 2 << 30
    """RLIMIT_AS of a worker."""
    disk_bytes: int = 1 << 30
    """Size of the private /tmp (and RLIMIT_FSIZE)."""
    cpu_s: int = 3600
    """RLIMIT_CPU of a worker over its life (it is restarted after `max_tasks_per_worker`)."""
    max_processes: int = 32
    """Processes/threads a worker may have (RLIMIT_NPROC)."""
    max_open_files: int = 256
    max_tasks_per_worker: int = 200_000
    uid_base: int = field(default_factory=lambda: int(os.environ.get("VRFT_SANDBOX_UID_BASE", "200000")))
    """bwrap-root: workers run as uid_base + n (n < 4096), ids no account uses."""
    bwrap: str | None = field(default_factory=lambda: os.environ.get("VRFT_BWRAP") or shutil.which("bwrap"))
    python: str = field(default_factory=lambda: sys.executable)

    def rlimits(self, nproc: int) -> dict:
        """The limits the worker applies to itself before it runs any user code."""
        return {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_FSIZE": self.disk_bytes,
            "RLIMIT_CPU": self.cpu_s,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }


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


def bwrap_args(config: SandboxConfig, mode: str, uid: int) -> list[str]:
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
             "--size", str(config.disk_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
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


def build_command(config: SandboxConfig, mode: str, uid: int) -> tuple[list[str], dict, tuple]:
    """(argv, env, fds to pass) that start one worker."""
    if mode == "none":
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return [config.python, "-I", "-B", str(WORKER_PATH)], env, ()
    return bwrap_args(config, mode, uid), {}, ()


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str, python: str, mode: str, uid_base: int) -> str | None:
    """Run `python -c pass` in the sandbox once; None when it works, else the error."""
    cfg = SandboxConfig(bwrap=bwrap, python=python, uid_base=uid_base)
    argv = bwrap_args(cfg, mode, uid_base)
    argv = argv[: argv.index(python)] + [python, "-I", "-c", "import os; assert os.getuid() != 0"]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
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
            err = _probe(config.bwrap, config.python, mode, config.uid_base)
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
