"""`classification` (ours): 1 when the normalised answer equals the reference or one of its synonyms, else 0."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from grader.registry import Spec, register
from grader.reward import Out, Reward, first_error, resolve_all
from grader.templates import Template
from grader.visual import classification_reward


class ClassificationGrader(Spec):
    """1 when the normalised answer equals the reference or one of its synonyms, else 0; empty answer 0."""

    name: str
    type: Literal["classification"]
    input: str = "{{sample.answer}}"
    reference: str = "{{item.label}}"
    """The correct label (a string, or a list of accepted strings)."""
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    """Accepted aliases per label, e.g. {"airbus a320": ["a320"]}."""
    normalize: bool = True
    """Unicode NFKC + casefold, '_'/'-' as spaces, punctuation dropped, whitespace collapsed."""

    templates = ("input", "reference")


class Classification(Reward):
    def __init__(self, spec: ClassificationGrader, context=None):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")

    def grade(self, samples, items):
        answers = resolve_all(self.input, samples, items)
        refs = resolve_all(self.reference, samples, items, raw=True)
        out = []
        for a, b in zip(answers, refs):
            err = first_error(a, b)
            out.append(Out(0.0, err) if err else Out(classification_reward(a, b, self.spec.synonyms,
                                                                           self.spec.normalize)))
        return out


register(ClassificationGrader, Classification)
