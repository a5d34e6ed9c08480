"""Compiled graders over batches, and `run`'s OpenAI GraderRunResponse."""

from __future__ import annotations

import pytest
from openai.types.fine_tuning.alpha import GraderRunResponse, GraderValidateResponse

import grader
from grader.errors import ERROR_FLAGS

SC = {
    "type": "string_check",
    "name": "sc",
    "input": "{{sample.output_text}}",
    "reference": "{{item.ref}}",
    "operation": "eq",
}


@pytest.mark.parametrize("op,inp,ref,want", [
    ("eq", "Paris", "Paris", 1), ("eq", "paris", "Paris", 0), ("ne", "a", "b", 1), ("ne", "a", "a", 0),
    ("like", "The answer is Paris.", "Paris", 1), ("like", "the answer is paris", "Paris", 0),
    ("ilike", "THE ANSWER IS PARIS", "paris", 1), ("ilike", "Lyon", "paris", 0), ("eq", "", "", 1),
    ("eq", "猫", "猫", 1), ("ilike", "STRASSE", "straße", 1),  # ilike folds case the Unicode way (ß = ss)
    ("like", "x", "", 1),
])
def test_string_check(op, inp, ref, want):
    assert grader.run({**SC, "operation": op}, inp, {"ref": ref})["reward"] == want


def test_run_response_matches_the_sdk_types():
    resp = grader.run(SC, "cat", {"ref": "cat"})
    parsed = GraderRunResponse.model_validate(resp)  # strict pydantic validation of OpenAI's type
    assert parsed.reward == 1.0 and parsed.metadata.type == "string_check" and parsed.metadata.name == "sc"
    assert list(resp) == ["reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"]
    assert list(resp["metadata"]["errors"]) == sorted(resp["metadata"]["errors"])  # OpenAI's key order
    assert set(resp["metadata"]["errors"]) == set(ERROR_FLAGS) | {
        "model_grader_server_error_details", "python_grader_runtime_error_details", "python_grader_server_error_type"}
    assert resp["metadata"]["execution_time"] > 0 and resp["metadata"]["token_usage"] is None
    v = GraderValidateResponse.model_validate({"grader": grader.validate_grader(SC).model_dump(exclude_none=True)})
    assert v.grader.type == "string_check"


def test_missing_variable_scores_zero_with_flag():
    resp = grader.run(SC, "cat", {})
    assert resp["reward"] == 0.0 and resp["metadata"]["errors"]["invalid_variable_error"]
    resp = grader.run({**SC, "input": "{{sample.output_json.answer}}"}, "not json", {"ref": "x"})
    assert resp["metadata"]["errors"]["invalid_variable_error"]
    resp = grader.run({**SC, "input": "{{sample.output_json.answer}}"}, '{"answer": "x"}', {"ref": "x"})
    assert resp["reward"] == 1.0


def test_batch_never_fails_and_counts_errors():
    g = grader.compile(SC)
    res = g.grade(["a", "b", "c", {"output_text": "a"}], [{"ref": "a"}, {}, {"ref": "x"}, {"ref": "a"}])
    assert res.rewards == [1.0, 0.0, 0.0, 1.0]
    assert res.error_counts["invalid_variable_error"] == 1 and sum(res.error_counts.values()) == 1
    assert res.results[1].errors["invalid_variable_error"] and "item.ref" in res.results[1].error_message
    assert res.sub_rewards == {"sc": res.rewards}
    with pytest.raises(ValueError):
        g.grade(["a"], [])


def test_multi_sub_rewards_and_formula():
    spec = {"type": "multi", "name": "m", "calculate_output": "0.5 * fmt + 0.5 * cls", "graders": {
        "fmt": {"type": "format", "name": "fmt"},
        "cls": {"type": "classification", "name": "cls", "reference": "{{item.label}}"}}}
    resp = grader.run(spec, "<think>x</think><answer>Rose</answer>", {"label": "rose"})
    assert resp["reward"] == 1.0 and resp["sub_rewards"] == {"fmt": 1.0, "cls": 1.0}
    g = grader.compile(spec)
    res = g.grade(
        ["<answer>rose</answer>", "<think>x</think><answer>tulip</answer>", "<think></think><answer>rose</answer>"],
        [{"label": "rose"}, {"label": "rose"}, {}],
    )
    assert res.rewards == [0.5, 0.5, 0.5]
    assert res.sub_rewards == {"fmt": [0.0, 1.0, 1.0], "cls": [1.0, 0.0, 0.0]}
    assert res.results[2].errors["invalid_variable_error"] and res.results[2].sub_rewards == {"fmt": 1.0, "cls": 0.0}


