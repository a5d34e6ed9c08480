"""Serving takes its settings from the API through a protocol (serving/interface.py): the API's settings, declared
once in api/settings.py, must have every field that protocol names."""

from __future__ import annotations

from api.settings import Settings
from serving.interface import ServingConfig


def test_the_api_settings_are_a_serving_config() -> None:
    assert isinstance(Settings(), ServingConfig)
    missing = [name for name in ServingConfig.__annotations__ if name not in Settings.model_fields]
    assert not missing, f"serving reads settings the API does not declare: {missing}"
