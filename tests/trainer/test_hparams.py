"""The hyperparameters are declared once (trainer/hparams.py); the README's table, the API's request models and
the trainer's resolution come from that declaration and must agree with it and with each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.schemas import DpoHyperparameters, ReinforcementHyperparameters, SupervisedHyperparameters
from trainer.hparams import DPOConfig, GRPOConfig, SFTConfig, markdown, settings
from trainer.job_spec import TrainerError

REPO = Path(__file__).resolve().parents[2]
MODELS = {SFTConfig: SupervisedHyperparameters, GRPOConfig: ReinforcementHyperparameters,
          DPOConfig: DpoHyperparameters}


def test_the_readme_table_is_the_declaration():
    text = (REPO / "trainer" / "README.md").read_text()
    start = text.index("\n", text.index("<!-- hyperparameters: generated")) + 1
    table = text[start:text.index("<!-- end of hyperparameters -->")]
    assert table == markdown(), "trainer/README.md's table is stale: paste `python -m trainer.hparams --markdown`"


@pytest.mark.parametrize("config", MODELS, ids=lambda c: c.method)
def test_the_api_takes_the_declared_settings_and_no_others(config):
    model = MODELS[config]
    assert list(model.model_fields) != [] and set(model.model_fields) == {s.name for s in settings(config) if s.api}
    for s in settings(config):
        if not s.api:
            with pytest.raises(ValidationError, match="Extra inputs"):
                model.model_validate({s.name: s.default})
        elif s.auto is None:  # every declared default is a value both sides take
            model.model_validate({s.name: s.default})
        config.resolve({s.name: s.default if s.auto is None else "auto"}, rows=64, world=1)


def _out_of_bounds():
    """(config, name, value, whether the trainer run on its own takes it): values just outside each bound."""
    for config in MODELS:
        for s in settings(config):
            if s.kind in (int, float):
                step = 1 if s.kind is int else 0.5
                for v in (s.ge - step if s.ge is not None else None, s.gt, s.le + step if s.le is not None else None):
                    if v is not None:
                        yield config, s.name, v, False
                if s.cap is not None:
                    yield config, s.name, s.cap + step, True  # the service's limit, not the trainer's
            if s.choices is not None:
                yield config, s.name, "nonsense", False
        yield config, "lora", {"r": 0}, False
        yield config, "lora", {"rank": 2}, False


@pytest.mark.parametrize("config, name, value, trainer_takes", list(_out_of_bounds()),
                         ids=lambda x: x.method if isinstance(x, type) else str(x))
def test_the_api_and_the_trainer_refuse_the_same_values(config, name, value, trainer_takes):
    if next(s for s in settings(config) if s.name == name).api:
        with pytest.raises(ValidationError, match=name):
            MODELS[config].model_validate({name: value})
    if trainer_takes:
        config.resolve({name: value}, rows=64, world=1)
    else:
        with pytest.raises(TrainerError, match=name):
            config.resolve({name: value}, rows=64, world=1)


def test_the_loss_types_are_the_aggregations():
    from trainer.grpo import AGGREGATIONS

    assert next(s for s in settings(GRPOConfig) if s.name == "loss_type").choices == tuple(AGGREGATIONS)


def test_the_api_process_does_not_import_torch():
    code = "import api.main, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
