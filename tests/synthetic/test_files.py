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


@pytest.mark.parametrize("task", ["detection", "grounding", "classification"])
def test_written_dpo_files_pass_the_service_validation(tmp_path, task):
    paths = write_task(tmp_path, task, 6, seed=31, dpo=True, wrong="space")
    assert paths["data"].name == f"{task}.train.dpo.jsonl"
    report = validate(paths["data"])
    assert report.ok and (report.rows, report.dpo_rows, report.rl_rows, report.sft_rows, report.images) == \
        (6, 6, 0, 0, 6)
    assert report.stats()["dpo_rows"] == 6
    assert paths["data"].read_bytes() == to_jsonl(generate(task, 6, seed=31, dpo=True, wrong="space"))


def test_preference_rows_are_checked_field_by_field(tmp_path):
    row = generate("grounding", 1, seed=2, short=True, dpo=True)[0]
    image = row["input"]["messages"][-1]["content"][0]
    cases = {
        "'input' must be an object": {**row, "input": []},
        "missing required key 'input.messages'": {**row, "input": {}},
        "input.messages must end with the user's message": {**row, "input": {"messages": [
            *row["input"]["messages"], {"role": "assistant", "content": "x"}]}},
        "'preferred_output' must be a list of one assistant message": {**row, "preferred_output": []},
        "'non_preferred_output' must be a list of one assistant message": {
            k: v for k, v in row.items() if k != "non_preferred_output"},
        "non_preferred_output[0].role must be 'assistant'": {
            **row, "non_preferred_output": [{"role": "user", "content": "x"}]},
        "preferred_output[0].content[0]: images are only allowed in user messages": {
            **row, "preferred_output": [{"role": "assistant", "content": [image]}]},
        "'input.tools' must be a list": {**row, "input": {**row["input"], "tools": "x"}},
    }
    path = tmp_path / "bad.jsonl"
    path.write_bytes(to_jsonl([row, *cases.values()]))
    report = validate(path)
    assert report.error_count == len(cases) and report.dpo_rows == 1
    for n, (message, _) in enumerate(cases.items(), start=2):
        assert any(e.startswith(f"line {n}: ") and message in e for e in report.errors), (message, report.errors)


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

    dpo = subprocess.run(
        [sys.executable, "-m", "synthetic", "--task", "grounding", "--n", "3", "--out", str(out), "--short",
         "--dpo", "space", "--valid", "2"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dpo.returncode == 0, dpo.stderr
    info = json.loads(dpo.stdout)
    assert Path(info["train"]).read_bytes() == to_jsonl(generate("grounding", 3, seed=0, short=True, dpo=True,
                                                                 wrong="space"))
    assert validate(Path(info["valid"])).dpo_rows == 2
    both = subprocess.run([sys.executable, "-m", "synthetic", "--task", "grounding", "--out", str(out), "--sft",
                           "--dpo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "exclude each other" in both.stderr

    bad = subprocess.run([sys.executable, "-m", "synthetic", "--task", "segmentation", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
