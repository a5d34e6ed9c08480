"""Build a tiny vision-language model (Qwen-VL families, LLaVA-OneVision) locally, with random weights, as a
normal Hugging Face folder; or a random model of a real architecture's shape (``--like``).

No model hub is reachable where this project is built and tested, yet the service, the trainer, the tests
and the benchmarks need a real vision-language model that `transformers` and vLLM both load. This module
makes one from scratch in a few seconds:

* a config of the real architecture (`Qwen2VLForConditionalGeneration`, or Qwen2.5-VL with
  ``--family qwen2_5_vl``) scaled down to dimensions vLLM's CPU backend accepts: text hidden 128, 2 layers,
  4 attention heads of size 32, 2 KV heads, mrope_section summing to head_dim / 2, untied lm_head (vLLM's
  in-place ``reload_weights`` leaves a tied head stale), vocabulary padded to a multiple of 64; a vision
  tower of depth 2 with 14-pixel patches merged 2x2. ``--family qwen3_vl`` gives Qwen3-VL at the same
  dimensions: its vision tower also adds a learnt absolute position embedding to each patch (vLLM's CPU
  engine gives the same greedy tokens as transformers for it too);
* random weights drawn from ``seed`` (same seed -> byte-identical ``model.safetensors``);
* a byte-level BPE tokenizer trained with ``tokenizers`` on synthetic text shaped like this project's tasks
  (shape and colour names, boxes, ``Position``/``Confidence``, the ``<think>``/``<answer>`` tags), with the
  Qwen2 pre-tokenizer (one token per digit, as in real Qwen models) and all Qwen2-VL special tokens at the
  end of the vocabulary; ``<think> </think> <answer> </answer>`` are single added tokens;
* the Qwen2-VL chat template, a hand-written ``preprocessor_config.json`` with small images
  (28*28*4 .. 28*28*64 pixels; one image token covers 28x28 pixels, so 4 .. 64 tokens an image), and a
  ``generation_config.json`` that only names the stop tokens (no sampling defaults, so vLLM uses exactly
  the sampling parameters a request gives).

``--family llava_onevision`` builds LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, llava-hf's
layout: a SigLIP vision tower of depth 2 and width 64, a 2-layer GELU projector, a Qwen2 language model of the
dimensions above, features of the tower's last layer for all patches). Images are cut into "anyres" tiles
of 56x56 pixels (16 tokens each; grids of at most 2x2 tiles, so an 84x56 image costs 44 tokens); the tokenizer
is the same BPE vocabulary with Qwen2's ``<|endoftext|> <|im_start|> <|im_end|>`` and ``<image> <video>``; the
chat template is ChatML with a message's images first (the format the model was trained on; see
LLAVA_CHAT_TEMPLATE); the processor is llava-hf's ``LlavaOnevisionProcessor`` (``processor_config.json``).
Weights are written in the hub's names (``vision_tower.vision_model.*``), which vLLM 0.32 needs.

``--like NAME`` (a key of PRESETS: qwen2-vl-2b/7b, qwen2.5-vl-3b/7b, qwen3-vl-8b, llava-onevision-0.5b/7b)
builds a random model with the real architecture's dimensions and vocabulary size (each preset names the hub
repo whose config.json it mirrors), in bfloat16 as the hub checkpoints are, initialised cheaply (one in-place
normal draw per tensor); ``--layers N`` cuts the text depth to N and the vision depth to min(N, its depth).
The tokenizer stays the small built one (its ids for the image tokens, pad and eos), and the image
preprocessing the tiny one's (small images), except the preset's patch size and, for LLaVA-OneVision, the real
384-pixel tiles and grids. ``--like qwen2.5-vl-3b --layers 1`` has 446M parameters (0.83 GiB), built in ~20 s.

The folder is what a hub checkout of Qwen/Qwen2-VL-2B-Instruct looks like (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja,
preprocessor_config.json): whatever loads this loads a real model given by path, and the other way round.

Usage::

    python -m trainer.tiny_model [--out DIR] [--seed 0] [--family qwen2_vl] [--force]
    python -m trainer.tiny_model --like qwen2.5-vl-3b [--layers N] [--out DIR] [--seed 0] [--force]

The default output is ``$VRFT_HOME/models/tiny-qwen2-vl`` (the family's tiny name with ``--family``, e.g.
``tiny-llava-onevision``; ``<preset>`` or ``<preset>-L<N>`` with ``--like``; ``VRFT_HOME`` defaults to ``./.vrft``). The
folder is written atomically (built in a temporary folder beside it, then renamed) and carries a marker
file, ``vrft_tiny_model.json``; a second call with the same builder version, family (or preset and layers) and
seed finds it complete and returns at once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when anything that ends up in the folder changes: existing folders are then rebuilt.
BUILDER_VERSION = 1
MARKER = "vrft_tiny_model.json"
MARKER_FIELDS = ("builder", "builder_version", "family", "seed", "parameters", "weights_sha256", "files")
MODEL_NAME = "tiny-qwen2-vl"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
DEFAULT_NAMES = {"qwen2_vl": MODEL_NAME, "qwen2_5_vl": "tiny-qwen2.5-vl", "qwen3_vl": "tiny-qwen3-vl",
                 "llava_onevision": "tiny-llava-onevision"}

# Qwen2-VL's special tokens, in the order (and so relative ids) of the real tokenizer (151643 ...).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): Qwen2's three special tokens, then <image> and
# <video> (151646, 151647 in the real tokenizer).
LLAVA_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
# Reasoning / answer tags of the Visual-RFT prompts: plain added tokens (kept when decoding).
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

BPE_VOCAB_SIZE = 2000  # merges learnt from the synthetic corpus (fewer if the corpus runs out of pairs)
CORPUS_SEED = 1234  # the tokenizer does not depend on --seed: all tiny models share one vocabulary

# The chat template of Qwen/Qwen2-VL-*-Instruct.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-OneVision's conversation format (LLaVA-NeXT's "qwen_1_5", what the model was trained on): ChatML turns,
# a message's images first ("<image>" each, then "<video>"s), then its text after a newline, no default system
# prompt. llava-hf's template writes "<|im_start|>" + role + " " before each turn's "\n" + text, so a rendered
# assistant turn ("assistant \n...") does not start with the generation prompt ("assistant\n"); this one writes
# "role\n" throughout (prefix-stable, as SFT's label masking needs) and also takes string contents and
# OpenAI-style image_url parts.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% set ns = namespace(before=false) %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<image>"
    "{% set ns.before = true %}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'video' or 'video' in content %}<video>"
    "{% set ns.before = true %}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}"
    "{% if ns.before %}{{ '\\n' }}{% endif %}{{ content['text'] }}{% set ns.before = true %}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Image preprocessing: small images keep the vision tower cheap. One image token covers 28x28 pixels.
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

HEAD_DIM = 32  # a head size vLLM's CPU attention supports (see shared/reference/cpu-stack.md)
MROPE_SECTION = [4, 6, 6]  # temporal, height, width: sums to HEAD_DIM / 2
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH = 2

# LLaVA-OneVision's tiny build: SigLIP tiles of 56x56 pixels (4x4 patches of 14, so 16 tokens for the base
# image), and "anyres" grids of at most 2x2 tiles (the real model: 384-pixel tiles, grids up to 6x6).
LLAVA_IMAGE_SIZE = 56
LLAVA_PINPOINTS = [[LLAVA_IMAGE_SIZE * h, LLAVA_IMAGE_SIZE * w] for h in (1, 2) for w in (1, 2)]
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]
# The real model's grids (llava-hf/llava-onevision-qwen2-*-ov-hf): 1..6 x 1..6 tiles of 384 pixels.
LLAVA_REAL_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]

# --------------------------------------------------------------------------------------------- presets
# Real architectures' dimensions, for random-init builds of the real shape (`--like NAME`, `--layers N` to cut
# the depth). Each mirrors the config.json of the hub repo named beside it (text_config / vision_config keys
# as transformers 5 names them). The tokenizer stays the small built one (ids of the image tokens etc. are
# its own), but vocab_size is the real one: embedding rows past the tokenizer are never looked up.
PRESETS: dict[str, dict] = {
    # Qwen/Qwen2-VL-2B-Instruct
    "qwen2-vl-2b": dict(family="qwen2_vl", repo="Qwen/Qwen2-VL-2B-Instruct", tie_word_embeddings=True,
        text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14)),
    # Qwen/Qwen2-VL-7B-Instruct
    "qwen2-vl-7b": dict(family="qwen2_vl", repo="Qwen/Qwen2-VL-7B-Instruct", tie_word_embeddings=False,
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14)),
    # Qwen/Qwen2.5-VL-3B-Instruct
    "qwen2.5-vl-3b": dict(family="qwen2_5_vl", repo="Qwen/Qwen2.5-VL-3B-Instruct", tie_word_embeddings=True,
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    patch_size=14, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
    # Qwen/Qwen2.5-VL-7B-Instruct
    "qwen2.5-vl-7b": dict(family="qwen2_5_vl", repo="Qwen/Qwen2.5-VL-7B-Instruct", tie_word_embeddings=False,
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    patch_size=14, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
    # Qwen/Qwen3-VL-8B-Instruct
    "qwen3-vl-8b": dict(family="qwen3_vl", repo="Qwen/Qwen3-VL-8B-Instruct", tie_word_embeddings=False,
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    patch_size=16, num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])),
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf (Qwen2-0.5B + SigLIP so400m cut to 26 layers)
    "llava-onevision-0.5b": dict(family="llava_onevision", repo="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        tie_word_embeddings=True, image_grid_pinpoints=LLAVA_REAL_PINPOINTS,
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                    image_size=384, patch_size=14)),
    # llava-hf/llava-onevision-qwen2-7b-ov-hf (Qwen2-7B + SigLIP so400m cut to 26 layers)
    "llava-onevision-7b": dict(family="llava_onevision", repo="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        tie_word_embeddings=False, image_grid_pinpoints=LLAVA_REAL_PINPOINTS,
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152128, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                    image_size=384, patch_size=14)),
}


def preset(name: str, layers: int | None = None) -> dict:
    """PRESETS[name], with the text depth cut to `layers` and the vision depth to min(layers, its depth)
    (block index lists that point past the cut vision tower are cut too, keeping at least its last block)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {tuple(PRESETS)}")
    p = json.loads(json.dumps(PRESETS[name]))  # a deep copy
    if layers is None:
        return p
    if layers < 1:
        raise ValueError("layers must be at least 1")
    text, vision = p["text"], p["vision"]
    text["num_hidden_layers"] = min(layers, text["num_hidden_layers"])
    depth_key = "num_hidden_layers" if p["family"] == "llava_onevision" else "depth"
    vision[depth_key] = depth = min(layers, vision[depth_key])
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
        if key in vision:
            vision[key] = [i for i in vision[key] if i < depth] or [depth - 1]
    return p


