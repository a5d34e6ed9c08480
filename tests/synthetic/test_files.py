"""Files written by `write_task` and `python -m synthetic`: the service's JSONL validation accepts them
(reinforcement rows for RFT files, supervised rows for SFT files), and the CLI writes the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import grader
from api.validation import DatasetLimits, validate_jsonl
from synthetic import generate, grader_spec, to_jsonl, write_task

REPO = Path(__file__).resolve().parents[2]
LIMITS = DatasetLimits(
    max_rows=50000,
    max_image_bytes=10 * 1024 * 1024,
    max_images_per_row=10,
    max_image_pixels=40_000_000,
    max_image_urls=10_000,
)


def validate(path: Path):
    with open(path, "rb") as f:
        return validate_jsonl(iter(lambda: f.read(1 << 16), b""), LIMITS)


@pytest.mark.parametrize("task", ["detection", "grounding", "classification"])
@pytest.mark.parametrize("sft", [False, True])
def test_written_files_pass_the_service_validation(tmp_path, task, sft):
    paths = write_task(tmp_path, task, 12, seed=31, sft=sft)
    assert paths["data"].name == f"{task}.train{'.sft' if sft else ''}.jsonl"
    report = validate(paths["data"])
    assert report.errors == [] and report.error_count == 0 and report.ok
    assert report.rows == 12 and report.images == 12
    assert (report.rl_rows, report.sft_rows) == ((0, 12) if sft else (12, 0))
    assert paths["data"].read_bytes() == to_jsonl(generate(task, 12, seed=31, sft=sft))
    spec = json.loads(paths["grader"].read_text())
    assert spec == grader_spec(task)
    grader.validate_grader(spec)


def test_short_normalised_variant_names_and_grader(tmp_path):
    paths = write_task(tmp_path, "detection", 5, seed=1, sft=True, short=True, coordinates="norm1000", split="valid")
    assert paths["data"].name == "detection_short_norm1000.valid.sft.jsonl"
    assert paths["grader"].name == "detection_short_norm1000.grader.json"
    spec = json.loads(paths["grader"].read_text())
    assert spec == grader_spec("detection", short=True, coordinates="norm1000")
    assert spec["graders"]["task"]["input_format"]["coordinates"] == "norm1000"
    assert spec["graders"]["task"]["reference_format"]["coordinates"] == "pixel"
    rows = [json.loads(line) for line in paths["data"].read_text().splitlines()]
    assert validate(paths["data"]).ok
    g = grader.compile(spec)
    assert min(g.grade([r["messages"][-1]["content"] for r in rows], rows).rewards) >= 0.98


def test_cli_writes_train_valid_and_grader(tmp_path):
    out = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "synthetic", "--task", "grounding", "--n", "6", "--seed", "3", "--out", str(out),
         "--short", "--valid", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["rows"] == 6 and info["valid_rows"] == 4
    train, valid, spec = Path(info["train"]), Path(info["valid"]), Path(info["grader"])
    assert train.read_bytes() == to_jsonl(generate("grounding", 6, seed=3, short=True))
    assert valid.read_bytes() == to_jsonl(generate("grounding", 4, seed=3, short=True, split="valid"))
    assert train.read_bytes()[:2000] != valid.read_bytes()[:2000]
    assert json.loads(spec.read_text()) == grader_spec("grounding", short=True)
    for path in (train, valid):
        report = validate(path)
        assert report.ok and report.rl_rows == report.rows

    sft = subprocess.run(
        [sys.executable, "-m", "synthetic", "--task", "classification", "--n", "3", "--out", str(out), "--sft"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert sft.returncode == 0, sft.stderr
    report = validate(Path(json.loads(sft.stdout)["train"]))
    assert report.ok and report.sft_rows == 3

    bad = subprocess.run([sys.executable, "-m", "synthetic", "--task", "segmentation", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
