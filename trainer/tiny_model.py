"""Build a tiny Qwen-VL-family model locally, with random weights, as a normal Hugging Face folder.

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

The folder is what a hub checkout of Qwen/Qwen2-VL-2B-Instruct looks like (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja,
preprocessor_config.json): whatever loads this loads a real model given by path, and the other way round.

Usage::

    python -m trainer.tiny_model [--out DIR] [--seed 0] [--family qwen2_vl] [--force]

The default output is ``$VRFT_HOME/models/tiny-qwen2-vl`` (``VRFT_HOME`` defaults to ``./.vrft``). The
folder is written atomically (built in a temporary folder beside it, then renamed) and carries a marker
file, ``vrft_tiny_model.json``; a second call with the same builder version, family and seed finds it
complete and returns at once.
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
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
DEFAULT_NAMES = {"qwen2_vl": MODEL_NAME, "qwen2_5_vl": "tiny-qwen2.5-vl", "qwen3_vl": "tiny-qwen3-vl"}

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


def default_out_dir(family: str = "qwen2_vl") -> Path:
    """``$VRFT_HOME/models/<name>``, with ``VRFT_HOME`` defaulting to ``./.vrft``."""
    return Path(os.environ.get("VRFT_HOME", ".vrft")) / "models" / DEFAULT_NAMES[family]


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


def train_tokenizer(added_tokens: tuple[str, ...] = ()):
    """Byte-level BPE with the Qwen2 pipeline, wrapped as a ``Qwen2Tokenizer`` with Qwen2-VL's tokens.

    `added_tokens`: plain tokens added after the tags, in order (none for the tiny model)."""
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
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS}, replace_extra_special_tokens=True)
    tok.add_tokens(TAG_TOKENS, special_tokens=False)
    if added_tokens:
        tok.add_tokens(list(added_tokens), special_tokens=False)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"  # as in Qwen2-VL-*-Instruct
    expected = list(range(len(state["vocab"]), len(state["vocab"]) + len(SPECIAL_TOKENS) + len(TAG_TOKENS)))
    if tok.convert_tokens_to_ids(SPECIAL_TOKENS + TAG_TOKENS) != expected:
        raise RuntimeError("special tokens did not land at the end of the vocabulary in order")
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 32768
    return tok


# ----------------------------------------------------------------------------------------------- config

def make_config(family: str, tok, dims: Dimensions = Dimensions()):
    """The architecture's config at `dims`; token ids taken from the tokenizer."""
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
        tie_word_embeddings=False,
        dtype="float32",
    )
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=d["vision_depth"], embed_dim=d["vision_embed"], hidden_size=d["text_hidden"],
                      num_heads=d["vision_heads"],
                      mlp_ratio=2, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
                      temporal_patch_size=TEMPORAL_PATCH, in_channels=3)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=d["vision_depth"], hidden_size=d["vision_embed"], intermediate_size=2 * d["vision_embed"],
                      num_heads=d["vision_heads"], out_hidden_size=d["text_hidden"], patch_size=PATCH_SIZE,
                      spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH, in_channels=3,
                      window_size=112, fullatt_block_indexes=[d["vision_depth"] - 1], tokens_per_second=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
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
        text = {**text, "head_dim": d["text_hidden"] // d["text_heads"],
                "rope_parameters": {**text["rope_parameters"], "mrope_interleaved": True}}
        text.pop("max_window_layers"), text.pop("use_sliding_window")
        return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def preprocessor_config(family: str) -> dict:
    """What the hub's Qwen2-VL ``preprocessor_config.json`` holds, with small min/max pixels."""
    return {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH_SIZE,
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


def _variant(dims: Dimensions, added_tokens: tuple[str, ...]) -> dict:
    """What the marker adds for a model other than the tiny one (nothing for it: its marker is as it was)."""
    out: dict = {} if dims == Dimensions() else {"dimensions": asdict(dims)}
    if added_tokens:
        digest = hashlib.sha256("\n".join(added_tokens).encode()).hexdigest()
        out["added_tokens"] = {"count": len(added_tokens), "sha256": digest}
    return out


def _build_into(folder: Path, seed: int, family: str, dims: Dimensions, added_tokens: tuple[str, ...]) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    tok = train_tokenizer(added_tokens)
    config = make_config(family, tok, dims)

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    model.save_pretrained(folder)
    # Only the stop/pad tokens: no sampling defaults, so vLLM uses a request's parameters as given.
    end_of_text, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    GenerationConfig(bos_token_id=end_of_text, eos_token_id=[im_end, end_of_text],
                     pad_token_id=end_of_text).save_pretrained(folder)

    tok.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    _write_json(folder / "preprocessor_config.json", preprocessor_config(family))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # tempfile.mkdtemp and safetensors' atomic write leave 0700/0600: make the folder readable like any other.
    umask = _current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)

    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    _write_json(folder / MARKER, {**_variant(dims, added_tokens),
        "builder": "trainer.tiny_model",
        "builder_version": BUILDER_VERSION,
        "family": family,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": _sha256(folder / "model.safetensors"),
        "files": {name: (folder / name).stat().st_size for name in files},
    })


def is_complete(folder: Path, seed: int = 0, family: str = "qwen2_vl", dims: Dimensions = Dimensions(),
                added_tokens: tuple[str, ...] = ()) -> bool:
    """True when ``folder`` holds this builder version's model of this family, seed, dims and added tokens."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if (marker.get("builder_version"), marker.get("family"), marker.get("seed")) != (BUILDER_VERSION, family, seed):
        return False
    if {k: v for k, v in marker.items() if k not in MARKER_FIELDS} != _variant(dims, added_tokens):
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
                     added_tokens: tuple[str, ...] = ()) -> Path:
    """Build the tiny model into ``out_dir`` (default: :func:`default_out_dir`) unless already there; at other
    `dims`, with `added_tokens` after the tags, for a study (research/models.py).

    Returns the folder's absolute path. Same arguments -> byte-identical files.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    out = Path(out_dir if out_dir is not None else default_out_dir(family)).absolute()
    if not force and is_complete(out, seed, family, dims, added_tokens):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent / f".{out.name}.lock"):
        if not force and is_complete(out, seed, family, dims, added_tokens):  # another process built it meanwhile
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            _build_into(tmp, seed, family, dims, added_tokens)
            swap_into(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $VRFT_HOME/models/tiny-qwen2-vl, VRFT_HOME=./.vrft)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers may import DeepSpeed, which probes for GPUs

    out = Path(args.out if args.out is not None else default_out_dir(args.family)).absolute()
    if not args.force and is_complete(out, args.seed, args.family):
        print(f"{out}: up to date (builder v{BUILDER_VERSION}, {args.family}, seed {args.seed})")
        return 0
    start = time.monotonic()
    build_tiny_model(out, seed=args.seed, family=args.family, force=args.force)
    marker = json.loads((out / MARKER).read_text())
    print(f"{out}: ready, {args.family} with {marker['parameters']:,} parameters, seed {args.seed} "
          f"({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
