"""The python-grader worker: runs INSIDE the sandbox, standard library only, one per pool slot.

Protocol on its stdin/stdout: frames of a 4-byte big-endian length + UTF-8 JSON.

    parent -> {"op": "init", "source": str, "timeout": s, "limits": {...}}
           <- {"ok": true} | {"ok": false, "error": str}
    parent -> {"op": "grade", "items": [json text, ...], "tasks": [[sample, item_index], ...], "stream": bool}
           <- {"r": [[task_index, "ok", score] | [task_index, kind, message], ...]}  (one or more frames)
           <- {"done": n, "dirty": bool}

Before any user code runs it sets its own rlimits (soft = hard, so they cannot be raised again),
redirects fds 0-2 to /dev/null (user output goes nowhere), and after each task kills every other
process of its pid namespace (fork bombs, stray children). Results are buffered and flushed at least
every FLUSH_S of progress, or after every task when `stream` is set (used to find a task that hung).
After each grade op it empties its scratch folder (TMPDIR at start: the sandbox's private /tmp, the
private working directory without a sandbox), so a call never sees files an earlier call left; `dirty`
says it could not, and the parent then replaces the worker (a new one gets a new /tmp).
"""

import json
import math
import os
import resource
import shutil
import signal
import struct
import sys
import time
import traceback

FLUSH_S = 0.02
FLUSH_RESULTS = 512


class GraderTimeout(BaseException):
    """Raised in user code by SIGALRM (a BaseException so `except Exception` does not swallow it)."""


def _on_alarm(signum, frame):
    raise GraderTimeout()


def _set_limits(limits):
    for name, value in limits.items():
        res = getattr(resource, name, None)
        if res is None or value is None:
            continue
        try:
            resource.setrlimit(res, (int(value), int(value)))
        except (ValueError, OSError):
            pass


def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            os._exit(0)  # parent closed the pipe
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _check(value):
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        return None, f"grade() returned {type(value).__name__}, expected a number"
    value = float(value)
    if not math.isfinite(value):
        return None, f"grade() returned {value!r}, expected a finite number"
    return value, None


def _short_tb(limit=2000):
    etype, evalue, tb = sys.exc_info()
    # drop the worker's own frames: keep the user's
    frames = [f for f in traceback.extract_tb(tb) if f.filename == "<grader>"]
    text = "".join(traceback.format_list(frames[-5:])) + "".join(traceback.format_exception_only(etype, evalue))
    return text[-limit:]


def _python_paths():
    """The Python installation and virtualenv, as the launcher binds them: inside /tmp when they live there on
    the host (a checkout in /tmp), where the wipe must leave them."""
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    return {q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))}


def _wipe(folder, keep=frozenset()):
    """Empty `folder` without following links, except the paths in `keep` and the folders on the way to them
    (whose other entries go); False if anything could not be removed."""
    ok = True
    try:
        with os.scandir(folder) as entries:
            entries = list(entries)
    except OSError:
        return False
    for entry in entries:
        if entry.path in keep:
            continue
        if any(k.startswith(entry.path + "/") for k in keep):
            ok = _wipe(entry.path, keep) and ok
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            ok = False
    return ok


def main():
    scratch = os.path.realpath(os.environ["TMPDIR"])  # read before user code can change the environment
    keep = frozenset(_python_paths())
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sys.stdin = open(os.devnull)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    main_pid = os.getpid()
    in_pidns = os.environ.get("VRFT_SANDBOX_PIDNS") == "1" and main_pid <= 3

    def send(obj):
        if os.getpid() != main_pid:  # a forked child must never speak the protocol
            os._exit(0)
        data = json.dumps(obj, separators=(",", ":")).encode()
        buf = struct.pack(">I", len(data)) + data
        view = memoryview(buf)
        while view:
            n = os.write(wfd, view)
            view = view[n:]

    def recv():
        (n,) = struct.unpack(">I", _read_exact(rfd, 4))
        return json.loads(_read_exact(rfd, n))

    def reap():
        if in_pidns:
            try:
                os.kill(-1, signal.SIGKILL)  # every process of this namespace but init and ourselves
            except OSError:
                pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass

    msg = recv()
    _set_limits(msg.get("limits") or {})
    timeout = float(msg.get("timeout") or 120)
    signal.signal(signal.SIGALRM, _on_alarm)
    env = {"__name__": "__grader__", "__builtins__": __builtins__}
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        exec(compile(msg["source"], "<grader>", "exec"), env)
        signal.setitimer(signal.ITIMER_REAL, 0)
        grade = env.get("grade")
        if not callable(grade):
            raise TypeError("the source does not define a function grade(sample, item)")
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
        send({"ok": False, "error": _short_tb()})
        os._exit(0)
    reap()
    send({"ok": True})

    while True:
        msg = recv()
        items = msg["items"]
        stream = bool(msg.get("stream"))
        out, last = [], time.monotonic()
        for i, (sample, idx) in enumerate(msg["tasks"]):
            try:
                item = json.loads(items[idx])
                signal.setitimer(signal.ITIMER_REAL, timeout)
                value = grade(sample, item)
                signal.setitimer(signal.ITIMER_REAL, 0)
                score, err = _check(value)
                out.append([i, "ok", score] if err is None else [i, "type", err])
            except GraderTimeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
                out.append([i, "timeout", f"grade() did not return within {timeout:g} s"])
            except BaseException:
                signal.setitimer(signal.ITIMER_REAL, 0)
                out.append([i, "runtime", _short_tb()])
            reap()
            now = time.monotonic()
            if stream or len(out) >= FLUSH_RESULTS or now - last >= FLUSH_S:
                send({"r": out})
                out, last = [], now
        if out:
            send({"r": out})
        send({"done": len(msg["tasks"]), "dirty": not _wipe(scratch, keep)})


if __name__ == "__main__":
    main()