@dataclass(frozen=True)
class Dimensions:
    """A model's size, the tiny model's by default; any keeps head size HEAD_DIM, which vLLM's CPU backend needs."""

    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    vision_depth: int = 2
    vision_embed: int = 64
    vision_heads: int = 2

    def __post_init__(self) -> None:
        if self.text_hidden != HEAD_DIM * self.text_heads or self.text_heads % self.text_kv_heads:
            raise ValueError(f"need text_hidden = {HEAD_DIM} * text_heads and text_heads a multiple of text_kv_heads")


def default_out_dir(family: str = "qwen2_vl", like: str | None = None, layers: int | None = None) -> Path:
    """``$VRFT_HOME/models/<name>``, with ``VRFT_HOME`` defaulting to ``./.vrft``; the name is the family's tiny
    model's, or for a preset ``<preset>`` or ``<preset>-L<layers>``."""
    name = DEFAULT_NAMES[family] if like is None else like + (f"-L{layers}" if layers is not None else "")
    return Path(os.environ.get("VRFT_HOME", ".vrft")) / "models" / name


# --------------------------------------------------------------------------------------------- tokenizer

SHAPES = ["circle", "square", "triangle", "rectangle", "star", "hexagon", "pentagon", "diamond", "ellipse",
          "cross", "heart", "ring"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray",
           "cyan", "magenta"]
