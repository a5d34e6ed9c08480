"""The learning demo's product pieces, fast (CPU, no server): its scenes (`demo.scenes`), its base's cache
(`demo.base.ensure_base`: built once, reused, built again when the recipe changes) and its job settings
(`demo.learn.recipe`, accepted by the API's schemas). The demo itself (about 20 minutes) is not run here."""

from __future__ import annotations

import json

import pytest

import demo.base as demo_base
from demo import learn
from demo.scenes import DEMO_SCENES, PRETRAIN_SCENES, RELATION_WORDS, SceneOptions, generate
from synthetic import RELATIONS, referents, to_jsonl
from synthetic import generate as product_generate
from tests.synthetic.test_generator import digest

name = lambda o: f"{o['colour']} {o['shape']}"  # noqa: E731


@pytest.mark.parametrize("task", ["detection", "grounding", "classification"])
def test_default_scene_options_are_the_products_rows(task):
    assert to_jsonl(generate(task, 8, seed=4, sft=True)) == to_jsonl(product_generate(task, 8, seed=4, sft=True))


def test_demo_scenes_are_the_learning_benchmarks_headline_scenes():
    """The digest research/results/learning.vocabulary.md's rows were pinned with (tests/research/test_scenes.py):
    the demo draws the very rows of the benchmark's seeds."""
    assert digest(generate("grounding", 16, seed=0, sft=True, **DEMO_SCENES)) == "2c7bde434e1869d89f1d845a672d22cc"


def test_demo_scenes_have_three_big_shapes_compass_words_and_decoys():
    rows = generate("grounding", 40, seed=3, **DEMO_SCENES)
    with_decoy = 0
    for row in rows:
        objects, t, a, rel = row["objects"], row["target"], row["anchor"], row["relation"]
        assert len(objects) == 3 and row["image_size"] == [56, 56], row["id"]
        assert not row["background"].endswith(" noise"), row["id"]  # plain backgrounds
        words = RELATION_WORDS["compass"][rel]
        assert row["expression"] == f"the {name(objects[t])} {words} the {name(objects[a])}"
        assert words in row["messages"][-1]["content"][1]["text"] and RELATIONS[rel] not in row["expression"]
        assert referents(objects, name(objects[t]), rel, name(objects[a])) == [t]
        for o in objects:
            side = max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1])
            assert round(0.3 * 56) - 2 <= side <= round(0.45 * 56), row["id"]
        with_decoy += sum(i != t and name(o) == name(objects[t]) for i, o in enumerate(objects))
        assert row["messages"][-1]["content"][-1]["type"] == "text"
    assert with_decoy >= 0.6 * len(rows)  # the generator aims at 75%


def test_pretraining_scenes_have_two_shapes_and_plain_words():
    rows = generate("grounding", 20, seed=1, split="pretrain", sft=True, **PRETRAIN_SCENES)
    assert {len(r["objects"]) for r in rows} == {2}
    assert all(RELATIONS[r["relation"]] in r["expression"] for r in rows)
    assert rows[0]["messages"][-1]["content"].startswith("<answer>")  # short answers


def test_scene_options_are_checked():
    assert SceneOptions(shape_scale=[0.3, 0.45]).shape_scale == (0.3, 0.45)  # from argparse or JSON
    with pytest.raises(ValueError, match="relation_words must be one of"):
        SceneOptions(relation_words="nautical").check()
    with pytest.raises(ValueError, match="shape_scale"):
        generate("grounding", 1, shape_scale=(0.5, 0.3))


def test_the_base_is_built_once_reused_and_rebuilt_for_another_recipe(tmp_path, monkeypatch):
    recipe = demo_base.Recipe(name="b", rows=8, steps=2, warmup=1, batch_size=2, n_eval=2)
    folder = demo_base.ensure_base(tmp_path, recipe, progress=False)
    assert folder == (tmp_path / "models" / "b").absolute()
    info = json.loads((folder / demo_base.MARKER).read_text())
    assert info["recipe"] == recipe.as_json() and info["complete"] is True and info["step"] == 2
    assert 0.0 <= info["eval"]["score"] <= 1.0 and info["parameters"] > 900_000
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    tok = json.loads((folder / "tokenizer.json").read_text())
    assert {"7", "42", "999"} <= {t["content"] for t in tok["added_tokens"]}  # the number tokens
    weights = (folder / "model.safetensors").read_bytes()

    calls = []
    real_train = demo_base.train
    monkeypatch.setattr(demo_base, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    assert demo_base.ensure_base(tmp_path, recipe, progress=False) == folder  # cached: no training
    assert calls == [] and (folder / "model.safetensors").read_bytes() == weights

    changed = demo_base.Recipe(name="b", rows=8, steps=3, warmup=1, batch_size=2, n_eval=2)
    assert not demo_base.is_built(folder, changed)
    demo_base.ensure_base(tmp_path, changed, progress=False)
    assert calls == [1]
    assert json.loads((folder / demo_base.MARKER).read_text())["recipe"]["steps"] == 3

    (folder / demo_base.MARKER).write_text(json.dumps({**info, "complete": False}))  # a build cut short
    assert not demo_base.is_built(folder, recipe)


def test_the_recipe_is_the_benchmarks_few_shot_setting_and_the_api_accepts_it():
    from api.schemas import ReinforcementHyperparameters, SupervisedHyperparameters
    from demo.learning import MAX_TOKENS, branch_hyperparameters, rft_hyperparameters

    hp = learn.recipe(256, 64)
    # research/results/learning.vocabulary.md, the 256-row command: 8,192 sequences each for +SFT and +RFT
    assert (hp.warm_epochs, hp.sft_epochs, hp.rft_epochs, hp.num_generations) == (4, 32, 4, 8)
    assert hp.n_train * hp.sft_epochs == hp.n_train * hp.rft_epochs * hp.num_generations == 8192
    assert (hp.warm_lr_multiplier, hp.sft_lr_multiplier, hp.rft_lr_multiplier) == (0.1, 0.1, 1.0)
    assert hp.base_model == demo_base.DEMO_RECIPE.name and hp.freeze_vision
    ReinforcementHyperparameters.model_validate(rft_hyperparameters(hp, MAX_TOKENS["grounding"]))
    SupervisedHyperparameters.model_validate({"n_epochs": 1, "batch_size": hp.batch_size,
                                              "learning_rate_multiplier": hp.sft_lr_multiplier,
                                              **branch_hyperparameters(hp)})
    assert learn.recipe(1024, 64).sft_epochs == 8


def test_the_table_shows_each_stage_and_the_gain_over_the_warm_start():
    ev = {s: {"score": v, "format_rate": 1.0} for s, v in zip(("base", "warm", "sft", "rft"), (0.1, 0.3, 0.45, 0.5))}
    text = learn.table({"eval": ev})
    assert "| +RFT (b) | 0.500 | +0.200 | 1.00 |" in text and "| SFT warm start | 0.300 |  | 1.00 |" in text
