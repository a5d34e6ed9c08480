"""Strict checks of SDK objects against the SDK's own pydantic types: the SDK parses leniently, so a wrong
field name or type would otherwise go unnoticed."""

from __future__ import annotations

from typing import Any

_SDK_GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")


def strict(cls: type, obj: Any) -> dict:
    """Validate `obj` (an SDK object or a dict) as `cls` for real, and check that it carries no field the
    SDK type does not know and none it requires is missing."""
    data = obj if isinstance(obj, dict) else obj.to_dict()
    fields = cls.model_fields
    unknown = set(data) - set(fields)
    assert not unknown, f"{cls.__name__}: fields not in the SDK type: {unknown}"
    missing = {n for n, f in fields.items() if f.is_required() and n not in data}
    assert not missing, f"{cls.__name__}: required fields missing: {missing}"
    if cls.__name__ == "FineTuningJob" and data.get("status") == "paused":
        # 'paused' is a real status of the API (the RFT guide) that the SDK's Literal lacks.
        data = {**data, "status": "queued"}
    grader = ((data.get("method") or {}).get("reinforcement") or {}).get("grader") or {}
    if grader and (grader.get("type") not in _SDK_GRADER_TYPES):
        # Two documented departures from the SDK's grader types: OpenAI's API takes a multi grader's `graders`
        # as a map of name -> grader (the graders guide; the SDK types one grader), and our visual graders
        # (iou, format, classification) are extensions the SDK does not know. Check every OpenAI-typed grader
        # against the SDK's types, then the job with a plain SDK grader in its place.
        from openai.types.graders import MultiGrader, StringCheckGrader

        g = grader.get("graders")
        subs = [g] if isinstance(g, dict) and "type" in g else list(g.values()) if isinstance(g, dict) else g or []
        for sub in subs:
            if sub.get("type") in _SDK_GRADER_TYPES:
                MultiGrader.model_validate({**grader, "graders": sub})
        placeholder = {"type": "string_check", "name": "x", "input": "a", "reference": "b", "operation": "eq"}
        StringCheckGrader.model_validate(placeholder)
        data = {
            **data,
            "method": {**data["method"], "reinforcement": {**data["method"]["reinforcement"], "grader": placeholder}},
        }
    cls.model_validate(data)
    return obj if isinstance(obj, dict) else obj.to_dict()
