"""`score_model` (OpenAI): a judge model reads `input` and answers a score, clipped to `range`."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from grader.errors import GraderValidationError
from grader.messages import Message, check_messages
from grader.registry import Spec, register


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_completions_tokens: Optional[int] = Field(default=None, ge=1)
    """The maximum number of tokens the grader model may generate."""
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    seed: Optional[int] = None
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)


class ScoreModelGrader(Spec):
    """A model reads `input` and answers a score; clipped to `range`."""

    input: list[Message]
    """The messages sent to the judge; may include templates."""
    model: str
    """A model the service serves, or one at the configured OpenAI-compatible endpoint."""
    name: str
    """The name of the grader."""
    type: Literal["score_model"]
    range: Optional[list[float]] = None
    """[min, max] of the score; defaults to [0, 1]."""
    sampling_params: Optional[SamplingParams] = None
    """Sampling parameters for the judge."""

    def check(self, join):
        if not self.input:
            raise GraderValidationError(f"Invalid value for '{join('input')}': must not be empty.", join("input"))
        if not self.model.strip():
            raise GraderValidationError(f"Invalid value for '{join('model')}': must not be empty.", join("model"))
        if self.range is not None and (len(self.range) != 2 or not self.range[0] < self.range[1]):
            raise GraderValidationError(
                f"Invalid value for '{join('range')}': expected [min, max] with min < max.", join("range"))
        check_messages(self.input, join)


def judge(spec: ScoreModelGrader, context):
    from grader.model_graders import ModelJudge, parse_score  # httpx, on first use

    lo, hi = map(float, spec.range or (0.0, 1.0))
    return ModelJudge(spec, context.endpoint, {"type": "number"}, lambda answer: min(hi, max(lo, parse_score(answer))))


register(ScoreModelGrader, judge)