SIZES = ["small", "large", "big", "tiny", "medium"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center", "middle", "left side",
          "right side", "top", "bottom", "upper half", "lower half"]
FILLER = (
    "The image shows {n} objects on a {bg} background. I need to find every {c} {s} and give its box. "
    "Looking at the picture, the {c} {s} is near the {p}, next to a {c2} {s2}. "
    "There is one {s} in the image, so the answer is the {c} {s}. "
    "Which shape is {c}? What colour is the {s}? The object at the {p} is a {z} {c2} {s2}. "
    "Count the objects, then check each box carefully before answering."
)


def _box(rng: random.Random, scale: int) -> list[int]:
    x1, y1 = rng.randrange(0, scale - 8), rng.randrange(0, scale - 8)
    return [x1, y1, rng.randrange(x1 + 4, scale), rng.randrange(y1 + 4, scale)]


def synthetic_corpus(seed: int = CORPUS_SEED, lines: int = 6000) -> list[str]:
    """Text shaped like the project's prompts and answers (detection, grounding, classification)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        c, c2, s, s2 = rng.choice(COLOURS), rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(SHAPES)
        p, z, n = rng.choice(PLACES), rng.choice(SIZES), rng.randint(1, 9)
        scale = rng.choice([56, 112, 224, 448, 1000])
        q = rng.choice(["'", '"'])
        kind = rng.randrange(6)
        if kind == 0:  # detection prompt
            out.append(
                f"Detect all objects belonging to the category '{c} {s}' in the image, and provide the bounding "
                f"boxes (between 0 and {scale}, integer) and confidence (between 0 and 1, with two decimal "
                "places). If no object belonging to the category is in the image, return 'No Objects'. Output "
                "the thinking process in <think> </think> and final answer in <answer> </answer> tags. The "
                "output answer format should be as follows: <think> ... </think><answer>[{'Position': [x1, y1, "
                "x2, y2], 'Confidence': number}, ...]</answer>. Please strictly follow the format.")
        elif kind == 1:  # detection answer
            items = ", ".join(
                f"{{{q}Position{q}: {_box(rng, scale)}, {q}Confidence{q}: {rng.randint(0, 100) / 100}}}"
                for _ in range(rng.randint(1, 4)))
            out.append(f"<think>There are {n} {c} {s}s in the image.</think><answer>[{items}]</answer>")
        elif kind == 2:  # grounding
            out.append(f"Output the bounding box of the {z} {c} {s} at the {p} of the image. "
                       f"<think>The {c} {s} is at the {p}.</think><answer>{_box(rng, scale)}</answer>")
        elif kind == 3:  # classification
            out.append(f"This is an image containing a shape. Please identify the class of the shape. "
                       f"<think>It has the colour {c} and looks like a {s}.</think><answer>{c} {s}</answer>")
        elif kind == 4:  # free text
            bg = rng.choice(COLOURS)
            out.append(FILLER.format(n=n, bg=bg, c=c, s=s, c2=c2, s2=s2, p=p, z=z))
        else:  # raw numbers, JSON and Qwen-style boxes
            b = _box(rng, scale)
            out.append(f'{{"Position": {b}, "Confidence": {rng.random():.2f}}} ({b[0]},{b[1]}),({b[2]},{b[3]}) '
                       f"{rng.randint(0, 1000)} {rng.random():.3f} No Objects")
    return out


def train_tokenizer(added_tokens: tuple[str, ...] = (), family: str = "qwen2_vl"):
    """Byte-level BPE with the Qwen2 pipeline, wrapped as a ``Qwen2Tokenizer`` with Qwen2-VL's tokens (or, for
    ``llava_onevision``, Qwen2's three and ``<image>``/``<video>``, as llava-onevision-qwen2's tokenizer has).

    `added_tokens`: plain tokens added after the tags, in order (none for the tiny model)."""
    specials = LLAVA_SPECIAL_TOKENS if family == "llava_onevision" else SPECIAL_TOKENS
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Train with exactly the normalizer / pre-tokenizer that transformers' Qwen2Tokenizer rebuilds on load.
    reference = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[]).backend_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = reference.pre_tokenizer
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no unknown tokens
        show_progress=False,
    )
    bpe.train_from_iterator(synthetic_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]

    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, unk_token=None, bos_token=None, eos_token=None,
                         pad_token=None)
    # Appended in this order after the BPE vocabulary, as in the real tokenizer; then the plain tags.
    tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=True)
    tok.add_tokens(TAG_TOKENS, special_tokens=False)
    if added_tokens:
        tok.add_tokens(list(added_tokens), special_tokens=False)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"  # as in Qwen2-VL-*-Instruct
    expected = list(range(len(state["vocab"]), len(state["vocab"]) + len(specials) + len(TAG_TOKENS)))
    if tok.convert_tokens_to_ids(specials + TAG_TOKENS) != expected:
        raise RuntimeError("special tokens did not land at the end of the vocabulary in order")
    tok.chat_template = LLAVA_CHAT_TEMPLATE if family == "llava_onevision" else CHAT_TEMPLATE
    tok.model_max_length = 32768
    return tok


# ----------------------------------------------------------------------------------------------- config

def make_config(family: str, tok, dims: Dimensions = Dimensions(), like: dict | None = None):
    """The architecture's config at `dims`, or at a preset's real dimensions (`like`, from :func:`preset`);
    token ids taken from the tokenizer."""
    if like is not None and like["family"] != family:
        raise ValueError(f"preset of family {like['family']!r}, asked for {family!r}")
    if family == "llava_onevision":
        return _llava_onevision_config(tok, dims, like)
    d = asdict(dims)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tok) // 64) * 64  # pad like the real models (len(tokenizer) < vocab_size)
    text = dict(
        vocab_size=vocab,
        hidden_size=d["text_hidden"],
        intermediate_size=d["text_intermediate"],
        num_hidden_layers=d["text_layers"],
        num_attention_heads=d["text_heads"],
        num_key_value_heads=d["text_kv_heads"],
        max_position_embeddings=4096,
        max_window_layers=d["text_layers"],
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION},
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False if like is None else like["tie_word_embeddings"],
        dtype="float32" if like is None else "bfloat16",
    )
    real_text, real_vision = (like["text"], like["vision"]) if like is not None else ({}, {})
    if like is not None:
        text = {**text, **real_text, "max_window_layers": real_text["num_hidden_layers"]}
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=d["vision_depth"], embed_dim=d["vision_embed"], hidden_size=d["text_hidden"],
                      num_heads=d["vision_heads"],
                      mlp_ratio=2, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
                      temporal_patch_size=TEMPORAL_PATCH, in_channels=3)
        return Qwen2VLConfig(text_config=text, vision_config={**vision, **real_vision}, **common)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=d["vision_depth"], hidden_size=d["vision_embed"], intermediate_size=2 * d["vision_embed"],
                      num_heads=d["vision_heads"], out_hidden_size=d["text_hidden"], patch_size=PATCH_SIZE,
                      spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH, in_channels=3,
                      window_size=112, fullatt_block_indexes=[d["vision_depth"] - 1], tokens_per_second=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config={**vision, **real_vision}, **common)
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        # Qwen3-VL's vision tower adds a learnt absolute position embedding to each patch (a grid of
        # num_position_embeddings, interpolated to the image's grid), where Qwen2/2.5-VL's have rotary
        # positions alone; and it feeds features of its middle blocks into the first text layers (DeepStack).
        grid = MAX_PIXELS ** 0.5 // PATCH_SIZE  # patches along the side of the largest square image
        vision = dict(depth=d["vision_depth"], hidden_size=d["vision_embed"], intermediate_size=2 * d["vision_embed"],
                      num_heads=d["vision_heads"], out_hidden_size=d["text_hidden"], patch_size=PATCH_SIZE,
                      spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH, in_channels=3,
                      num_position_embeddings=int(grid * grid), deepstack_visual_indexes=[d["vision_depth"] // 2 - 1])
        if like is None:
            text = {**text, "head_dim": d["text_hidden"] // d["text_heads"],
                    "rope_parameters": {**text["rope_parameters"], "mrope_interleaved": True}}
        text.pop("max_window_layers"), text.pop("use_sliding_window")
        return Qwen3VLConfig(text_config=text, vision_config={**vision, **real_vision}, **common)
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def _llava_onevision_config(tok, dims: Dimensions, like: dict | None):
    """LLaVA-OneVision (llava-hf layout): a SigLIP vision tower, a 2-layer GELU projector, a Qwen2 language model,
    "anyres" tiling with a learnt newline embedding; features of the tower's last layer, all patches ("full")."""
    from transformers import LlavaOnevisionConfig

    d = asdict(dims)
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_SPECIAL_TOKENS}
    text = dict(
        model_type="qwen2",
        vocab_size=-(-len(tok) // 64) * 64,
        hidden_size=d["text_hidden"],
        intermediate_size=d["text_intermediate"],
        num_hidden_layers=d["text_layers"],
        num_attention_heads=d["text_heads"],
        num_key_value_heads=d["text_kv_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(model_type="siglip_vision_model", hidden_size=d["vision_embed"],
                  intermediate_size=2 * d["vision_embed"], num_hidden_layers=d["vision_depth"],
                  num_attention_heads=d["vision_heads"],
                  image_size=LLAVA_IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, layer_norm_eps=1e-6,
                  hidden_act="gelu_pytorch_tanh", vision_use_head=False)
    pinpoints = LLAVA_PINPOINTS
    if like is not None:
        text.update(like["text"])
        text["max_window_layers"] = text["num_hidden_layers"]
        vision.update(like["vision"])
        pinpoints = like["image_grid_pinpoints"]
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision,
        image_token_index=ids["<image>"], video_token_index=ids["<video>"],
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False if like is None else like["tie_word_embeddings"],
        dtype="float32" if like is None else "bfloat16",
    )


def llava_onevision_processor(tok, like: dict | None = None):
    """The processor llava-hf ships (image + video processors, SigLIP's 0.5 mean/std), at the build's tile size."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = like["vision"]["image_size"] if like is not None else LLAVA_IMAGE_SIZE
    patch = like["vision"]["patch_size"] if like is not None else PATCH_SIZE
    pinpoints = like["image_grid_pinpoints"] if like is not None else LLAVA_PINPOINTS
    common = dict(size={"height": size, "width": size}, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD,
                  resample=3, rescale_factor=1 / 255, do_convert_rgb=True, do_normalize=True, do_rescale=True,
                  do_resize=True)
    images = LlavaOnevisionImageProcessor(image_grid_pinpoints=pinpoints, do_pad=True, **common)
    videos = LlavaOnevisionVideoProcessor(**common)
    return LlavaOnevisionProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                   num_image_tokens=(size // patch) ** 2, vision_feature_select_strategy="full",
                                   vision_aspect_ratio="anyres_max_9", chat_template=LLAVA_CHAT_TEMPLATE)


def preprocessor_config(family: str, patch_size: int = PATCH_SIZE) -> dict:
    """What the hub's Qwen2-VL ``preprocessor_config.json`` holds, with small min/max pixels (4 .. 64 image
    tokens, each covering (2 * patch_size)^2 pixels)."""
    scale = (patch_size / PATCH_SIZE) ** 2
    min_pixels, max_pixels = int(MIN_PIXELS * scale), int(MAX_PIXELS * scale)
    return {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": patch_size,
        "temporal_patch_size": TEMPORAL_PATCH,
        "merge_size": MERGE_SIZE,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": {"qwen2_5_vl": "Qwen2_5_VLProcessor",
                            "qwen3_vl": "Qwen3VLProcessor"}.get(family, "Qwen2VLProcessor"),
    }


# ------------------------------------------------------------------------------------------------ build

def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _current_umask() -> int:
    """The process umask, read without changing it (os.umask would, briefly, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _variant(dims: Dimensions, added_tokens: tuple[str, ...], like: str | None = None,
             layers: int | None = None) -> dict:
    """What the marker adds for a model other than the tiny one (nothing for it: its marker is as it was)."""
    out: dict = {} if dims == Dimensions() else {"dimensions": asdict(dims)}
    if added_tokens:
        digest = hashlib.sha256("\n".join(added_tokens).encode()).hexdigest()
        out["added_tokens"] = {"count": len(added_tokens), "sha256": digest}
    if like is not None:
        out["like"] = {"preset": like, "repo": PRESETS[like]["repo"], "layers": layers}
    return out


def _weights_sha256(folder: Path) -> str:
    """model.safetensors' sha256; for a sharded save, that of its shards' names and sha256s."""
    if (folder / "model.safetensors").is_file():
        return _sha256(folder / "model.safetensors")
    shards = sorted(p for p in folder.glob("*.safetensors"))
    return hashlib.sha256("".join(f"{p.name} {_sha256(p)}\n" for p in shards).encode()).hexdigest()


def _random_model(config, seed: int, dtype):
    """The model of `config` with random weights from `seed`.

    The tiny models take transformers' own initialisation (as they always have: their bytes stay the same). A
    real-shape build instead creates its tensors without initialising them and fills each with one fast
    in-place draw: normal(0, initializer_range) for matrices and embeddings, ones for norm weights, zeros for
    biases; buffers (rotary frequencies) stay as the constructors computed them."""
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.initialization import no_init_weights

    if dtype == torch.float32:
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    with no_init_weights():  # (it also skips tying the output embedding to the input one: done below)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.tie_weights()
    std = getattr(config.get_text_config(), "initializer_range", 0.02)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights appear once
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1 and ("norm" in name or ".ln_" in name):  # LayerNorm / RMSNorm scales
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=gen)
    return model.eval()


