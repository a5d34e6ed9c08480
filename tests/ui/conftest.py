"""Fixtures for the dashboard's browser tests: a live `vrft serve` whose worker trains the tiny model, two
projects, a finished RFT job whose rollouts have boxes, and Debian's Chromium driven headless by Selenium.

Screenshots go to $VRFT_TEST_ARTIFACTS or tests/ui/artifacts (printed in the report header)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import synthetic
from tests.conftest import make_settings
from tests.helpers import LiveServer
from tests.jobs.conftest import tiny_model, training_env  # noqa: F401  (the fixture, for this folder's tests)

ARTIFACTS = Path(os.environ.get("VRFT_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
CHROMIUM = os.environ.get("VRFT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VRFT_CHROMEDRIVER", "/usr/bin/chromedriver")
TERMINAL = ("succeeded", "failed", "cancelled")

BOX_GRADER = {
    "type": "multi", "name": "boxes", "calculate_output": "(iou + format) / 2",
    "graders": {
        "iou": {"type": "iou", "name": "iou", "mode": "grounding", "input": "{{sample.output_text}}",
                "reference": "{{item.boxes}}", "parser": "json",
                "input_format": {"box_format": "xyxy", "coordinates": "pixel"}},
        "format": {"type": "format", "name": "format", "input": "{{sample.output_text}}",
                   "pattern": r'\{"bbox_2d": ?\[\d+, ?\d+, ?\d+, ?\d+\]\}'},
    },
}
"""Grounding rows graded on the model's `{"bbox_2d": [x1, y1, x2, y2]}` (pixels) and on its form."""
BOX_FORMAT = {"type": "json_schema", "json_schema": {"name": "box", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["bbox_2d"],
    "properties": {"bbox_2d": {"type": "array", "minItems": 4, "maxItems": 4,
                               "items": {"type": "integer", "minimum": 0, "maximum": 160}}}}}}
"""The random tiny model never writes a box on its own: its samples are constrained to one (vLLM)."""


def pytest_report_header(config: pytest.Config) -> str:
    return f"dashboard screenshots: {ARTIFACTS}"


@dataclass
class UI:
    server: LiveServer
    key: str
    other_key: str
    """A key of a second project."""

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/v1", headers={"Authorization": f"Bearer {key or self.key}"},
                            timeout=120)

    def upload(self, rows: list[dict], name: str, key: str | None = None) -> str:
        with self.http(key) as c:
            f = c.post("/files", files={"file": (name, synthetic.to_jsonl(rows))}, data={"purpose": "fine-tune"})
            f.raise_for_status()
            fid = f.json()["id"]
            deadline = time.time() + 120
            while (status := c.get(f"/files/{fid}").json()["status"]) not in ("processed", "error"):
                assert time.time() < deadline, "the file was not processed"
                time.sleep(0.2)
            assert status == "processed"
        return fid

    def box_job(self, *, key: str | None = None, steps: int = 2, seed: int = 3) -> str:
        """An RFT job on grounding rows with BOX_GRADER: `steps` optimizer steps, an evaluation after each."""
        train = self.upload(synthetic.generate("grounding", 2 * steps, seed=1, short=True), "train.jsonl", key)
        valid = self.upload(synthetic.generate("grounding", 2, seed=2, short=True, split="valid"), "valid.jsonl", key)
        body = {"model": "tiny-qwen2-vl", "training_file": train, "validation_file": valid, "seed": seed,
                "method": {"type": "reinforcement", "reinforcement": {
                    "grader": BOX_GRADER, "response_format": BOX_FORMAT,
                    "hyperparameters": {"n_epochs": 1, "batch_size": 2, "num_generations": 2,
                                        "max_completion_length": 40, "eval_interval": 1, "eval_samples": 2}}}}
        with self.http(key) as c:
            r = c.post("/fine_tuning/jobs", json=body)
            assert r.status_code == 200, r.text
            return r.json()["id"]

    def wait(self, job_id: str, until=lambda j: j["status"] in TERMINAL, timeout: float = 600) -> dict:  # noqa: ANN001
        deadline = time.time() + timeout
        with self.http() as c:
            while time.time() < deadline:
                job = c.get(f"/fine_tuning/jobs/{job_id}").json()
                if until(job):
                    return job
                time.sleep(0.5)
        raise AssertionError(f"job {job_id} is {job['status']} after {timeout}s")


@pytest.fixture(scope="module")
def ui(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:  # noqa: F811
    """`vrft serve` training jobs on SQLite and a local folder, with a second project and its key."""
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope

    home = tmp_path_factory.mktemp("ui-home")
    env = training_env(home, tiny_model)
    settings = make_settings(env, home)
    migrate(settings)
    with session_scope(settings) as s:
        other_key = add_key(s, get_or_create_project(s, "other"))
    server = LiveServer(env, home).start()
    try:
        yield UI(server, env["VRFT_API_KEY"], other_key)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def finished_job(ui: UI) -> dict:
    """A succeeded RFT job with its rollout records (2 steps, 2 evaluations)."""
    job = ui.wait(ui.box_job())
    assert job["status"] == "succeeded", job.get("error")
    return job


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium (Debian's `chromium` and `chromium-driver`, installed by `make install`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: `make sysdeps` installs chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
