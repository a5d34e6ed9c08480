"""bench/gpu_check.py, the measured GPU run, on this CPU with the tiny model: every figure is printed and finite,
and the ratio is the two measured GRPO step times' (ours / TRL's)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_with_the_tiny_model(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--like", "tiny",
                           "--steps", "3", "--warmup", "1", "--tokens", "8", "--generations", "4", "--sft-batch", "4",
                           "--threads", "2", "--work", str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout

    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^(ours GRPO|ours SFT|TRL GRPO) +(.+)$", out, re.M)}
    assert set(rows) == {"ours GRPO", "ours SFT", "TRL GRPO"}, out
    step, sampled, trained, memory, mfu = rows["ours GRPO"]
    for figure in (step, sampled, trained, memory):
        assert math.isfinite(float(figure)) and float(figure) > 0, rows["ours GRPO"]
    assert mfu == "n/a"  # no stated peak for a CPU
    step, sampled, trained, memory, _ = rows["ours SFT"]
    assert sampled == "n/a" and float(step) > 0 and float(trained) > 0 and float(memory) > 0
    assert float(rows["TRL GRPO"][0]) > 0 and float(rows["TRL GRPO"][3]) > 0

    ratio = re.search(r"^GRPO step time ours / TRL: ([\d.]+) \(([\d.]+) s / ([\d.]+) s\)$", out, re.M)
    assert ratio, out
    assert float(ratio.group(2)) == float(rows["ours GRPO"][0]) and float(ratio.group(3)) == float(rows["TRL GRPO"][0])

    # The saved results: both trainers measured every step, and the ratio is theirs.
    results = json.loads((work / "results.json").read_text())
    ours, sft, trl = results["runs"]
    assert results["ratio_ours_to_trl"] == ours["step_s"] / trl["step_s"]
    assert abs(float(ratio.group(1)) - results["ratio_ours_to_trl"]) < 1e-3
    trl_times = json.loads((work / "trl" / "result.json").read_text())["times"]
    assert len(trl_times) == 3 and all(t > 0 for t in trl_times)
    ours_events = [json.loads(line) for line in (work / "ours-reinforcement" / "out" / "events.jsonl").read_text()
                   .splitlines()]
    assert [e["step"] for e in ours_events if e["type"] == "metrics"] == [1, 2, 3]
