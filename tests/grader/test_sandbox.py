"""The python-grader sandbox: escape attempts fail, each scores 0 with a reason, and the pool stays healthy."""

from __future__ import annotations

import os
import textwrap
import time

import pytest

from grader.sandbox import PythonGraderPool, SandboxConfig, SandboxUnavailable, grade_once, resolve_mode

ECHO = "def grade(sample, item):\n    return float(item['x'])\n"


def src(body: str) -> str:
    """A grader whose grade() runs `body` (which may `return`); falls through to 1.0."""
    return "def grade(sample, item):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n    return 1.0\n"


@pytest.fixture(scope="module")
def cfg() -> SandboxConfig:
    return SandboxConfig(timeout_s=3, grace_s=2, memory_bytes=512 << 20, disk_bytes=64 << 20, workers=1)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    """Stand-ins for the service's database and api_key file on the host."""
    home = tmp_path_factory.mktemp("vrft-home")
    (home / "vrft.db").write_bytes(b"SQLite format 3\x00 secret rows")
    (home / "api_key").write_text("sk-vrft-secret")
    os.chmod(home, 0o755)
    return home


def assert_blocked(source: str, cfg: SandboxConfig, *, kinds=("runtime",), item=None, again: int = 3):
    """The escape fails (an error result, never a score) and the same pool keeps answering afterwards."""
    with PythonGraderPool(source, cfg) as pool:
        res = pool.grade([{"output_text": "x"}], [item or {"x": 1}])[0]
        assert res.score is None, f"escape succeeded: {res}"
        assert res.kind in kinds, res
        assert res.message
        more = pool.grade([{"output_text": "x"}] * again, [item or {"x": 1}] * again)
        assert all(r.score is None and r.kind in kinds for r in more), more
    return res


FAST = SandboxConfig(timeout_s=1, grace_s=1, memory_bytes=512 << 20, workers=1)


def test_mode_here_is_bwrap(cfg):
    assert resolve_mode(cfg).startswith("bwrap")


def test_open_socket_has_no_network(cfg):
    res = assert_blocked(src("""
        import socket
        s = socket.create_connection(("1.1.1.1", 53), timeout=1)
    """), cfg)
    assert "Network is unreachable" in res.message or "OSError" in res.message


