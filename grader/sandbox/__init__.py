"""The python-grader sandbox: a warm pool of bubblewrap-isolated workers.

See `launcher.py` for the isolation on each kind of host and the explicit unsandboxed fallback,
`worker.py` for what runs inside, `pool.py` for batching, timeouts and recovery.
"""

from grader.sandbox.launcher import SandboxConfig, SandboxUnavailable, resolve_mode
from grader.sandbox.pool import PythonGraderPool, TaskResult, grade_once

__all__ = ["PythonGraderPool", "SandboxConfig", "SandboxUnavailable", "TaskResult", "grade_once", "resolve_mode"]
