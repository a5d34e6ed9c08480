"""The tiny Qwen2-VL model: built for real, loaded by real transformers and real vLLM (CPU). No mocks.

Needs the ML stack (scripts/install_ml_stack.sh). The heavy imports sit inside the tests so that a venv
without the stack fails these tests, not the collection of the whole suite.

vLLM runs in a subprocess (this file, run as a script), with its engine in that process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): a clean interpreter for vLLM's global state, and ~30 s instead of ~90 s
for the default engine-core + worker processes on 2 cores.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 24
N_SAMPLES = 4
QUESTION = "Detect all objects belonging to the category 'red square' in the image."


def _image():
    """A small picture: a red square on white, 84x56 pixels (6 image tokens)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (84, 56), (255, 255, 255))
    ImageDraw.Draw(img).rectangle([10, 12, 38, 40], fill=(220, 20, 20))
    return img


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _offline_env(tmp: Path) -> dict[str, str]:
    """What a process needs to run vLLM here: CPU, no hub, its own caches in a temp folder.

    TORCHINDUCTOR_CACHE_DIR is left as the environment has it (torch's default: $TMPDIR/torchinductor_$USER):
    even with enforce_eager, vLLM's first request compiles a few kernels with inductor (~20 s cold, ~0 s warm).
    """
    env = dict(os.environ)
    env.update({
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "HF_HOME": str(tmp / "hf"),
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
    })
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two builds with seed 0 in two VRFT_HOME-like folders, and the time each took."""
    from trainer.tiny_model import build_tiny_model

    home = tmp_path_factory.mktemp("vrft")
    times, dirs = [], []
    for name in ("a", "b"):
        start = time.monotonic()
        dirs.append(build_tiny_model(home / name / "models" / "tiny-qwen2-vl", seed=0))
        times.append(time.monotonic() - start)
    return dirs, times


@pytest.fixture(scope="module")
def hf_reference(built):
    """transformers: processor + model from the folder, greedy generate on a chat message with an image."""
    return _hf_reference(built[0][0])


def _hf_reference(model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[_image()], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    prompt_len = inputs["input_ids"].shape[1]
    tokens = out.sequences[0, prompt_len:].tolist()
    first_logprobs = torch.log_softmax(out.logits[0][0].float(), dim=-1)
    return {
        "prompt": prompt,
        "prompt_token_ids": inputs["input_ids"][0].tolist(),
        "tokens": tokens,
        "first_logprob": first_logprobs[tokens[0]].item(),
        "text": processor.tokenizer.decode(tokens, skip_special_tokens=True),
        "image_grid_thw": inputs["image_grid_thw"][0].tolist() if "image_grid_thw" in inputs else None,  # Qwen only
    }


def test_build_is_deterministic_atomic_and_idempotent(built, tmp_path):
    from trainer.tiny_model import MARKER, build_tiny_model, is_complete

    (a, b), times = built
    files = sorted(p.name for p in a.iterdir())
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json", MARKER):
        assert name in files
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:  # weights and every other file: byte-identical for the same seed
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    leftovers = [p.name for p in a.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers  # built in a temporary folder beside it, then renamed
    assert oct(a.stat().st_mode & 0o777) != "0o700"  # not left private by mkdtemp

    # A complete folder is left alone: fast, not rewritten.
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    assert build_tiny_model(a, seed=0) == a
    assert time.monotonic() - start < 1.0
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    assert is_complete(a, seed=0) and not is_complete(a, seed=1)

    # Another seed gives other weights, same tokenizer and config.
    c = build_tiny_model(tmp_path / "seed1", seed=1)
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()
    assert (c / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert (c / "config.json").read_bytes() == (a / "config.json").read_bytes()
    print(f"build times: {times[0]:.1f} s, {times[1]:.1f} s")


def test_cli_defaults_to_vrft_home_and_skips_a_complete_folder(built, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(built[0][0], home / "models" / "tiny-qwen2-vl")
    env = dict(os.environ, VRFT_HOME=str(home))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "trainer.tiny_model", "--seed", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout and str(home / "models" / "tiny-qwen2-vl") in proc.stdout
    assert time.monotonic() - start < 10


def test_config_and_tokenizer(built):
    from transformers import AutoConfig, AutoTokenizer

    from trainer.tiny_model import SPECIAL_TOKENS, TAG_TOKENS

    model_dir = built[0][0]
    config = AutoConfig.from_pretrained(model_dir)
    text, vision = config.text_config, config.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        128, 2, 4, 2)
    assert head_dim == 32 and sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert (vision.depth, vision.patch_size, vision.spatial_merge_size) == (2, 14, 2)
    assert config.tie_word_embeddings is False and text.vocab_size % 64 == 0

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(tok) <= text.vocab_size
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS + TAG_TOKENS)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # in Qwen2-VL's order, at the end
    assert ids[-1] == len(tok) - 1
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"

    answer = "<think>One red square.</think><answer>[{'Position': [10, 12, 38, 40], 'Confidence': 0.95}]</answer>"
    encoded = tok(answer)["input_ids"]
    assert tok.decode(encoded) == answer
    pieces = tok.convert_ids_to_tokens(encoded)
    for single in ("<think>", "</think>", "<answer>", "</answer>", "Position", "Confidence"):
        assert single in pieces
    assert len(encoded) <= 40, pieces
    assert tok.decode(tok("Any text, even ünïcödé and 日本語!")["input_ids"]) == "Any text, even ünïcödé and 日本語!"


def test_transformers_generate_with_an_image(hf_reference):
    ref = hf_reference
    assert ref["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                    "<|vision_start|><|image_pad|><|vision_end|>")
    assert ref["prompt"].endswith("<|im_start|>assistant\n")
    assert ref["image_grid_thw"] == [1, 4, 6]  # 56x84 pixels -> 4x6 patches of 14 -> 6 tokens after 2x2 merge
    assert 1 <= len(ref["tokens"]) <= MAX_TOKENS


@pytest.mark.parametrize("family,architecture", [("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
                                                 ("qwen3_vl", "Qwen3VLForConditionalGeneration"),
                                                 ("llava_onevision", "LlavaOnevisionForConditionalGeneration")])
def test_other_families_build_and_generate(tmp_path, family, architecture):
    """The other families the builder offers: the same BPE vocabulary, a Qwen2.5-VL, Qwen3-VL or LLaVA-OneVision
    architecture (tests/trainer/test_family_builds.py checks LLaVA-OneVision further)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from trainer.tiny_model import MAX_PIXELS, PATCH_SIZE, build_tiny_model

    model_dir = build_tiny_model(tmp_path / family, seed=0, family=family)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    assert type(model).__name__ == architecture
    if family == "qwen3_vl":  # what sets it apart: a learnt position embedding per patch, covering the largest image
        assert model.model.visual.pos_embed.num_embeddings == (int(MAX_PIXELS ** 0.5) // PATCH_SIZE) ** 2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[_image()], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= 8


def test_vllm_offline_engine_matches_transformers(built, hf_reference, tmp_path):
    _check_vllm_matches(built[0][0], hf_reference, tmp_path)


def test_vllm_offline_engine_matches_transformers_on_qwen3_vl(tmp_path):
    """The Qwen3-VL family (absolute position embeddings in the vision tower, DeepStack) is served the same."""
    from trainer.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny-qwen3-vl", seed=0, family="qwen3_vl")
    _check_vllm_matches(model_dir, _hf_reference(model_dir), tmp_path)


def _check_vllm_matches(model_dir: Path, hf_reference: dict, tmp_path: Path) -> None:
    request = {"model": str(model_dir), "image_url": _data_url(_image()), "question": QUESTION,
               "max_tokens": MAX_TOKENS, "n": N_SAMPLES}
    (tmp_path / "request.json").write_text(json.dumps(request))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "request.json"), str(tmp_path / "out.json")],
                          cwd=tmp_path, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=420)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"vLLM worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = json.loads((tmp_path / "out.json").read_text())
    print(f"vLLM subprocess: {elapsed:.1f} s (engine load {out['load_s']:.1f} s)")

    # Same chat template and image processing: identical prompt tokens (image placeholders expanded).
    assert out["prompt_token_ids"] == hf_reference["prompt_token_ids"]
    # fp32, greedy: the same tokens as transformers.generate, and the same first-token logprob.
    assert out["greedy_tokens"] == hf_reference["tokens"]
    assert out["greedy_first_logprob"] == pytest.approx(hf_reference["first_logprob"], abs=1e-4)
    # Sampling: n completions, each with tokens.
    assert len(out["samples"]) == N_SAMPLES
    assert all(1 <= len(tokens) <= MAX_TOKENS for tokens in out["samples"])


