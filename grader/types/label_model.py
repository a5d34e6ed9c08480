"""`label_model` (OpenAI): a judge model picks one of `labels`; 1 when it is one of `passing_labels`.
Only inside multi for RFT, as at OpenAI."""

from __future__ import annotations

from typing import Literal

from grader.errors import GraderValidationError
from grader.messages import Message, check_messages
from grader.registry import Spec, register


class LabelModelGrader(Spec):
    """A model picks one of `labels`; reward 1 when it is one of `passing_labels`. Only inside multi for RFT."""

    input: list[Message]
    labels: list[str]
    """The labels the judge may assign."""
    model: str
    name: str
    passing_labels: list[str]
    """Labels that pass; a subset of `labels`."""
    type: Literal["label_model"]

    def check(self, join):
        for field in ("input", "labels", "passing_labels"):
            if not getattr(self, field):
                raise GraderValidationError(f"Invalid value for '{join(field)}': must not be empty.", join(field))
        extra = [lbl for lbl in self.passing_labels if lbl not in self.labels]
        if extra:
            raise GraderValidationError(
                f"Invalid value for '{join('passing_labels')}': {extra[0]!r} is not one of the labels.",
                join("passing_labels"))
        check_messages(self.input, join)


def judge(spec: LabelModelGrader, context):
    from grader.model_graders import ModelJudge, parse_label  # httpx, on first use

    return ModelJudge(spec, context.endpoint, {"type": "string", "enum": list(spec.labels)},
                      lambda answer: 1.0 if parse_label(answer, spec.labels) in spec.passing_labels else 0.0)


register(LabelModelGrader, judge, top_level=False)
