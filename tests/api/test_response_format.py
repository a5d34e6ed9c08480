"""`method.reinforcement.response_format` at job creation: OpenAI's shapes are accepted, and a server whose
rollout engine cannot constrain samples refuses a constraining one up front instead of failing the job later."""

from __future__ import annotations

import pytest

SCHEMA = {"type": "json_schema", "json_schema": {"name": "colour", "strict": True, "schema": {
    "type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green"]}},
    "required": ["colour"], "additionalProperties": False}}}


@pytest.mark.parametrize("engine", ["vllm", "hf"])
@pytest.mark.parametrize(
    "rf", [None, {"type": "text"}, {"type": "json_object"}, SCHEMA], ids=["none", "text", "json_object", "json_schema"]
)
def test_response_format_against_the_rollout_engine(tmp_path, engine, rf) -> None:
    from api.errors import APIError
    from api.services.jobs import _validate_response_format
    from api.settings import Settings

    settings = Settings(home=tmp_path, rollout_engine=engine)
    constraining = rf is not None and rf["type"] != "text"
    if engine == "hf" and constraining:
        with pytest.raises(APIError) as e:
            _validate_response_format(rf, settings)
        assert e.value.status_code == 400 and e.value.code == "unsupported_response_format"
        assert e.value.param == "method.reinforcement.response_format" and "VRFT_ROLLOUT_ENGINE" in e.value.message
    else:
        _validate_response_format(rf, settings)
