"""Grader specs: what OpenAI accepts is accepted, what it rejects is rejected with the right `param`."""

from __future__ import annotations

import pytest

import grader
from grader import GraderValidationError, validate_grader

SC = {
    "type": "string_check",
    "name": "sc",
    "input": "{{sample.output_text}}",
    "reference": "{{item.ref}}",
    "operation": "eq",
}
TS = {"type": "text_similarity", "name": "ts", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
      "evaluation_metric": "bleu"}
PY = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
SM = {"type": "score_model", "name": "sm", "model": "tiny", "input": [
    {"role": "system", "content": "Score 0..1"},
    {"role": "user", "content": [{"type": "input_text", "text": "{{sample.output_text}} vs {{item.ref}}"},
                                 {"type": "input_image", "image_url": "{{item.image_url}}", "detail": "low"}]}],
      "range": [0, 1], "sampling_params": {"temperature": 0, "seed": 1, "max_completions_tokens": 20}}
LM = {
    "type": "label_model",
    "name": "lm",
    "model": "tiny",
    "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    "labels": ["good", "bad"],
    "passing_labels": ["good"],
}


def err(spec, **kw) -> GraderValidationError:
    with pytest.raises(GraderValidationError) as e:
        validate_grader(spec, **kw)
    return e.value


@pytest.mark.parametrize("spec", [SC, TS, PY, SM, {"type": "iou", "name": "i"}, {"type": "format", "name": "f"},
                                  {"type": "classification", "name": "c"}])
def test_valid_specs_round_trip(spec):
    model = validate_grader(spec)
    again = validate_grader(model.model_dump(exclude_none=True))
    assert again == model


def test_every_text_similarity_metric_is_accepted():
    for m in [
        "cosine",
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]:
        assert validate_grader({**TS, "evaluation_metric": m}).evaluation_metric == m
    assert err({**TS, "evaluation_metric": "rouge_6"}).param == "evaluation_metric"


def test_unknown_type_and_missing_fields():
    e = err({"type": "regex", "name": "x"})
    assert e.param == "type" and "string_check" in e.message
    assert err({"name": "x"}).param == "type"
    assert err({k: v for k, v in SC.items() if k != "reference"}).param == "reference"
    assert err({**SC, "operation": "neq"}).param == "operation"  # the guide says neq, the API says ne
    assert err({**SC, "bogus": 1}).param == "bogus"
    assert err("not an object").param == ""


def test_label_model_only_inside_multi():
    assert err(LM).param == "type"
    validate_grader(LM, top_level=False)
    multi = {"type": "multi", "name": "m", "graders": {"lm": LM, "sc": SC}, "calculate_output": "lm * sc"}
    assert validate_grader(multi).graders["lm"].type == "label_model"
    assert "label_model" not in grader.TOP_LEVEL_TYPES and "label_model" in grader.MULTI_CHILD_TYPES
    assert {
        "string_check",
        "text_similarity",
        "python",
        "score_model",
        "multi",
        "iou",
        "format",
        "classification",
    } == set(grader.TOP_LEVEL_TYPES)


def test_label_model_passing_labels_subset():
    assert err({**LM, "passing_labels": ["great"]}, top_level=False).param == "passing_labels"
    assert err({**LM, "labels": []}, top_level=False).param == "labels"


def test_python_source_checks():
    assert err({**PY, "source": "def grade(sample, item):\n    return 1 +\n"}).param == "source"
    e = err({**PY, "source": "def score(sample, item):\n    return 1\n"})
    assert "grade" in e.message and e.param == "source"
    assert err({**PY, "source": "def grade(sample):\n    return 1\n"}).param == "source"
    assert err({**PY, "source": "async def grade(s, i):\n    return 1\n"}).param == "source"
    assert err({**PY, "source": "x = '" + "a" * 300_000 + "'\ndef grade(s, i): return 1\n"}).param == "source"
    validate_grader({**PY, "source": "from math import sqrt as grade\n"})
    validate_grader({**PY, "source": "grade = lambda s, i: 1.0\n"})
    validate_grader({**PY, "source": "def grade(*args):\n    return 1\n", "image_tag": "2025-05-08"})
    e = err({**PY, "source": "def grade(*args):\n    return 1\n", "image_tag": "2031-01-01"})
    assert e.param == "image_tag" and "2025-05-08" in e.message


