"""Builds of `trainer.tiny_model` beyond the tiny Qwen models, loaded by real transformers and real vLLM (CPU):

* the non-Qwen family, LLaVA-OneVision (`--family llava_onevision`: SigLIP tower, 2-layer projector, Qwen2 LM,
  "anyres" tiles): transformers generates with an image, and vLLM's offline engine gives the same greedy tokens;
* real shapes without downloads (`--like qwen2.5-vl-3b --layers 1`): the real model's widths and vocabulary
  at depth 1, random weights; one forward with an image. The dimensions the test expects are written out here
  from Qwen/Qwen2.5-VL-3B-Instruct's config.json, not read from the builder's table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tiny_model import QUESTION, _check_vllm_matches, _hf_reference, _image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """Two seed-0 builds of the tiny LLaVA-OneVision in two folders, and the time the first took."""
    from trainer.tiny_model import build_tiny_model

    home = tmp_path_factory.mktemp("llava")
    start = time.monotonic()
    a = build_tiny_model(home / "a" / "tiny-llava-onevision", seed=0, family="llava_onevision")
    elapsed = time.monotonic() - start
    b = build_tiny_model(home / "b" / "tiny-llava-onevision", seed=0, family="llava_onevision")
    return a, b, elapsed


def test_llava_onevision_build_is_a_hub_style_folder(llava, tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoProcessor

    from trainer.tiny_model import MARKER, build_tiny_model, is_complete

    a, b, elapsed = llava
    files = sorted(p.name for p in a.iterdir())
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "processor_config.json", MARKER):
        assert name in files
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:  # deterministic per seed: every file byte-identical
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert is_complete(a, seed=0, family="llava_onevision")
    assert not is_complete(a, seed=1, family="llava_onevision") and not is_complete(a, seed=0, family="qwen2_vl")
    c = build_tiny_model(tmp_path / "seed1", seed=1, family="llava_onevision")
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()

    config = AutoConfig.from_pretrained(a)
    assert config.model_type == "llava_onevision" and config.architectures == ["LlavaOnevisionForConditionalGeneration"]
    assert config.text_config.model_type == "qwen2" and config.vision_config.model_type == "siglip_vision_model"
    assert config.vision_feature_select_strategy == "full" and config.vision_feature_layer == -1
    text = config.text_config
    assert text.hidden_size // text.num_attention_heads == 32  # a head size vLLM's CPU attention takes
    # Weights in the hub's layout (vision_tower.vision_model.*), which vLLM loads, with no unused pooling head.
    with safe_open(str(a / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    tower = [k for k in keys if k.startswith("vision_tower.")]
    assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)
    assert not any(".head." in k for k in tower) and "image_newline" in keys

    processor = AutoProcessor.from_pretrained(a)
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    tok = processor.tokenizer
    assert config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert config.video_token_id == tok.convert_tokens_to_ids("<video>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= text.vocab_size
    # ChatML turns, the image before the text: the format LLaVA-OneVision (Qwen2) was trained on; prefix-stable.
    user = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}]
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert prompt == f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    turn = user + [{"role": "assistant", "content": [{"type": "text", "text": "red square"}]}]
    assert processor.apply_chat_template(turn, tokenize=False) == prompt + "red square<|im_end|>\n"
    print(f"llava_onevision build: {elapsed:.1f} s, {(a / 'model.safetensors').stat().st_size / 1e6:.1f} MB")


def test_llava_onevision_transformers_generates_with_an_image(llava):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    a = llava[0]
    processor = AutoProcessor.from_pretrained(a)
    model = AutoModelForImageTextToText.from_pretrained(a, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[_image()], return_tensors="pt")
    # An 84x56 image: the 56-pixel base tile plus the best grid of 56-pixel tiles for it (1 row x 2), 3 tiles;
    # 16 base tokens + the 4x8 grid's features cut to the image's aspect (4x6) + one newline per row = 44.
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 3, 56, 56)
    assert inputs["input_ids"][0].tolist().count(model.config.image_token_id) == 44
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert 1 <= len(new) <= 8
    assert new[0] == int(logits[0, -1].argmax())  # generate's first greedy token is the forward's argmax
    # The image matters: another picture gives other logits.
    other = processor(text=[prompt], images=[_image().rotate(90, expand=True).resize((84, 56))], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**other).logits[0, -1], logits[0, -1])


def test_llava_onevision_vllm_offline_engine_matches_transformers(llava, tmp_path):
    """vLLM's CPU offline engine loads the folder and answers a chat with an image: the same prompt tokens (44
    image placeholders), the same greedy tokens and first-token logprob as transformers, fp32."""
    model_dir = llava[0]
    start = time.monotonic()
    _check_vllm_matches(model_dir, _hf_reference(model_dir), tmp_path)
    print(f"vLLM check: {time.monotonic() - start:.1f} s")


# ------------------------------------------------------------------------------------------ real shapes

# Qwen/Qwen2.5-VL-3B-Instruct's config.json (text and vision), written out independently of trainer.tiny_model.
QWEN25_VL_3B = {
    "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16, "num_key_value_heads": 2,
    "vocab_size": 151936, "num_hidden_layers": 36, "rope_theta": 1000000.0, "mrope_section": [16, 24, 24],
    "tie_word_embeddings": True,
    "vision": {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
               "patch_size": 14, "spatial_merge_size": 2, "window_size": 112, "depth": 32},
}


def test_like_qwen2_5_vl_3b_has_the_real_widths_at_depth_1_and_runs_a_forward(qwen25_3b_l1):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from trainer.tiny_model import MARKER, is_complete

    folder, stdout, elapsed, env = qwen25_3b_l1
    assert f"{folder}: ready" in stdout
    marker = json.loads((folder / MARKER).read_text())
    assert marker["like"] == {"preset": "qwen2.5-vl-3b", "repo": "Qwen/Qwen2.5-VL-3B-Instruct", "layers": 1}
    assert is_complete(folder, seed=0, like="qwen2.5-vl-3b", layers=1)
    assert not is_complete(folder, seed=0, like="qwen2.5-vl-3b", layers=2) and not is_complete(folder, seed=0)

    real = QWEN25_VL_3B
    config = AutoConfig.from_pretrained(folder)
    text, vision = config.text_config, config.vision_config
    assert config.model_type == "qwen2_5_vl"
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads,
            text.vocab_size) == (real["hidden_size"], real["intermediate_size"], real["num_attention_heads"],
                                 real["num_key_value_heads"], real["vocab_size"])
    assert text.rope_parameters["rope_theta"] == real["rope_theta"]
    assert text.rope_parameters["mrope_section"] == real["mrope_section"]
    assert config.tie_word_embeddings is real["tie_word_embeddings"]
    for key in ("hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "patch_size",
                "spatial_merge_size", "window_size"):
        assert getattr(vision, key) == real["vision"][key], key
    assert text.num_hidden_layers == 1 and vision.depth == 1  # cut: min(1, 36) and min(1, 32)
    assert all(i < vision.depth for i in vision.fullatt_block_indexes)

    processor = AutoProcessor.from_pretrained(folder)
    tok = processor.tokenizer
    assert len(tok) < text.vocab_size  # the small tokenizer; embedding rows past it are never looked up
    for token_id in (tok.pad_token_id, tok.eos_token_id, config.image_token_id, config.vision_start_token_id):
        assert 0 <= token_id < len(tok)

    start = time.monotonic()
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16).eval()
    load_s = time.monotonic() - start
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == marker["parameters"]
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as in the real 3B
    assert model.get_input_embeddings().weight.shape == (151936, 2048)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[_image()], return_tensors="pt")
    start = time.monotonic()
    with torch.no_grad():
        logits = model(**inputs).logits
    forward_s = time.monotonic() - start
    assert logits.shape == (1, inputs["input_ids"].shape[1], 151936)
    assert torch.isfinite(logits.float()).all() and logits.float().std() > 0

    # The CLI finds the folder complete the second time.
    again = subprocess.run([sys.executable, "-m", "trainer.tiny_model", "--like", "qwen2.5-vl-3b", "--layers", "1"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-2000:]
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"--like qwen2.5-vl-3b --layers 1: {n_params:,} parameters, build {elapsed:.1f} s, "
          f"{size / 2**30:.2f} GiB on disk, load {load_s:.1f} s, forward {forward_s:.1f} s")


def test_presets_cut_depth_and_keep_block_indexes_in_range():
    """--layers N: text depth N, vision depth min(N, real); index lists pointing past the cut tower are cut."""
    from trainer.tiny_model import PRESETS, preset

    for name, full in PRESETS.items():
        assert full["repo"].count("/") == 1
        cut = preset(name, 2)
        depth_key = "num_hidden_layers" if full["family"] == "llava_onevision" else "depth"
        assert cut["text"]["num_hidden_layers"] == 2
        assert cut["vision"][depth_key] == min(2, full["vision"][depth_key])
        for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
            if key in full["vision"]:
                assert cut["vision"][key] and all(i < 2 for i in cut["vision"][key])
        assert preset(name) == full  # a copy: cutting one leaves the table alone
    assert preset("qwen3-vl-8b", 12)["vision"]["deepstack_visual_indexes"] == [8]
    with pytest.raises(ValueError):
        preset("no-such-model")


def test_like_qwen2_5_vl_3b_layers_1_is_served_by_vllm_as_transformers_answers(qwen25_3b_l1, tmp_path):
    """vLLM's CPU offline engine loads the real-width build (bf16 weights, run in fp32) and answers a chat with an
    image: the same prompt tokens and greedy tokens as transformers. Random weights pick ids past the small
    tokenizer too (the real vocabulary); they decode to nothing, and both engines agree on them."""
    folder = qwen25_3b_l1[0]
    start = time.monotonic()
    _check_vllm_matches(folder, _hf_reference(folder), tmp_path)
    print(f"vLLM check on qwen2.5-vl-3b-L1: {time.monotonic() - start:.1f} s")
