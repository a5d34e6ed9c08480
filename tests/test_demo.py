"""`python -m demo --quick` end to end against a live server: SFT, RFT from the SFT model, evaluation of
base / SFT / RFT through /v1/chat/completions, the table, the PNG and the JSON. Slow (three vLLM engine
starts on CPU): a few minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, LiveServer
from tests.jobs.conftest import training_env


@pytest.mark.timeout(1500)  # three cold vLLM engine starts on a fresh machine: 4-12 minutes on 2 cores
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    from trainer.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "models-src" / "tiny-qwen2-vl", seed=0)
    home = tmp_path / "home"
    server = LiveServer(training_env(home, tiny, VRFT_SERVING_ENFORCE_EAGER="true"), home).start()
    out = tmp_path / "out"
    try:
        env = {**os.environ, "VRFT_HOME": str(home), "VRFT_API_KEY": server.env["VRFT_API_KEY"]}
        proc = subprocess.run([sys.executable, "-m", "demo", "--quick", "--url", server.url, "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    finally:
        server.stop()
    log = proc.stdout + proc.stderr
    (tmp_path / "demo.log").write_text(log)
    assert proc.returncode == 0, log[-5000:]
    assert "stopping the server" not in log  # it used the running one

    table = [line.split() for line in (out / "table.txt").read_text().splitlines()[2:]]
    assert [r[0] for r in table] == ["base", "sft", "rft"]
    assert [r[1] for r in table] == ["3", "3", "3"]
    assert (out / "table.txt").read_text().strip() in log and "outputs: " in log

    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    results = json.loads((out / "results.json").read_text())
    assert list(results["eval"]) == ["base", "sft", "rft"]
    for name, e in results["eval"].items():
        assert e["n"] == 3 and len(e["samples"]) == 3, name
        assert 0.0 <= e["mean_reward"] <= 1.0 and 0.0 <= e["task_score"] <= 1.0
    assert results["eval"]["base"]["model"] == "tiny-qwen2-vl"
    assert results["eval"]["sft"]["model"] == results["jobs"]["sft"]["model"].strip()
    assert results["eval"]["rft"]["model"].startswith("ft:tiny-qwen2-vl:")
    assert [m["step"] for m in results["curves"]["sft"]] == [1, 2]
    assert all(m["train_loss"] is not None for m in results["curves"]["sft"])
    assert [m["step"] for m in results["curves"]["rft"]] == [1, 2]
    assert all(0.0 <= m["train_reward_mean"] <= 1.0 for m in results["curves"]["rft"])
    assert results["final_chat"]["model"] == results["jobs"]["rft"]["model"] and isinstance(
        results["final_chat"]["answer"], str
    )
