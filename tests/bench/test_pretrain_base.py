"""bench/pretrain_base.py end to end on a few rows: the output folder is a loadable model, and --keep-evals leaves
one model per evaluation, each with its own step's weights."""

from __future__ import annotations

import json

from bench import pretrain_base


def test_keep_evals_leaves_one_model_per_evaluation(tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("VRFT_HOME", str(tmp_path))
    rc = pretrain_base.main(["--name", "p", "--rows", "8", "--steps", "4", "--warmup", "1", "--batch-size", "4",
                             "--eval-every", "2", "--n-eval", "2", "--keep-evals", "--image-size", "56",
                             "--max-objects", "2", "--plain-background"])
    assert rc == 0
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["p", "p-s2", "p-s4"]
    steps = {name: json.loads((models / name / pretrain_base.MARKER).read_text())["step"] for name in ("p", "p-s2", "p-s4")}
    assert steps == {"p": 4, "p-s2": 2, "p-s4": 4}
    w2, w4, final = (load_file(models / n / "model.safetensors") for n in ("p-s2", "p-s4", "p"))
    assert any(not w2[k].equal(w4[k]) for k in w4)  # two more steps changed the weights
    assert all(w4[k].equal(final[k]) for k in final)  # the last kept copy is the final model
    assert (models / "p-s2" / "tokenizer.json").exists()  # a whole model folder, not just weights
