"""trainer.tiny_model's builder at other dimensions (what research/models.py builds its larger bases with): the
default is the tiny model; any dimensions keep what vLLM's CPU backend needs (head size 32, mrope_section summing
to head_dim / 2), and a folder of another build is never taken for the tiny model."""

from __future__ import annotations

import json
import os

import pytest

WIDER = dict(text_hidden=192, text_layers=3, text_heads=6, text_kv_heads=2, text_intermediate=384, vision_depth=2,
             vision_embed=64, vision_heads=2)


def test_dimensions_default_to_the_tiny_model_and_keep_head_size_32():
    from trainer.tiny_model import HEAD_DIM, Dimensions

    tiny = Dimensions()
    assert (tiny.text_hidden, tiny.text_layers, tiny.text_heads, tiny.vision_depth) == (128, 2, 4, 2)
    assert Dimensions(**WIDER).text_hidden // Dimensions(**WIDER).text_heads == HEAD_DIM
    with pytest.raises(ValueError, match="text_hidden"):
        Dimensions(text_hidden=256, text_heads=4)  # head size 64: vLLM's CPU attention refuses it
    with pytest.raises(ValueError, match="text_kv_heads"):
        Dimensions(text_hidden=96, text_heads=3, text_kv_heads=2)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_make_config_follows_the_dimensions(family):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer import tiny_model as tm

    tok = tm.train_tokenizer()
    assert tm.make_config(family, tok, tm.Dimensions()).to_dict() == tm.make_config(family, tok).to_dict()
    config = tm.make_config(family, tok, tm.Dimensions(**WIDER))
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (192, 3, 6)
    assert text.hidden_size // text.num_attention_heads == 32 and 2 * sum(text.rope_parameters["mrope_section"]) == 32
    assert vision.depth == 2


def test_another_build_is_told_apart_by_its_marker(tmp_path):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer.tiny_model import MARKER, Dimensions, build_tiny_model, is_complete

    wide = build_tiny_model(tmp_path / "wide", seed=0, dims=Dimensions(**WIDER), added_tokens=("<x>", "<y>"))
    marker = json.loads((wide / MARKER).read_text())
    assert marker["dimensions"] == WIDER and marker["added_tokens"]["count"] == 2
    assert is_complete(wide, dims=Dimensions(**WIDER), added_tokens=("<x>", "<y>"))
    assert not is_complete(wide) and not is_complete(wide, dims=Dimensions(**WIDER))
    assert json.loads((wide / "config.json").read_text())["text_config"]["hidden_size"] == 192
    tiny = build_tiny_model(tmp_path / "tiny", seed=0)
    assert "dimensions" not in json.loads((tiny / MARKER).read_text())  # the tiny model's marker is as it was
    assert is_complete(tiny) and not is_complete(tiny, dims=Dimensions(**WIDER))
