"""Graders: declarative specs (OpenAI's JSON + visual graders) compiled into batch reward functions.

    spec = grader.validate_grader(job_json["method"]["reinforcement"]["grader"])   # GraderValidationError
    g = grader.compile(spec)                     # once per job: parses templates, formula, starts nothing yet
    batch = g.grade(samples, items)              # many samples against their dataset rows
    batch.rewards, batch.sub_rewards, batch.error_counts
    grader.run(spec, "model output", item)       # OpenAI's GraderRunResponse dict

No web or database code here; the API, the trainer and the grader service call these functions.
"""

from grader.errors import ERROR_FLAGS, GraderValidationError, empty_errors
from grader.specs import (
    MULTI_CHILD_TYPES,
    OPENAI_TYPES,
    TOP_LEVEL_TYPES,
    VISUAL_TYPES,
    ClassificationGrader,
    FormatGrader,
    GraderSpec,
    IouGrader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    validate_grader,
)

__all__ = [
    "ERROR_FLAGS",
    "MULTI_CHILD_TYPES",
    "OPENAI_TYPES",
    "TOP_LEVEL_TYPES",
    "VISUAL_TYPES",
    "BatchResult",
    "ClassificationGrader",
    "CompiledGrader",
    "FormatGrader",
    "GraderSpec",
    "GraderValidationError",
    "IouGrader",
    "LabelModelGrader",
    "ModelEndpoint",
    "MultiGrader",
    "PythonGrader",
    "RemoteGrader",
    "SampleResult",
    "ScoreModelGrader",
    "StringCheckGrader",
    "TextSimilarityGrader",
    "compile",
    "empty_errors",
    "run",
    "validate_grader",
]


def __getattr__(name):  # the compiled side imports numpy etc. only when used
    if name in ("compile", "run", "CompiledGrader", "BatchResult", "SampleResult", "ModelEndpoint"):
        from grader import core

        return getattr(core, name)
    if name == "RemoteGrader":
        from grader.service import RemoteGrader

        return RemoteGrader
    raise AttributeError(name)
