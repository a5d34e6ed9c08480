"""`format` (ours): 1 when `pattern` matches the whole `input`, else 0 (Visual-RFT's format reward)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from grader.errors import GraderValidationError, SampleError
from grader.patterns import DEFAULT_FORMAT_PATTERN, compile_pattern
from grader.registry import Spec, register
from grader.reward import Out, Reward, resolve_all
from grader.templates import Template
from grader.visual import format_reward


class FormatGrader(Spec):
    """1 when `pattern` matches the whole `input`, else 0 (Visual-RFT's format reward)."""

    name: str
    type: Literal["format"]
    input: str = "{{sample.output_text}}"
    pattern: str = DEFAULT_FORMAT_PATTERN
    """A regular expression (Python `regex` syntax) that must match the whole input."""
    flags: list[Literal["ignorecase", "multiline", "dotall"]] = Field(default_factory=lambda: ["dotall"])
    strip: bool = True
    """Strip surrounding whitespace from the input first."""

    templates = ("input",)

    def check(self, join):
        super().check(join)
        try:
            compile_pattern(self.pattern, self.flags)
        except Exception as e:  # regex.error
            raise GraderValidationError(
                f"Invalid value for '{join('pattern')}': not a valid regular expression ({e}).", join("pattern")
            ) from None


class Format(Reward):
    def __init__(self, spec: FormatGrader, context=None):
        super().__init__(spec)
        self.input = Template(spec.input, "input")

    def grade(self, samples, items):
        out = []
        for text in resolve_all(self.input, samples, items):
            if isinstance(text, SampleError):
                out.append(Out(0.0, text))
                continue
            try:
                out.append(Out(format_reward(text, self.spec.pattern, self.spec.flags, self.spec.strip)))
            except TimeoutError:
                out.append(Out(0.0, SampleError("other_error", "the format pattern timed out on this sample")))
        return out


register(FormatGrader, Format)
