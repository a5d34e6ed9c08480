"""POST /v1/fine_tuning/alpha/graders/{run,validate} in the real app, driven by the openai SDK."""

from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient

SC = {
    "type": "string_check",
    "name": "sc",
    "input": "{{sample.output_text}}",
    "reference": "{{item.ref}}",
    "operation": "eq",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from api.main import create_app
    from api.settings import Settings

    app = create_app(
        Settings(home=tmp_path_factory.mktemp("vrft-graders"), api_key="sk-test-graders"), embedded_worker=False
    )
    with TestClient(app) as http:
        yield (
            openai.OpenAI(base_url="http://testserver/v1", api_key="sk-test-graders", http_client=http, max_retries=0),
            http,
        )


def test_validate_echoes_the_grader(client):
    sdk, _ = client
    resp = sdk.fine_tuning.alpha.graders.validate(grader=SC)
    assert resp.grader.type == "string_check" and resp.grader.operation == "eq"
    multi = {
        "type": "multi",
        "name": "m",
        "graders": [SC, {**SC, "name": "b", "operation": "ne"}],
        "calculate_output": "sc - b",
    }
    raw = sdk.fine_tuning.alpha.graders.with_raw_response.validate(grader=multi).http_response.json()
    assert set(raw["grader"]["graders"]) == {"sc", "b"}  # the canonical dict form


def test_validate_rejects_with_param(client):
    sdk, _ = client
    with pytest.raises(openai.BadRequestError) as e:
        sdk.fine_tuning.alpha.graders.validate(grader={**SC, "operation": "regex"})
    assert e.value.status_code == 400 and e.value.param == "grader.operation" and e.value.code == "invalid_grader"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.fine_tuning.alpha.graders.validate(
            grader={"type": "multi", "name": "m", "graders": {"a": SC}, "calculate_output": "a +"}
        )
    assert e.value.param == "grader.calculate_output"


def test_run(client):
    sdk, _ = client
    resp = sdk.fine_tuning.alpha.graders.run(grader=SC, model_sample="Paris", item={"ref": "Paris"})
    assert resp.reward == 1.0 and resp.metadata.name == "sc" and resp.metadata.errors.invalid_variable_error is False
    resp = sdk.fine_tuning.alpha.graders.run(grader=SC, model_sample="Paris")
    assert resp.reward == 0.0 and resp.metadata.errors.invalid_variable_error is True
    resp = sdk.fine_tuning.alpha.graders.run(
        grader={"type": "iou", "name": "det"},
        model_sample="<answer>[1, 1, 5, 5]</answer>",
        item={"boxes": [[1, 1, 5, 5]]},
    )
    assert resp.reward == 1.0 and resp.metadata.scores["iou"] == 1.0


def test_run_python(client):
    sdk, _ = client
    resp = sdk.fine_tuning.alpha.graders.run(
        grader={
            "type": "python",
            "name": "p",
            "source": "def grade(sample, item):\n    return len(sample['output_text']) / 10\n",
        },
        model_sample="hello",
    )
    assert resp.reward == 0.5


def test_auth_and_bad_bodies(client):
    _, http = client
    r = http.post("/v1/fine_tuning/alpha/graders/run", json={"grader": SC, "model_sample": "x"})
    assert r.status_code == 401
    h = {"Authorization": "Bearer sk-test-graders"}
    r = http.post("/v1/fine_tuning/alpha/graders/run", headers=h, json={"grader": SC})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model_sample"
    r = http.post("/v1/fine_tuning/alpha/graders/run", headers=h, json={"grader": SC, "model_sample": "x", "item": [1]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "item"
    r = http.post("/v1/fine_tuning/alpha/graders/run", headers=h, json={
        "grader": {"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": "x"}],
                   "labels": ["a"], "passing_labels": ["a"]}, "model_sample": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader.type"