def _siglip_hub_layout(folder: Path) -> None:
    """Rename the saved vision tower's weights to the hub layout (``vision_tower.vision_model.*``).

    transformers 5 flattened SiglipVisionModel (no ``vision_model`` submodule) and maps hub names onto it when
    loading; a model made from scratch saves the flat names (its save drops that prefix mapping), which vLLM 0.32
    does not load ("no module or parameter named 'vision_tower.embeddings'"). A folder in the hub layout loads in
    both, and a model transformers loaded from it saves the hub layout again."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    renamed: dict[str, str] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
            tensors = {}
            for key in f.keys():
                new = key
                if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
                    new = "vision_tower.vision_model." + key[len("vision_tower."):]
                tensors[new] = f.get_tensor(key)
                renamed[key] = new
        save_file(tensors, str(path), metadata=metadata)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed.get(k, k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _build_into(folder: Path, seed: int, family: str, dims: Dimensions, added_tokens: tuple[str, ...],
                like: str | None = None, layers: int | None = None) -> None:
    import torch
    from transformers import GenerationConfig

    real = preset(like, layers) if like is not None else None
    tok = train_tokenizer(added_tokens, family)
    config = make_config(family, tok, dims, real)

    # The tiny models in float32 (what they always were); real shapes in bfloat16, as their hub checkpoints.
    model = _random_model(config, seed, torch.float32 if real is None else torch.bfloat16)
    model.save_pretrained(folder)
    if family == "llava_onevision":
        _siglip_hub_layout(folder)
    # Only the stop/pad tokens: no sampling defaults, so vLLM uses a request's parameters as given.
    end_of_text, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    GenerationConfig(bos_token_id=end_of_text, eos_token_id=[im_end, end_of_text],
                     pad_token_id=end_of_text).save_pretrained(folder)

    if family == "llava_onevision":
        # processor_config.json (image and video processors), tokenizer files, chat_template.jinja
        llava_onevision_processor(tok, real).save_pretrained(folder)
    else:
        tok.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
        patch = real["vision"]["patch_size"] if real is not None else PATCH_SIZE
        _write_json(folder / "preprocessor_config.json", preprocessor_config(family, patch))
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # tempfile.mkdtemp and safetensors' atomic write leave 0700/0600: make the folder readable like any other.
    umask = _current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)

    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    _write_json(folder / MARKER, {**_variant(dims, added_tokens, like, layers),
        "builder": "trainer.tiny_model",
        "builder_version": BUILDER_VERSION,
        "family": family,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": _weights_sha256(folder),
        "files": {name: (folder / name).stat().st_size for name in files},
    })


def is_complete(folder: Path, seed: int = 0, family: str = "qwen2_vl", dims: Dimensions = Dimensions(),
                added_tokens: tuple[str, ...] = (), like: str | None = None, layers: int | None = None) -> bool:
    """True when ``folder`` holds this builder version's model of this family, seed, dims and added tokens (or
    preset `like` cut to `layers`)."""
    if like is not None:
        family = PRESETS[like]["family"]
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if (marker.get("builder_version"), marker.get("family"), marker.get("seed")) != (BUILDER_VERSION, family, seed):
        return False
    if {k: v for k, v in marker.items() if k not in MARKER_FIELDS} != _variant(dims, added_tokens, like, layers):
        return False
    files = marker.get("files") or {}
    return bool(files) and all(
        (Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == size
        for name, size in files.items())


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock, so that parallel builders of the same folder build it once."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def swap_into(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` (same filesystem): renamed in, an older `out` moved aside first,
    so a reader sees the old folder or the new one, never half of one."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def build_tiny_model(out_dir: str | os.PathLike | None = None, seed: int = 0, family: str = "qwen2_vl",
                     force: bool = False, *, dims: Dimensions = Dimensions(),
                     added_tokens: tuple[str, ...] = (), like: str | None = None, layers: int | None = None) -> Path:
    """Build the tiny model into ``out_dir`` (default: :func:`default_out_dir`) unless already there; at other
    `dims`, with `added_tokens` after the tags, for a study (research/models.py); or, with `like` (a key of
    PRESETS), a random model of that real architecture's shape, its depth cut to `layers` if given (the family
    is then the preset's).

    Returns the folder's absolute path. Same arguments -> byte-identical files.
    """
    if like is not None:
        family = preset(like, layers)["family"]  # checks the name and layers
        if dims != Dimensions() or added_tokens:
            raise ValueError("a preset (like) takes no dims or added_tokens")
    elif layers is not None:
        raise ValueError("layers cuts a preset's depth: give like too")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    out = Path(out_dir if out_dir is not None else default_out_dir(family, like, layers)).absolute()
    if not force and is_complete(out, seed, family, dims, added_tokens, like, layers):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent / f".{out.name}.lock"):
        if not force and is_complete(out, seed, family, dims, added_tokens, like, layers):  # built meanwhile
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            _build_into(tmp, seed, family, dims, added_tokens, like, layers)
            swap_into(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $VRFT_HOME/models/tiny-qwen2-vl, or the family's tiny name, "
                             "or <preset>[-L<layers>]; VRFT_HOME=./.vrft)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--family", choices=FAMILIES, default=None,
                        help="the tiny model's architecture (default qwen2_vl; with --like, the preset's)")
    parser.add_argument("--like", choices=tuple(PRESETS), default=None,
                        help="random weights at a real model's dimensions and vocabulary size (bfloat16)")
    parser.add_argument("--layers", type=int, default=None,
                        help="with --like: text depth N, vision depth min(N, the real depth)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    if args.layers is not None and args.like is None:
        parser.error("--layers needs --like")
    if args.like is not None:
        if args.family is not None and args.family != PRESETS[args.like]["family"]:
            parser.error(f"--like {args.like} is of family {PRESETS[args.like]['family']}, not {args.family}")
        if args.layers is not None and args.layers < 1:
            parser.error("--layers must be at least 1")
        family = PRESETS[args.like]["family"]
    else:
        family = args.family or "qwen2_vl"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers may import DeepSpeed, which probes for GPUs

    out = Path(args.out if args.out is not None else default_out_dir(family, args.like, args.layers)).absolute()
    what = family if args.like is None else f"{args.like} ({PRESETS[args.like]['repo']}" + (
        f", {args.layers} layers)" if args.layers is not None else ")")
    if not args.force and is_complete(out, args.seed, family, like=args.like, layers=args.layers):
        print(f"{out}: up to date (builder v{BUILDER_VERSION}, {what}, seed {args.seed})")
        return 0
    start = time.monotonic()
    build_tiny_model(out, seed=args.seed, family=family, force=args.force, like=args.like, layers=args.layers)
    marker = json.loads((out / MARKER).read_text())
    print(f"{out}: ready, {what} with {marker['parameters']:,} parameters, seed {args.seed} "
          f"({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
