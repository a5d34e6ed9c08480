"""`string_check` (OpenAI): 1 when `input` compares to `reference` by `operation`, else 0."""

from __future__ import annotations

from typing import Literal

from grader.registry import Spec, register
from grader.reward import Out, Reward, first_error, resolve_all
from grader.templates import Template


class StringCheckGrader(Spec):
    """1 when `input` compares to `reference` by `operation`, else 0."""

    input: str
    """The input text; may include templates."""
    name: str
    """The name of the grader."""
    operation: Literal["eq", "ne", "like", "ilike"]
    """eq: equal; ne: not equal; like: input contains reference; ilike: same, case-insensitive."""
    reference: str
    """The reference text; may include templates."""
    type: Literal["string_check"]

    templates = ("input", "reference")


_OPERATIONS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.casefold() in a.casefold(),
}


class StringCheck(Reward):
    def __init__(self, spec: StringCheckGrader, context=None):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")

    def grade(self, samples, items):
        op = _OPERATIONS[self.spec.operation]
        out = []
        for a, b in zip(resolve_all(self.input, samples, items), resolve_all(self.reference, samples, items)):
            err = first_error(a, b)
            out.append(Out(0.0, err) if err else Out(float(op(a, b))))
        return out


register(StringCheckGrader, StringCheck)
