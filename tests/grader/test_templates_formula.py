"""Templates and the calculate_output formula language, with hand-checked values."""

from __future__ import annotations

import math

import pytest

from grader.errors import SampleError
from grader.formula import Formula, FormulaError
from grader.templates import Template, extract_answer, make_sample


def test_template_paths_and_types():
    item = {"a": {"b": [{"c": "deep"}, 2]}, "n": 3, "obj": {"k": [1, 2]}, "uni": "漢字 é", "sp ace": {"x": 1}}
    s = make_sample('{"answer": ["x", "y"], "score": 0.5}')
    t = Template(
        '{{item.a.b[0].c}}|{{ item.n }}|{{item.obj}}|{{sample.output_json.answer[1]}}|{{item.uni}}|{{item["sp ace"].x}}'
    )
    assert t.render(s, item) == 'deep|3|{"k": [1, 2]}|y|漢字 é|1'
    assert Template("{{item.a.b[-1]}}").resolve(s, item) == 2
    assert Template("{{item.obj}}").resolve(s, item) == {"k": [1, 2]}
    assert Template(" {{item.obj}} ").resolve(s, item) == {"k": [1, 2]}
    assert Template("x {{item.n}}").resolve(s, item) == "x 3"
    assert Template("no variables").render(s, item) == "no variables"


@pytest.mark.parametrize("text", ["{{item.missing}}", "{{item.a.b[5]}}", "{{item.a.b.c}}", "{{sample.output_json.x}}",
                                  "{{item.none}}"])
def test_missing_variable_is_invalid_variable_error(text):
    with pytest.raises(SampleError) as e:
        Template(text).render(make_sample("not json"), {"a": {"b": [1]}, "none": None})
    assert e.value.flag == "invalid_variable_error"
    assert e.value.to_errors()["invalid_variable_error"] is True


def test_sample_namespace():
    s = make_sample("<think>hm</think>\n<answer> Boeing 737 </answer>")
    assert s["answer"] == "Boeing 737"
    assert s["output_json"] is None
    assert s["choices"][0]["message"]["content"].startswith("<think>")
    assert s["output_tools"] == []
    full = s.full()
    assert set(full) >= {"output_text", "output_json", "output_tools", "choices", "output_audio", "answer"}
    chat = make_sample({"choices": [{"index": 0, "message": {"role": "assistant", "content": "[1, 2]",
                                                            "tool_calls": [{"function": {"name": "f"}}]}}],
                        "output_tools": [{"function": {"name": "f", "arguments": "{}"}}]})
    assert chat["output_text"] == "[1, 2]" and chat["output_json"] == [1, 2]
    assert Template("{{sample.output_tools[0].function.name}}").render(chat, {}) == "f"
    assert make_sample(None)["output_text"] == ""


def test_extract_answer_edge_cases():
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer("<answer>a</answer><answer>b</answer>") == "b"
    assert extract_answer("<ANSWER>x</ANSWER>") == "x"
    assert extract_answer("<answer>unclosed") == ""
    assert extract_answer("<answer>多行\n答案</answer>") == "多行\n答案"


@pytest.mark.parametrize("formula,env,value", [
    ("a + b * c", {"a": 1, "b": 2, "c": 3}, 7),
    ("(a + b) * c", {"a": 1, "b": 2, "c": 3}, 9),
    ("-a ^ 2", {"a": 3}, -9),          # ^ binds tighter than unary minus
    ("2 ^ -1", {}, 0.5),
    ("2 ** 3", {}, 8),
    ("a / b - 1", {"a": 1, "b": 4}, -0.75),
    ("min(a, b, 0.2) + max(a)", {"a": 0.5, "b": 0.9}, 0.7),
    ("abs(-2) + floor(1.7) + ceil(1.2)", {}, 5),
    ("exp(0) + sqrt(16) + log(1)", {}, 5),
    ("1e-3 * 1000 + .5", {}, 1.5),
    ("0.5 * compliant + 0.5 * explanation", {"compliant": 1, "explanation": 0.4}, 0.7),
])
def test_formula_values(formula, env, value):
    assert math.isclose(Formula(formula).evaluate(env), value)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a +",
        "(a",
        "a)",
        "a b",
        "pow(a, 2)",
        "a.b",
        "a[0]",
        "'s'",
        "a = 1",
        "a; b",
        "__import__('os').system('x')",
        "lambda: 1",
        "abs()",
        "abs(1, 2)",
        "1 +* 2",
        "(" * 2000 + "1" + ")" * 2000,
    ],
)
def test_formula_rejects(bad):
    with pytest.raises(FormulaError):
        Formula(bad)


def test_formula_runtime_errors_raise_for_the_caller():
    for text, env in [
        ("a / b", {"a": 1, "b": 0}),
        ("sqrt(a)", {"a": -1}),
        ("log(a)", {"a": 0}),
        ("a ^ 0.5", {"a": -1}),
    ]:
        with pytest.raises((ArithmeticError, ValueError)):
            Formula(text).evaluate(env)
