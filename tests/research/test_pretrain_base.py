"""research/pretrain_base.py: end to end on a few rows, --keep-evals leaves one whole model folder per evaluation,
each with its own step's weights; deepen() doubles both towers without changing what the model computes."""

from __future__ import annotations

import json

from research import pretrain_base


def test_keep_evals_leaves_one_model_per_evaluation(tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("VRFT_HOME", str(tmp_path))
    rc = pretrain_base.main(["--name", "p", "--rows", "8", "--steps", "4", "--warmup", "1", "--batch-size", "4",
                             "--eval-every", "2", "--n-eval", "2", "--keep-evals", "--image-size", "56",
                             "--max-objects", "2", "--plain-background"])
    assert rc == 0
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["p", "p-s2", "p-s4"]
    steps = {name: json.loads((models / name / pretrain_base.MARKER).read_text())["step"]
             for name in ("p", "p-s2", "p-s4")}
    assert steps == {"p": 4, "p-s2": 2, "p-s4": 4}
    w2, w4, final = (load_file(models / n / "model.safetensors") for n in ("p-s2", "p-s4", "p"))
    assert any(not w2[k].equal(w4[k]) for k in w4)  # two more steps changed the weights
    assert all(w4[k].equal(final[k]) for k in final)  # the last kept copy is the final model
    assert (models / "p-s2" / "tokenizer.json").exists()  # a whole model folder, not just weights


def test_deepen_doubles_both_towers_and_keeps_what_the_model_computes(tmp_path) -> None:
    import torch

    import synthetic
    from trainer.data import ChatData
    from trainer.model import load_model, load_processor
    from trainer.sft import collate, token_loss_sums
    from trainer.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "m", seed=0)
    model = load_model(str(folder), True, torch.float32).eval()
    processor = load_processor(str(folder), True)
    rows = synthetic.generate("grounding", 3, seed=1, sft=True, short=True, sizes=((56, 56),))
    data = ChatData(rows, [1, 2, 3], processor, True, "rows")
    batch = collate([data.sft_example(i) for i in range(3)], processor.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        before = token_loss_sums(model, *batch)[0]
    n_text, n_vision = len(model.model.language_model.layers), len(model.model.visual.blocks)

    pretrain_base.deepen(model)
    assert (len(model.model.language_model.layers), len(model.model.visual.blocks)) == (2 * n_text, 2 * n_vision)
    with torch.no_grad():
        assert torch.allclose(token_loss_sums(model, *batch)[0], before)  # the new blocks add nothing yet
    model.save_pretrained(tmp_path / "deep")
    reloaded = load_model(str(tmp_path / "deep"), True, torch.float32).eval()
    assert reloaded.config.text_config.num_hidden_layers == 2 * n_text
    assert reloaded.config.vision_config.depth == 2 * n_vision
    with torch.no_grad():
        assert torch.allclose(token_loss_sums(reloaded, *batch)[0], before)
    # and training moves the copies: their zeroed projections get a gradient
    reloaded.train()
    token_loss_sums(reloaded, *batch)[0].backward()
    assert reloaded.model.language_model.layers[1].mlp.down_proj.weight.grad.abs().sum() > 0


def test_parallel_encoding_gives_the_examples_of_one_process(tmp_path) -> None:
    """--workers: chunks encoded in spawned processes come back in order and equal to a serial encoding."""
    import torch

    import synthetic
    from trainer.tiny_model import build_tiny_model

    init = build_tiny_model(tmp_path / "m", seed=0)
    rows = synthetic.generate("grounding", 5, seed=3, sft=True, sizes=((56, 56),))
    serial, parallel = pretrain_base.encode(init, rows, 1), pretrain_base.encode(init, rows, 2, chunk=2)
    assert len(parallel) == len(serial) == 5
    for (ids, labels, mm, extra), (ids2, labels2, mm2, extra2) in zip(serial, parallel):
        assert (ids, labels, extra) == (ids2, labels2, extra2)
        assert mm.keys() == mm2.keys() and all(torch.equal(mm[k], mm2[k]) for k in mm)
    assert len({tuple(e[0]) for e in serial}) > 1  # the rows differ, so the order is checked


def test_a_time_budget_ends_the_run_and_records_its_steps(tmp_path, monkeypatch) -> None:
    """--budget-seconds replaces --steps: the run stops once the time is spent (a GPU lent for a fixed time), the
    step it reached is recorded; --family builds the start from another architecture (Qwen3-VL here)."""
    import time

    monkeypatch.setenv("VRFT_HOME", str(tmp_path))
    t0 = time.time()
    rc = pretrain_base.main(["--name", "b", "--family", "qwen3_vl", "--rows", "8", "--steps", "1000000",
                             "--budget-seconds", "4", "--warmup", "1", "--batch-size", "2", "--n-eval", "1",
                             "--image-size", "56", "--max-objects", "2", "--plain-background"])
    assert rc == 0
    folder = tmp_path / "models" / "b"
    info = json.loads((folder / pretrain_base.MARKER).read_text())
    assert 2 <= info["step"] < 1000 and info["evals"][-1]["step"] == info["step"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert time.time() - t0 < 120  # the million-step schedule did not run