def test_cannot_reach_host_services_on_loopback(cfg):
    import socket

    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    port = host.getsockname()[1]
    try:  # the sandbox has its own loopback: the host's listening port is not there
        res = assert_blocked(src(f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=1)
        """), cfg)
        assert "Connection refused" in res.message
    finally:
        host.close()


def test_read_etc_shadow_and_passwd(cfg):
    res = assert_blocked(src("open('/etc/shadow').read()"), cfg)
    assert "FileNotFoundError" in res.message
    assert_blocked(src("open('/etc/passwd').read()"), cfg)


def test_read_service_database_and_api_key(cfg, secrets):
    for name in ("vrft.db", "api_key"):
        res = assert_blocked(src(f"return float(len(open({str(secrets / name)!r}, 'rb').read()))"), cfg)
        assert "FileNotFoundError" in res.message


def test_cannot_see_home_root_or_project(cfg):
    assert_blocked(
        src("""
        import os
        seen = [p for p in ('/root', '/home', '/work/main/api', '/work/main/.vrft', '/etc')
                if os.path.exists(p) and os.listdir(p) not in ([], ['.pyenv'])]
        if seen: return 1.0
        raise RuntimeError('nothing visible')
    """),
        cfg,
    )


def test_write_outside_tmp_fails_but_tmp_works(cfg):
    for path in ("/usr/evil", "/evil", "/work/main/.venv/evil", "/proc/evil"):
        assert_blocked(src(f"open({path!r}, 'w').write('x')"), cfg)
    with PythonGraderPool(
        src("open('/tmp/ok', 'w').write('fine'); return float(len(open('/tmp/ok').read()))"), cfg
    ) as pool:
        assert pool.grade([{}], [{}])[0].score == 4.0


def test_disk_limit(cfg):
    res = assert_blocked(src("""
        with open('/tmp/big', 'wb') as f:
            for _ in range(200):
                f.write(b'x' * (1 << 20))
    """), cfg, kinds=("runtime", "crash"))
    assert "File too large" in res.message or "No space" in res.message or "SIGXFSZ" in res.message


def test_fork_bomb(cfg):
    res = assert_blocked(src("""
        import os
        while True:
            os.fork()
    """), cfg, kinds=("runtime", "timeout", "crash"))
    assert res.message


def test_subprocess_cannot_escape_pid_namespace(cfg):
    with PythonGraderPool(src("""
        import os
        return float(len([p for p in os.listdir('/proc') if p.isdigit()]))
    """), cfg) as pool:
        assert pool.grade([{}], [{}])[0].score <= 3  # bwrap's init, the worker, maybe a dying child


def test_allocate_10_gb(cfg):
    res = assert_blocked(src("b = bytearray(10 * 1024**3)"), cfg, kinds=("runtime", "crash"))
    assert "MemoryError" in res.message or "killed" in res.message


def test_infinite_loop_times_out(cfg):
    t = time.monotonic()
    res = assert_blocked(src("while True: pass"), FAST, kinds=("timeout",), again=2)
    assert "did not return within 1 s" in res.message
    assert time.monotonic() - t < 3 * FAST.timeout_s + 5  # the worker's own alarm: no hard kill needed


def test_loop_that_swallows_the_alarm_is_killed(cfg):
    res = assert_blocked(src("""
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    """), FAST, kinds=("timeout",), again=1)
    assert "hard deadline" in res.message


def test_kill_the_parent_and_everyone(cfg):
    import os as host_os

    me = host_os.getpid()
    for body in ("import os; os.kill(os.getppid(), 9)", "import os, signal; os.kill(-1, 9)",
                 f"import os; os.kill({me}, 9)", "import os; os.killpg(0, 9)"):
        with PythonGraderPool(src(body) + "\n", cfg) as pool:
            r = pool.grade([{}], [{}])[0]
            assert r.score != 1.0 or body.startswith("import os; os.kill(os.getppid()")
            assert pool.grade([{}], [{}])[0] is not None
    assert host_os.getpid() == me  # we are alive


def test_exit_and_os_exit(cfg):
    assert_blocked(src("import sys; sys.exit(0)"), cfg)
    assert_blocked(src("import os; os._exit(3)"), cfg, kinds=("crash",))


def test_huge_output_is_discarded(cfg):
    with PythonGraderPool(
        src(
            "print('x' * (50 * 1024 * 1024)); import sys; sys.stderr.write('y' * 10**7); "
            "import os; os.write(1, b'z' * 10**6)"
        ),
        cfg,
    ) as pool:
        r = pool.grade([{}] * 3, [{}] * 3)
        assert [x.score for x in r] == [1.0, 1.0, 1.0]


def test_huge_return_and_exception_message(cfg):
    res = assert_blocked(src("return 'x' * (10**8)"), cfg, kinds=("type",))
    assert len(res.message) < 5000
    res = assert_blocked(src("raise ValueError('y' * 10**7)"), cfg)
    assert len(res.message) <= 2000


@pytest.mark.parametrize("value,kind", [
    ("float('nan')", "type"), ("float('inf')", "type"), ("'0.5'", "type"), ("None", "type"), ("[1.0]", "type"),
    ("True", None), ("3", None),
])
def test_return_values(cfg, value, kind):
    with PythonGraderPool(f"def grade(sample, item):\n    return {value}\n", cfg) as pool:
        r = pool.grade([{}], [{}])[0]
    assert r.kind == kind, r
    if kind is None:
        assert r.score == float(eval(value))


def test_source_errors_are_runtime_errors(cfg):
    with PythonGraderPool("raise RuntimeError('at import')\ndef grade(s, i):\n    return 1\n", cfg) as pool:
        r = pool.grade([{}, {}], [{}, {}])
    assert all(x.kind == "runtime" and "at import" in x.message for x in r)


def test_batch_in_order_with_failures_in_the_middle(cfg):
    source = src("""
        x = item['x']
        if x == 'loop':
            import signal
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            while True: pass
        if x == 'die':
            import os; os._exit(1)
        if x == 'raise':
            raise KeyError(x)
        return float(x)
    """)
    xs = [1, 2, "raise", 3, "die", 4, "loop", 5, 6]
    cfg2 = SandboxConfig(timeout_s=1, grace_s=1, workers=2, memory_bytes=512 << 20)
    with PythonGraderPool(source, cfg2) as pool:
        r = pool.grade([{}] * len(xs), [{"x": x} for x in xs])
    assert [x.score for x in r] == [1, 2, None, 3, None, 4, None, 5, 6]
    assert [x.kind for x in r][2::2] == ["runtime", "crash", "timeout", None]


def test_warm_pool_is_fast_and_compiles_once(cfg):
    source = "import time\nLOADED = time.time()\ndef grade(sample, item):\n    return LOADED\n"
    with PythonGraderPool(source, SandboxConfig(workers=1)) as pool:
        a = pool.grade([{}] * 200, [{}] * 200)
        b = pool.grade([{}] * 200, [{}] * 200)
    assert len({x.score for x in a + b}) == 1  # one load for both batches


def test_state_does_not_leak_between_graders(cfg):
    with PythonGraderPool(
        "import os\ndef grade(s, i):\n    open('/tmp/mark', 'w').write('a'); return 1.0\n", cfg
    ) as p1:
        p1.grade([{}], [{}])
    with PythonGraderPool("import os\ndef grade(s, i):\n    return float(os.path.exists('/tmp/mark'))\n", cfg) as p2:
        assert p2.grade([{}], [{}])[0].score == 0.0


def test_runs_as_unprivileged_user(cfg):
    with PythonGraderPool(src("""
        import os
        status = open('/proc/self/status').read()
        eff = [l for l in status.splitlines() if l.startswith('CapEff')][0].split()[1]
        nnp = [l for l in status.splitlines() if l.startswith('NoNewPrivs')][0].split()[1]
        return float(os.getuid() != 0 and int(eff, 16) == 0 and nnp == '1')
    """), cfg) as pool:
        assert pool.grade([{}], [{}])[0].score == 1.0


def test_numpy_is_available_inside(cfg):
    with PythonGraderPool(src("import numpy as np; return float(np.arange(4).sum())"), cfg) as pool:
        assert pool.grade([{}], [{}])[0].score == 6.0


def test_grade_once_matches_pool(cfg):
    assert grade_once(ECHO, {}, {"x": 0.25}, cfg).score == 0.25


def test_refuses_to_run_unsandboxed_unless_allowed(tmp_path):
    with pytest.raises(SandboxUnavailable, match="VRFT_GRADER_ALLOW_UNSANDBOXED"):
        resolve_mode(SandboxConfig(bwrap=None, allow_unsandboxed=False))
    with pytest.raises(SandboxUnavailable):
        resolve_mode(SandboxConfig(mode="none", allow_unsandboxed=False))
    assert resolve_mode(SandboxConfig(bwrap=None, allow_unsandboxed=True)) == "none"
    # the explicit fallback still applies the limits and still grades
    fallback = SandboxConfig(bwrap=None, allow_unsandboxed=True, timeout_s=2, memory_bytes=512 << 20)
    with PythonGraderPool(src("b = bytearray(10 * 1024**3)"), fallback) as pool:
        assert pool.grade([{}], [{}])[0].kind == "runtime"
    with PythonGraderPool(ECHO, fallback) as pool:
        assert pool.grade([{}], [{"x": 2}])[0].score == 2.0


def test_compiled_grader_reports_sandbox_unavailable():
    import grader

    g = grader.compile({"type": "python", "name": "p", "source": ECHO},
                       sandbox=SandboxConfig(bwrap=None, allow_unsandboxed=False))
    r = g.grade(["x"], [{"x": 1}]).results[0]
    g.close()
    assert r.reward == 0.0
    assert (
        r.errors["python_grader_server_error"] and r.errors["python_grader_server_error_type"] == "sandbox_unavailable"
    )


def test_grader_image_packages_import_in_the_sandbox(cfg):
    """The packages of OpenAI's grader image 2025-05-08 that this server provides run inside the sandbox."""
    source = src("""
        import deepdiff, jsonschema, nltk, numpy, pandas, pydantic, rapidfuzz, scipy, sklearn, sqlparse, sympy, yaml
        from rouge_score import rouge_scorer
        from ast_grep_py import SgRoot
        r = rouge_scorer.RougeScorer(["rouge1"]).score("a red circle", sample["output_text"])["rouge1"].fmeasure
        assert SgRoot("x = 1", "python").root().find(pattern="x = $A") is not None
        assert not deepdiff.DeepDiff({"a": 1}, {"a": 1})
        assert sqlparse.format("select 1", keyword_case="upper") == "SELECT 1"
        return r
    """)
    cfg2 = SandboxConfig(timeout_s=60, grace_s=2, memory_bytes=2 << 30, disk_bytes=64 << 20, workers=1)
    with PythonGraderPool(source, cfg2) as pool:
        res = pool.grade([{"output_text": "a red circle"}], [{}])[0]
    assert res.kind is None and res.score == 1.0, res