def test_templates_are_checked():
    assert err({**SC, "input": "{{foo.bar}}"}).param == "input"
    assert err({**SC, "reference": "{{sample.output}}"}).param == "reference"
    assert err({**SC, "input": "{{item}}"}).param == "input"
    assert err({**SC, "input": "{{item.a[}}"}).param == "input"
    assert err({**SC, "input": "{{item.a"}).param == "input"
    bad = {**SM, "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{x.y}}"}]}]}
    assert err(bad).param == "input.0.content.0.text"
    validate_grader(
        {
            **SC,
            "input": "{{ sample.output_json.answer[0]['a b'] }} {{sample.answer}} "
            "{{sample.output_tools[0].function.name}} {{sample.choices[0].message.content}}",
        }
    )


def test_score_model_checks():
    assert err({**SM, "range": [1, 0]}).param == "range"
    assert err({**SM, "range": [0, 1, 2]}).param == "range"
    assert err({**SM, "input": []}).param == "input"
    assert err({**SM, "input": [{"role": "robot", "content": "x"}]}).param == "input.0.role"
    assert err({**SM, "input": [{"role": "user", "content": [{"type": "input_textt", "text": "x"}]}]}).param.startswith(
        "input.0.content"
    )
    assert err({**SM, "sampling_params": {"temperature": 5}}).param == "sampling_params.temperature"


def test_multi_formula_and_keys():
    m = {"type": "multi", "name": "m", "graders": {"a": SC, "b": TS}, "calculate_output": "0.5 * a + 0.5 * b"}
    assert set(validate_grader(m).graders) == {"a", "b"}
    assert err({**m, "calculate_output": "a + c"}).param == "calculate_output"
    assert err({**m, "calculate_output": "a +"}).param == "calculate_output"
    assert err({**m, "calculate_output": "pow(a, 2)"}).param == "calculate_output"
    assert err({**m, "calculate_output": "__import__('os')"}).param == "calculate_output"
    assert err({**m, "calculate_output": "a; b"}).param == "calculate_output"
    assert err({**m, "graders": {"a": {**SC, "operation": "x"}}}).param == "graders.a.operation"
    assert (
        err({**m, "graders": {"a": {"type": "iou", "name": "i", "iou_threshold": 2}}, "calculate_output": "a"}).param
        == "graders.a.iou_threshold"
    )
    assert err({**m, "graders": {"a": m}, "calculate_output": "a"}).param == "graders.a.type"  # no nesting
    assert err({**m, "graders": {}}).param == "graders"


def test_multi_accepts_single_grader_and_list():
    single = validate_grader({"type": "multi", "name": "m", "graders": SC, "calculate_output": "sc"})
    assert list(single.graders) == ["sc"]
    listed = validate_grader({"type": "multi", "name": "m", "graders": [SC, TS], "calculate_output": "sc + ts"})
    assert list(listed.graders) == ["sc", "ts"]
    assert err({"type": "multi", "name": "m", "graders": [SC, SC], "calculate_output": "sc"}).param == "graders.1.name"


def test_visual_specs():
    iou = validate_grader({"type": "iou", "name": "det", "input_format": {"box_format": "xyxy", "coordinates": "pixel",
                                                                         "resize": {"max_pixels": 401408}},
                           "reference_format": {"coordinates": "pixel"}, "iou_type": "giou", "confidence_weight": 0.5})
    assert iou.input_format.resize.factor == 28
    assert (
        err({"type": "iou", "name": "d", "input_format": {"coordinates": "norm100"}}).param
        == "input_format.coordinates"
    )
    assert (
        err({"type": "iou", "name": "d", "input_format": {"resize": {"min_pixels": 10, "max_pixels": 5}}}).param
        == "input_format.resize"
    )
    assert err({"type": "iou", "name": "d", "mode": "segmentation"}).param == "mode"
    assert err({"type": "format", "name": "f", "pattern": "(unclosed"}).param == "pattern"
    assert err({"type": "format", "name": "f", "flags": ["verbose"]}).param == "flags.0"
    validate_grader(
        {"type": "classification", "name": "c", "reference": "{{item.label}}", "synonyms": {"cat": ["kitty"]}}
    )


def test_error_prefix_for_the_api():
    e = err({"type": "multi", "name": "m", "graders": {"a": {**SC, "operation": "x"}}, "calculate_output": "a"})
    assert e.prefixed("method.reinforcement.grader").param == "method.reinforcement.grader.graders.a.operation"
