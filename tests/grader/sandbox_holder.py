"""A separate OS process that runs one python grader in its own sandbox pool and then holds the pool (and so
its worker's uid) until its stdin closes: `python -m tests.grader.sandbox_holder '{"source": ..., ...}'`.

Prints one JSON line, `{"score", "kind", "message"}`, once the grade is done. Used by test_security.py to
put graders of two processes side by side, as the API and a job worker are on one host.
"""

from __future__ import annotations

import json
import sys

from grader.sandbox import PythonGraderPool, SandboxConfig


def main() -> None:
    args = json.loads(sys.argv[1])
    config = SandboxConfig(workers=1, timeout_s=args.get("timeout_s", 30), max_processes=args.get("max_processes", 32))
    with PythonGraderPool(args["source"], config) as pool:
        result = pool.grade([{"output_text": ""}], [args.get("item", {})])[0]
        print(json.dumps({"score": result.score, "kind": result.kind, "message": result.message}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
