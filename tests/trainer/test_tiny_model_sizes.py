"""trainer.tiny_model's size option: the default is the original tiny model; larger sizes keep what vLLM's
CPU backend needs (head size 32, mrope_section summing to head_dim / 2) and are told apart by the marker."""

from __future__ import annotations

import json
import os

import pytest


def test_default_size_is_the_tiny_model():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer import tiny_model as tm

    assert tm.DEFAULT_SIZE == "tiny"
    d = tm.MODEL_SIZES["tiny"]
    assert (d["text_hidden"], d["text_layers"], d["text_heads"], d["text_kv_heads"], d["text_intermediate"]) == (
        tm.TEXT_HIDDEN, tm.TEXT_LAYERS, tm.TEXT_HEADS, tm.TEXT_KV_HEADS, tm.TEXT_INTERMEDIATE)
    assert (d["vision_depth"], d["vision_embed"], d["vision_heads"]) == (tm.VISION_DEPTH, tm.VISION_EMBED, tm.VISION_HEADS)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_every_size_keeps_head_size_32(family):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer import tiny_model as tm

    tok = tm.train_tokenizer()
    default = tm.make_config(family, tok).to_dict()
    assert tm.make_config(family, tok, "tiny").to_dict() == default
    widths = []
    for size in tm.MODEL_SIZES:
        text = tm.make_config(family, tok, size).text_config
        assert text.hidden_size // text.num_attention_heads == 32
        assert text.num_attention_heads % text.num_key_value_heads == 0
        assert 2 * sum(text.rope_parameters["mrope_section"]) == 32
        widths.append(text.hidden_size)
    assert widths == sorted(widths)
    with pytest.raises(ValueError):
        tm.make_config(family, tok, "huge")


def test_a_larger_size_builds_and_is_told_apart(tmp_path):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer.tiny_model import MARKER, build_tiny_model, is_complete

    small = build_tiny_model(tmp_path / "small", seed=0, size="small")
    marker = json.loads((small / MARKER).read_text())
    assert marker["size"] == "small" and marker["parameters"] > 2_000_000
    assert is_complete(small, seed=0, size="small") and not is_complete(small, seed=0)
    cfg = json.loads((small / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == 256 and cfg["vision_config"]["depth"] == 4