def test_formula_runtime_error_and_non_finite_reward():
    spec = {"type": "multi", "name": "m", "calculate_output": "1 / a", "graders": {"a": {**SC, "name": "a"}}}
    resp = grader.run(spec, "x", {"ref": "y"})
    assert resp["reward"] == 0.0 and resp["metadata"]["errors"]["other_error"]
    spec["calculate_output"] = "exp(1000 * (a + 1))"
    resp = grader.run(spec, "x", {"ref": "x"})
    assert resp["reward"] == 0.0 and resp["metadata"]["errors"]["other_error"]


def test_text_similarity_through_the_grader():
    spec = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
            "evaluation_metric": "rouge_l"}
    assert grader.run(spec, "a b c d", {"ref": "a c d"})["reward"] == pytest.approx(6 / 7)
    spec["evaluation_metric"] = "fuzzy_match"
    assert grader.run(spec, "kitten", {"ref": "sitting"})["reward"] == pytest.approx(8 / 13)


def test_label_model_is_rejected_top_level_by_run():
    lm = {"type": "label_model", "name": "lm", "model": "m", "input": [{"role": "user", "content": "x"}],
          "labels": ["a"], "passing_labels": ["a"]}
    with pytest.raises(grader.GraderValidationError):
        grader.run(lm, "x", {})


def test_python_grader_end_to_end():
    src = ("import json\n"
           "def grade(sample, item):\n"
           "    return float(sample['output_text'].strip() == item['answer'] and sample['answer'] == '' )\n")
    spec = {"type": "python", "name": "py", "source": src}
    resp = grader.run(spec, " 42 ", {"answer": "42"})
    assert resp["reward"] == 1.0
    resp = grader.run({**spec, "source": "def grade(sample, item):\n    return item['nope']\n"}, "x", {})
    errs = resp["metadata"]["errors"]
    assert (
        resp["reward"] == 0.0
        and errs["python_grader_runtime_error"]
        and "KeyError" in errs["python_grader_runtime_error_details"]
    )
    GraderRunResponse.model_validate(resp)
    with grader.compile(spec, workers=2) as g:
        res = g.grade([str(i) for i in range(50)], [{"answer": str(i % 2)} for i in range(50)])
    assert res.rewards == [1.0, 1.0] + [0.0] * 48


def test_python_grader_timeout_is_unresponsive_reward_error():
    from grader.sandbox import SandboxConfig

    spec = {"type": "python", "name": "py", "source": "def grade(s, i):\n    while True: pass\n"}
    with grader.compile(spec, sandbox=SandboxConfig(timeout_s=0.5, grace_s=1, workers=1)) as g:
        r = g.grade(["x"], [{}]).results[0]
    assert r.reward == 0.0 and r.errors["unresponsive_reward_error"] and r.errors["python_grader_runtime_error"]


def test_multi_with_python_and_visual_graders():
    spec = {
        "type": "multi",
        "name": "visual-rft",
        "calculate_output": "(fmt + 2 * det + py) / 4",
        "graders": {
            "fmt": {"type": "format", "name": "fmt"},
            "det": {"type": "iou", "name": "det", "confidence_weight": 0.5},
            "py": {
                "type": "python",
                "name": "py",
                "source": "def grade(s, i):\n    return 1.0 if '<answer>' in s['output_text'] else 0.0\n",
            },
        },
    }
    text = "<think>one box</think><answer>[{'Position': [0, 0, 10, 10], 'Confidence': 1.0}]</answer>"
    resp = grader.run(spec, text, {"boxes": [[0, 0, 10, 10]]})
    assert resp["reward"] == pytest.approx(1.0)
    assert resp["metadata"]["scores"]["det.iou"] == 1.0 and resp["metadata"]["scores"]["det.confidence"] == 1.0
