"""research/models.py: the studies' sizes and number tokens, built by the product's builder."""

from __future__ import annotations

import json
import os

import pytest


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_every_size_keeps_head_size_32_and_grows(family):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from research.models import SIZES
    from trainer import tiny_model as tm

    assert SIZES["tiny"] == tm.Dimensions()
    tok = tm.train_tokenizer()
    widths = []
    for dims in SIZES.values():
        text = tm.make_config(family, tok, dims).text_config
        assert text.hidden_size // text.num_attention_heads == 32
        assert text.num_attention_heads % text.num_key_value_heads == 0
        assert 2 * sum(text.rope_parameters["mrope_section"]) == 32
        widths.append(text.hidden_size)
    assert widths == sorted(widths)


def test_a_larger_size_builds_and_is_told_apart(tmp_path):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from research.models import SIZES, build_base
    from trainer.tiny_model import MARKER, is_complete

    small = build_base(tmp_path / "small", seed=0, size="small")
    marker = json.loads((small / MARKER).read_text())
    assert marker["parameters"] > 2_000_000
    assert is_complete(small, seed=0, dims=SIZES["small"]) and not is_complete(small, seed=0)
    cfg = json.loads((small / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == 256 and cfg["vision_config"]["depth"] == 4
    with pytest.raises(ValueError, match="unknown size"):
        build_base(tmp_path / "huge", size="huge")


def test_number_tokens_make_each_integer_one_token_and_keep_the_rest(tmp_path):
    """number_tokens: the same vocabulary and special tokens, then one token for each of 0..999 (so a box
    coordinate is one token); text round-trips; the folder is told apart from the default one."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers import AutoConfig, AutoTokenizer

    from research.models import NUMBER_TOKENS, build_base
    from trainer.tiny_model import SPECIAL_TOKENS, TAG_TOKENS, build_tiny_model, is_complete

    default_dir = build_tiny_model(tmp_path / "plain", seed=0)
    folder = build_base(tmp_path / "numbers", seed=0, number_tokens=True)
    assert is_complete(folder, added_tokens=NUMBER_TOKENS) and not is_complete(folder)
    assert not is_complete(default_dir, added_tokens=NUMBER_TOKENS)
    plain, numbers = AutoTokenizer.from_pretrained(default_dir), AutoTokenizer.from_pretrained(folder)
    vocab = AutoConfig.from_pretrained(folder).text_config.vocab_size
    assert len(numbers) == len(plain) + 990 <= vocab  # 0-9 were there
    assert all(len(numbers(str(i))["input_ids"]) == 1 for i in range(1000))
    named = SPECIAL_TOKENS + TAG_TOKENS
    assert numbers.convert_tokens_to_ids(named) == plain.convert_tokens_to_ids(named)
    answer = "<answer>[7, 42, 128, 999]</answer>"
    ids = numbers(answer)["input_ids"]
    assert [numbers.decode([i]) for i in ids if numbers.decode([i]).isdigit()] == ["7", "42", "128", "999"]
    assert numbers.decode(ids) == answer
    assert [plain.decode([i]) for i in plain(answer)["input_ids"] if plain.decode([i]).isdigit()] == list("742128999")
    text = "Any text, even ünïcödé, 3.14 and 2026!"
    assert numbers.decode(numbers(text)["input_ids"]) == text
