"""score_model and label_model against a respx-mocked OpenAI-compatible endpoint."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from openai.types.fine_tuning.alpha import GraderRunResponse

import grader
from grader.model_graders import ModelEndpoint, parse_label, parse_score

BASE = "http://judge.test/v1"
SM = {
    "type": "score_model",
    "name": "judge",
    "model": "tiny-judge",
    "input": [
        {"role": "developer", "content": "Score the answer from 0 to 1."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Answer: {{sample.output_text}} Ref: {{item.ref}}"},
                {"type": "input_image", "image_url": "{{item.img}}", "detail": "low"},
            ],
        },
    ],
    "sampling_params": {"temperature": 0.0, "seed": 7, "max_completions_tokens": 64},
}
LM = {
    "type": "label_model",
    "name": "lab",
    "model": "tiny-judge",
    "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    "labels": ["correct", "incorrect"],
    "passing_labels": ["correct"],
}


def completion(content, *, refusal=None, model="tiny-judge-0001", prompt=10, completion_tokens=5) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": model,
        "created": 0,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    }


@pytest.fixture
def endpoint():
    ep = ModelEndpoint(base_url=BASE, api_key="sk-judge", retries=1)
    yield ep
    ep.close()


@respx.mock
def test_score_model_request_and_response(endpoint):
    route = respx.post(f"{BASE}/chat/completions").mock(return_value=httpx.Response(
        200, json=completion(json.dumps({"steps": [{"description": "d", "conclusion": "c"}], "result": 0.8}))))
    resp = grader.run(SM, "Paris", {"ref": "Paris", "img": "data:image/png;base64,AAAA"}, endpoint=endpoint)
    # token_usage is an object as the live API returns it (openai-python types it as an int; the SDK parses
    # responses leniently, so clients get the object); everything else validates strictly
    GraderRunResponse.model_validate({**resp, "metadata": {**resp["metadata"], "token_usage": None}})
    assert resp["reward"] == 0.8
    md = resp["metadata"]
    assert md["token_usage"] == {"prompt_tokens": 10, "total_tokens": 15, "cached_tokens": 2, "completion_tokens": 5}
    assert md["sampled_model_name"] == "tiny-judge-0001"
    assert resp["model_grader_token_usage_per_model"] == {"tiny-judge-0001": md["token_usage"]}
    body = json.loads(route.calls[0].request.content)
    assert route.calls[0].request.headers["authorization"] == "Bearer sk-judge"
    assert body["model"] == "tiny-judge" and body["temperature"] == 0.0 and body["seed"] == 7
    assert body["max_completion_tokens"] == 64
    assert body["response_format"]["type"] == "json_schema"
    assert body["messages"][0] == {"role": "system", "content": "Score the answer from 0 to 1."}
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Answer: Paris Ref: Paris"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]


@respx.mock
def test_score_is_clipped_to_range(endpoint):
    respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(200, json=completion('{"steps": [], "result": 7}'))
    )
    assert grader.run(SM, "x", {"ref": "y", "img": "u"}, endpoint=endpoint)["reward"] == 1.0
    assert grader.run({**SM, "range": [0, 10]}, "x", {"ref": "y", "img": "u"}, endpoint=endpoint)["reward"] == 7.0
    assert grader.run({**SM, "range": [-1, 0.5]}, "x", {"ref": "y", "img": "u"}, endpoint=endpoint)["reward"] == 0.5


@respx.mock
def test_unparsable_refusal_and_server_errors(endpoint):
    route = respx.post(f"{BASE}/chat/completions")
    item = {"ref": "y", "img": "u"}
    route.mock(return_value=httpx.Response(200, json=completion("I think it's good")))
    errs = grader.run(SM, "x", item, endpoint=endpoint)["metadata"]["errors"]
    assert errs["model_grader_parse_error"]
    route.mock(return_value=httpx.Response(200, json=completion(None, refusal="I can't help with that.")))
    errs = grader.run(SM, "x", item, endpoint=endpoint)["metadata"]["errors"]
    assert errs["model_grader_refusal_error"]
    route.mock(return_value=httpx.Response(503, text="overloaded"))
    resp = grader.run(SM, "x", item, endpoint=endpoint)
    assert resp["reward"] == 0.0 and resp["metadata"]["errors"]["model_grader_server_error"]
    assert "503" in resp["metadata"]["errors"]["model_grader_server_error_details"]
    assert route.call_count == 1 + 1 + 2  # one retry on 503
    route.mock(side_effect=httpx.ConnectError("refused"))
    assert grader.run(SM, "x", item, endpoint=endpoint)["metadata"]["errors"]["model_grader_server_error"]
    route.mock(return_value=httpx.Response(400, json={"error": {"message": "bad"}}))
    before = route.call_count
    assert grader.run(SM, "x", item, endpoint=endpoint)["metadata"]["errors"]["model_grader_server_error"]
    assert route.call_count == before + 1  # 4xx is not retried


@respx.mock
def test_label_model_inside_multi(endpoint):
    respx.post(f"{BASE}/chat/completions").mock(
        side_effect=lambda req: httpx.Response(
            200,
            json=completion(
                '{"steps": [], "result": "correct"}'
                if "good" in json.loads(req.content)["messages"][0]["content"]
                else "incorrect"
            ),
        )
    )
    spec = {"type": "multi", "name": "m", "graders": {"lab": LM}, "calculate_output": "lab"}
    with grader.compile(spec, endpoint=endpoint) as g:
        res = g.grade(["good answer", "bad answer", "good again"], [{}, {}, {}])
    assert res.rewards == [1.0, 0.0, 1.0]
    assert res.token_usage_per_model["tiny-judge-0001"]["total_tokens"] == 45


def test_no_endpoint_is_a_server_error():
    resp = grader.run(SM, "x", {"ref": "y", "img": "u"}, endpoint=ModelEndpoint(base_url=None))
    assert resp["metadata"]["errors"]["model_grader_server_error"]


@respx.mock
def test_resolver_routes_served_models():
    respx.post("http://served.test/v1/chat/completions").mock(return_value=httpx.Response(200, json=completion("0.25")))
    ep = ModelEndpoint(base_url=None, resolver=lambda m: ("http://served.test/v1", None) if m == "tiny-judge" else None)
    assert grader.run(SM, "x", {"ref": "y", "img": "u"}, endpoint=ep)["reward"] == 0.25


@respx.mock
def test_batch_runs_concurrently_and_in_order(endpoint):
    respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: httpx.Response(200, json=completion(
        json.dumps({"steps": [], "result": float(json.loads(req.content)["messages"][0]["content"]) / 100}))))
    spec = {**SM, "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    with grader.compile(spec, endpoint=endpoint) as g:
        res = g.grade([str(i) for i in range(40)], [{}] * 40)
    assert res.rewards == [i / 100 for i in range(40)]


def test_parsers():
    assert parse_score('{"result": 0.5, "steps": []}') == 0.5
    assert parse_score("0.75") == 0.75
    assert parse_score('Sure! {"steps": [], "result": 1}') == 1.0
    assert parse_label('{"result": "Correct"}', ["correct", "incorrect"]) == "correct"
    assert parse_label("incorrect", ["correct", "incorrect"]) == "incorrect"
    for bad in ("", "high", '{"result": "yes"}'):
        with pytest.raises(grader.errors.SampleError):
            parse_score(bad) if bad != '{"result": "yes"}' else parse_label(bad, ["correct"])