def _vllm_worker(request_path: str, out_path: str) -> None:
    """Run in a subprocess: vLLM's offline engine on CPU, greedy then n samples on one image prompt."""
    from vllm import LLM, SamplingParams

    req = json.loads(Path(request_path).read_text())
    start = time.monotonic()
    llm = LLM(model=req["model"], dtype="float32", max_model_len=1024, max_num_seqs=N_SAMPLES, seed=0,
              limit_mm_per_prompt={"image": 1, "video": 0}, enforce_eager=True,
              distributed_executor_backend="uni")
    load_s = time.monotonic() - start
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": req["image_url"]}},
                                             {"type": "text", "text": req["question"]}]}]
    greedy = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=req["max_tokens"], logprobs=1))[0]
    tokens = list(greedy.outputs[0].token_ids)
    sampled = llm.chat(messages, SamplingParams(n=req["n"], temperature=1.0, max_tokens=req["max_tokens"],
                                                seed=1))[0]
    Path(out_path).write_text(json.dumps({
        "load_s": load_s,
        "prompt_token_ids": list(greedy.prompt_token_ids),
        "greedy_tokens": tokens,
        "greedy_first_logprob": greedy.outputs[0].logprobs[0][tokens[0]].logprob,
        "samples": [list(o.token_ids) for o in sampled.outputs],
    }))


if __name__ == "__main__":
    _vllm_worker(sys.argv[1], sys.argv[2])
