"""Adding a grader type is one module: this one defines `length`, registers it, and it validates, runs through
`grader.run` and works inside `multi` with no other change (the example of grader/README.md)."""

from __future__ import annotations

import warnings
from typing import Literal

import pytest
from pydantic import Field

import grader
from grader import registry
from grader.errors import SampleError
from grader.registry import Spec, register
from grader.reward import Out, Reward, resolve_all
from grader.templates import Template


class LengthGrader(Spec):
    """1 when `input` has at most `max_words` words, else 0."""

    name: str
    type: Literal["length"]
    input: str = "{{sample.output_text}}"
    max_words: int = Field(default=50, ge=1)

    templates = ("input",)  # checked by Spec.check; override check() for more


class Length(Reward):
    def __init__(self, spec: LengthGrader, context=None):
        super().__init__(spec)
        self.input = Template(spec.input, "input")

    def grade(self, samples, items):
        return [Out(0.0, t) if isinstance(t, SampleError) else Out(float(len(t.split()) <= self.spec.max_words))
                for t in resolve_all(self.input, samples, items)]


@pytest.fixture
def length_type():
    """`register(LengthGrader, Length)` as a module of grader/types/ does on import; removed after the test."""
    register(LengthGrader, Length)
    yield
    del registry.TYPES["length"]


LEN = {"type": "length", "name": "len", "input": "{{sample.answer}}", "max_words": 3}
MULTI = {"type": "multi", "name": "m", "calculate_output": "len + 2 * fmt",
         "graders": {"len": LEN, "fmt": {"type": "format", "name": "fmt"}}}


def test_the_new_type_validates(length_type):
    spec = grader.validate_grader(LEN)
    assert isinstance(spec, grader.LengthGrader) and spec.max_words == 3
    assert "length" in grader.TOP_LEVEL_TYPES and "length" in grader.MULTI_CHILD_TYPES
    with pytest.raises(grader.GraderValidationError) as e:
        grader.validate_grader({**LEN, "max_words": 0})
    assert e.value.param == "max_words"
    with pytest.raises(grader.GraderValidationError) as e:
        grader.validate_grader({**LEN, "input": "{{nope.x}}"})
    assert e.value.param == "input"
    with pytest.raises(grader.GraderValidationError) as e:
        grader.validate_grader({"type": "lenght", "name": "x"})
    assert "length" in e.value.message


def test_the_new_type_runs(length_type):
    assert grader.run(LEN, "<answer>one two</answer>")["reward"] == 1.0
    res = grader.run(LEN, "<answer>one two three four</answer>")
    assert res["reward"] == 0.0 and res["metadata"]["type"] == "length"
    res = grader.run({**LEN, "input": "{{item.text}}"}, "x", {})
    assert res["reward"] == 0.0 and res["metadata"]["errors"]["invalid_variable_error"]


def test_the_new_type_inside_multi(length_type):
    spec = grader.validate_grader(MULTI)
    assert spec.graders["len"].type == "length"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # serialised in full, not as an unknown member of the union
        dumped = spec.model_dump(exclude_none=True)
    assert dumped["graders"]["len"] == {**LEN}
    assert grader.validate_grader(dumped) == spec
    good, long = "<think>x</think><answer>a b</answer>", "<think>x</think><answer>a b c d e</answer>"
    res = grader.run(MULTI, good)
    assert res["reward"] == 3.0 and res["sub_rewards"] == {"len": 1.0, "fmt": 1.0}
    with grader.compile(MULTI) as g:
        batch = g.grade([good, long, "a"], [{}] * 3)
    assert batch.rewards == [3.0, 2.0, 1.0] and batch.sub_rewards["len"] == [1.0, 0.0, 1.0]


def test_registered_only_while_registered():
    with pytest.raises(grader.GraderValidationError) as e:
        grader.validate_grader(LEN)
    assert e.value.param == "type" and "length" not in e.value.message.partition("Supported values are:")[2]
