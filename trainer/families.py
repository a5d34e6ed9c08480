"""Model families: everything the trainer knows about an architecture, in one place, keyed by `config.model_type`.

A family says which classes it loads, where its vision tower and projector are (for `freeze_vision` and to keep
LoRA out of them), which tokens are image placeholders (never sampled), how prompt position ids are built (plain
RoPE or Qwen's M-RoPE, through public transformers API only), the processor's pixel limits, the box coordinates
the model was trained to answer in (the IoU grader's `input_format: "auto"`), KV-cache bytes per token and the
longest context. An unknown `model_type` gets the generic family when it can (a `vision_config`, a class that
`AutoModelForImageTextToText` loads, 1-D positions), and `UnsupportedModel` with a reason otherwise.

Torch-free at import: the API imports this module to validate a model at job creation (a config.json dict).
The trainer passes transformers config objects as well; both are read the same way.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of Llama/Qwen2-style decoders: LoRA's default targets."""
GENERIC_VISION_MODULES = ("visual", "vision_tower", "vision_model")
GENERIC_PROJECTOR_MODULES = ("multi_modal_projector",)

NORM1000 = {"box_format": "xyxy", "coordinates": "norm1000"}
NORM1 = {"box_format": "xyxy", "coordinates": "norm1"}


class UnsupportedModel(ValueError):
    """The config holds no vision-language model the trainer supports; `reason` says why, for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _get(config: Any, key: str, default: Any = None) -> Any:
    """`key` of a config.json dict or of a transformers config object."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _text(config: Any) -> Any:
    """The language model's part: `text_config` (transformers 5, LLaVA) or the top level (hub Qwen2-VL)."""
    return _get(config, "text_config") or config


# ----------------------------------------------------------------------------------------- position ids

def positions_1d(model, ids, att, mm: dict):
    """[B, P] plain RoPE positions: each token's index among its row's unpadded tokens (padding at 0), as
    `generate` builds them."""
    pos = att.long().cumsum(-1) - 1
    return pos.masked_fill(att == 0, 0)


_MROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def positions_mrope(model, ids, att, mm: dict):
    """[4, B, P] Qwen2-VL-style M-RoPE positions: the text row (1-D, what the attention mask is built from),
    then the temporal / height / width rows of `get_rope_index` (text tokens share one index in all three)."""
    import torch

    text = positions_1d(model, ids, att, mm)
    if mm.get("mm_token_type_ids") is not None and (mm.get("image_grid_thw") is not None
                                                    or mm.get("video_grid_thw") is not None):
        inputs = {k: mm[k] for k in _MROPE_INPUTS if mm.get(k) is not None}
        rows, _ = _backbone(model).get_rope_index(ids, attention_mask=att, **inputs)  # [3, B, P]
    else:
        rows = text.unsqueeze(0).expand(3, -1, -1)
    return torch.cat([text[None], rows.to(text.dtype)], dim=0)


def _backbone(model):
    """The transformers base model (`XModel`, which holds get_rope_index) under DeepSpeed and peft wrappers."""
    model = getattr(model, "module", model)  # a DeepSpeed engine
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model.base_model


def next_positions(last, steps):
    """Positions of the tokens after a prompt: its last position ([B, 1] or [4, B, 1]) plus steps [T] (1, 2, ...):
    every row, M-RoPE's included, advances by one per generated token."""
    return last + steps


# --------------------------------------------------------------------------------------------- the family

def standard_kv_bytes(config: Any, dtype_bytes: int) -> int:
    """2 (K and V) x layers x KV heads x head size x bytes, from the language model's config."""
    t = _text(config)
    heads = _get(t, "num_attention_heads")
    kv_heads = _get(t, "num_key_value_heads") or heads
    head_dim = _get(t, "head_dim") or _get(t, "hidden_size") // heads
    return 2 * _get(t, "num_hidden_layers") * kv_heads * head_dim * dtype_bytes


# ---------------------------------------------------------------- vision parameters (the memory plan's)

def _first(d: dict, *keys: str, default: Any = None) -> Any:
    """The first of `keys` that `d` sets (configs name one width differently by family)."""
    return next((d[k] for k in keys if d.get(k) is not None), default)


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _patch_inputs(v: dict) -> int:
    """Values in one patch: channels x temporal patch x patch x patch (Qwen's Conv3d embedding)."""
    channels = _first(v, "in_channels", "in_chans", default=3)
    return channels * v.get("temporal_patch_size", 2) * v.get("patch_size", 14) ** 2


def qwen2_vl_vision_parameters(config: dict) -> int:
    """Qwen2-VL's tower: Conv3d patch embedding (no bias), LayerNorm/QuickGELU blocks, the 2x2 merger."""
    v, text_h = config["vision_config"], _text(config)["hidden_size"]
    m2 = v.get("spatial_merge_size", 2) ** 2
    d = _first(v, "embed_dim", default=1280)
    out = _first(v, "hidden_size", default=text_h)  # Qwen2-VL's vision "hidden_size" is the merger's output
    hidden_mlp = int(d * v.get("mlp_ratio", 4))
    block = (2 * 2 * d  # norm1, norm2: LayerNorm weight + bias
             + _linear(d, 3 * d) + _linear(d, d)  # qkv, proj
             + _linear(d, hidden_mlp) + _linear(hidden_mlp, d))  # fc1, fc2 (QuickGELU)
    merger = 2 * d + _linear(d * m2, d * m2) + _linear(d * m2, out)  # ln_q (LayerNorm), 2-layer MLP
    return _patch_inputs(v) * d + v["depth"] * block + merger


def qwen2_5_vl_vision_parameters(config: dict) -> int:
    """Qwen2.5-VL's tower: RMSNorm/SwiGLU blocks (windowed attention adds no weights), the 2x2 merger."""
    v, text_h = config["vision_config"], _text(config)["hidden_size"]
    m2 = v.get("spatial_merge_size", 2) ** 2
    d, hi = v["hidden_size"], v["intermediate_size"]
    out = _first(v, "out_hidden_size", default=text_h)
    block = (2 * d  # norm1, norm2: RMSNorm
             + _linear(d, 3 * d) + _linear(d, d)  # qkv, proj
             + 2 * _linear(d, hi) + _linear(hi, d))  # SwiGLU gate, up, down, with biases
    merger = d + _linear(d * m2, d * m2) + _linear(d * m2, out)  # ln_q (RMSNorm), 2-layer MLP
    return _patch_inputs(v) * d + v["depth"] * block + merger


def qwen3_vl_vision_parameters(config: dict) -> int:
    """Qwen3-VL's tower: a biased Conv3d embedding, learnt positions, LayerNorm/GELU blocks, the merger and
    one DeepStack merger per tapped block."""
    v, text_h = config["vision_config"], _text(config)["hidden_size"]
    m2 = v.get("spatial_merge_size", 2) ** 2
    d, hi = v["hidden_size"], v["intermediate_size"]
    out = _first(v, "out_hidden_size", default=text_h)
    block = (2 * 2 * d + _linear(d, 3 * d) + _linear(d, d)  # LayerNorms, qkv, proj
             + _linear(d, hi) + _linear(hi, d))  # fc1, fc2 (GELU)
    merger = 2 * d + _linear(d * m2, d * m2) + _linear(d * m2, out)  # norm (LayerNorm), fc1, fc2
    # DeepStack: one more merger per tapped block, normalising after the 2x2 shuffle (d * m2 wide)
    deepstack = len(v.get("deepstack_visual_indexes", [])) * (2 * d * m2 + _linear(d * m2, d * m2)
                                                              + _linear(d * m2, out))
    pos = v.get("num_position_embeddings", 0) * d  # learnt absolute position embedding
    return _linear(_patch_inputs(v), d) + pos + v["depth"] * block + merger + deepstack


def vit_vision_parameters(config: dict) -> int:
    """A SigLIP / CLIP-style ViT and a 2-layer projector: exact for LLaVA-OneVision's SigLIP (with its learnt
    `image_newline`, see llava_vision_parameters), an approximation for an unknown family."""
    v, text_h = config["vision_config"], _text(config)["hidden_size"]
    patch = v.get("patch_size", 14)
    d = _first(v, "hidden_size", "embed_dim", default=1024)
    hi = _first(v, "intermediate_size", default=4 * d)
    depth = _first(v, "num_hidden_layers", "depth", default=24)
    image = _first(v, "image_size", default=384)
    block = (2 * 2 * d  # layer_norm1, layer_norm2 (weight + bias)
             + 4 * _linear(d, d) + _linear(d, hi) + _linear(hi, d))  # q, k, v, out; fc1, fc2
    tower = (_linear(_first(v, "num_channels", default=3) * patch * patch, d)  # patch conv
             + (image // patch) ** 2 * d + depth * block + 2 * d)  # position embedding, blocks, post_layernorm
    if str(v.get("model_type", "")).startswith("siglip") and v.get("vision_use_head", True) is not False:
        # SigLIP's attention-pooling head (built unless vision_use_head is false): probe, attention, norm, MLP
        tower += d + _linear(d, 3 * d) + _linear(d, d) + 2 * d + _linear(d, hi) + _linear(hi, d)
    return tower + _linear(d, text_h) + _linear(text_h, text_h)  # projector: linear_1, GELU, linear_2


def llava_vision_parameters(config: dict) -> int:
    """The ViT and projector plus `image_newline`, the learnt row separator (one text-width vector)."""
    return vit_vision_parameters(config) + _text(config)["hidden_size"]


def merged_patch_tokens(config: dict, height: int, width: int) -> int:
    """Qwen-VL: the image resized to multiples of patch x merge, merge^2 patches merged into one token (one token
    per 28x28 pixels at patch 14, merge 2)."""
    v = config.get("vision_config") or {}
    unit = v.get("patch_size", 14) * v.get("spatial_merge_size", 2)
    return max(1, round(height / unit)) * max(1, round(width / unit))


def tiled_patch_tokens(config: dict, height: int, width: int) -> int:
    """LLaVA-style anyres (approximate): one token per patch of each image_size tile, a base tile plus the grid."""
    v = config.get("vision_config") or {}
    side, patch = v.get("image_size", 384), v.get("patch_size", 14)
    tiles = 1 + math.ceil(height / side) * math.ceil(width / side)
    return tiles * (side // patch) ** 2


def image_tokens_by_config(config: dict, height: int, width: int) -> int:
    """A family we know nothing of: tiles when its vision config names a tile size and no merge, else merged
    patches."""
    v = config.get("vision_config") or {}
    if "spatial_merge_size" not in v and v.get("image_size"):
        return tiled_patch_tokens(config, height, width)
    return merged_patch_tokens(config, height, width)


@dataclass(frozen=True)
class PixelLimits:
    """Smart-resize limits of a Qwen-style processor: sides multiples of `factor` (patch x merge), the area
    between min_pixels and max_pixels (the hub processor's defaults; a model folder may set its own)."""

    min_pixels: int
    max_pixels: int
    factor: int


@dataclass(frozen=True)
class Family:
    """What the trainer needs to know about one architecture family."""

    name: str
    """the config's model_type (or "generic" / "causal_lm")"""
    architectures: tuple[str, ...]
    """the transformers classes (config `architectures`) it loads; empty: any AutoModelForImageTextToText class"""
    vision_modules: tuple[str, ...]
    """dotted-name parts of the vision tower's modules"""
    projector_modules: tuple[str, ...] = ()
    """dotted-name parts of the vision-to-language projector (frozen with the tower; never LoRA targets)"""
    lora_targets: tuple[str, ...] = LM_PROJECTIONS
    """LoRA's default target module names (in the language model)"""
    placeholder_tokens: tuple[str, ...] | None = None
    """config attributes (top level or text_config) holding the placeholder token ids never sampled; None: every
    `*image*`/`*video*` `_token_id` or `_token_index` attribute"""
    position_ids: Callable = positions_1d
    """(model, ids [B, P], att [B, P], mm) -> the prompt's position ids, [B, P] or [4, B, P]"""
    decode_positions: Callable = next_positions
    """(last prompt position, steps [T]) -> the positions of the completion tokens"""
    pixels: PixelLimits | None = None
    """processor pixel limits (None: not a smart-resize processor)"""
    chat_template: str = ""
    """quirks of the family's chat template the data pipeline must respect"""
    box_convention: dict = field(default_factory=lambda: dict(NORM1000))
    """the IoU grader's `input_format` for the boxes the family was trained to answer in"""
    kv_bytes: Callable = standard_kv_bytes
    """(config, dtype_bytes) -> KV-cache bytes per token"""
    vision_parameters: Callable = vit_vision_parameters
    """(config.json dict) -> parameters of the vision tower and projector, for the memory plan"""
    image_tokens: Callable = image_tokens_by_config
    """(config.json dict, height, width) -> language-model tokens of one image, for the memory plan"""
    vision: bool = True
    """False only for the plain causal-LM family"""

    def is_vision_module(self, name: str) -> bool:
        """Whether a module or parameter name lies in the vision tower or the projector."""
        parts = self.vision_modules + self.projector_modules
        return any(p in parts for p in name.split("."))

    def kv_bytes_per_token(self, config: Any, dtype_bytes: int) -> int:
        return int(self.kv_bytes(config, dtype_bytes))

    def max_positions(self, config: Any) -> int:
        """The longest sequence the language model takes (max_position_embeddings; 32768 when not given)."""
        return int(_get(_text(config), "max_position_embeddings") or 32768)

    def placeholder_ids(self, config: Any) -> list[int]:
        """The image/video placeholder token ids of `config` (sorted; none for a text-only model)."""
        ids = set()
        for cfg in (config, _get(config, "text_config")):
            if cfg is None:
                continue
            if self.placeholder_tokens is not None:
                values = [_get(cfg, k) for k in self.placeholder_tokens]
            else:
                items = cfg.items() if isinstance(cfg, dict) else vars(cfg).items()
                values = [v for k, v in items if k.endswith(("_token_id", "_token_index"))
                          and ("image" in k or "video" in k)]
            ids.update(v for v in values if isinstance(v, int) and not isinstance(v, bool))
        return sorted(ids)

    def box_convention_for(self, image_processor: Any = None) -> dict:
        """`box_convention`, its smart-resize limits (when it has some) taken from the model's own processor."""
        conv = {**self.box_convention}
        if "resize" not in conv:
            return conv
        resize = {**conv["resize"]}
        size = getattr(image_processor, "size", None)  # a dict or transformers' SizeDict
        lo = _get(size, "shortest_edge") or getattr(image_processor, "min_pixels", None)
        hi = _get(size, "longest_edge") or getattr(image_processor, "max_pixels", None)
        patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
        if lo and hi:
            resize.update(min_pixels=int(lo), max_pixels=int(hi))
        if patch and merge:
            resize["factor"] = int(patch) * int(merge)
        conv["resize"] = resize
        return conv


_QWEN_PLACEHOLDERS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_QWEN_TEMPLATE = ("ChatML with <|vision_start|><|image_pad|><|vision_end|> per image, expanded by the processor "
                  "to the image's tokens; a default system prompt when the first message is not one")
_QWEN2_PIXELS = PixelLimits(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, factor=28)  # 14-pixel patches, 2x2 merge

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("qwen2_vl", ("Qwen2VLForConditionalGeneration",), ("visual",), ("merger",),
           placeholder_tokens=_QWEN_PLACEHOLDERS, position_ids=positions_mrope, pixels=_QWEN2_PIXELS,
           chat_template=_QWEN_TEMPLATE, box_convention=dict(NORM1000),
           vision_parameters=qwen2_vl_vision_parameters, image_tokens=merged_patch_tokens),
    # Qwen2.5-VL answers in absolute pixels of the image it saw, i.e. after smart_resize
    Family("qwen2_5_vl", ("Qwen2_5_VLForConditionalGeneration",), ("visual",), ("merger",),
           placeholder_tokens=_QWEN_PLACEHOLDERS, position_ids=positions_mrope, pixels=_QWEN2_PIXELS,
           chat_template=_QWEN_TEMPLATE,
           box_convention={"box_format": "xyxy", "coordinates": "pixel",
                           "resize": {"factor": _QWEN2_PIXELS.factor, "min_pixels": _QWEN2_PIXELS.min_pixels,
                                      "max_pixels": _QWEN2_PIXELS.max_pixels}},
           vision_parameters=qwen2_5_vl_vision_parameters, image_tokens=merged_patch_tokens),
    # Qwen3-VL went back to relative 0..1000 coordinates; 16-pixel patches, 2x2 merge
    Family("qwen3_vl", ("Qwen3VLForConditionalGeneration",), ("visual",), ("merger", "deepstack_merger_list"),
           placeholder_tokens=_QWEN_PLACEHOLDERS, position_ids=positions_mrope,
           pixels=PixelLimits(min_pixels=65536, max_pixels=16777216, factor=32),
           chat_template=_QWEN_TEMPLATE + " (none for Qwen3-VL)", box_convention=dict(NORM1000),
           vision_parameters=qwen3_vl_vision_parameters, image_tokens=merged_patch_tokens),
    # SigLIP tower + 2-layer MLP projector + Qwen2; anyres tiles, not smart_resize. `image_newline` (the
    # learnt row separator between image features) sits beside the projector and trains with it.
    Family("llava_onevision", ("LlavaOnevisionForConditionalGeneration",), ("vision_tower",),
           ("multi_modal_projector", "image_newline"),
           placeholder_tokens=("image_token_index", "video_token_index", "image_token_id", "video_token_id"),
           chat_template=("llava-hf's template writes 'role ' + '\\n' before a turn's text, so an assistant turn "
                          "does not start with the generation prompt: label masking needs a prefix-stable one "
                          "(ChatML, images first)"),
           box_convention=dict(NORM1), vision_parameters=llava_vision_parameters, image_tokens=tiled_patch_tokens),
)}

GENERIC = Family("generic", (), GENERIC_VISION_MODULES, GENERIC_PROJECTOR_MODULES)
"""An unknown vision-language model_type that AutoModelForImageTextToText loads, with 1-D RoPE."""
CAUSAL_LM = Family("causal_lm", (), (), (), placeholder_tokens=(), vision=False)
"""A plain causal LM (no vision_config): the trainer takes it, the API's model check does not."""


@functools.lru_cache(maxsize=1)
def image_text_to_text_classes() -> dict[str, str]:
    """transformers' model_type -> class name table of AutoModelForImageTextToText, read from its source
    (importing the module imports torch, ~10 s; the API checks models without torch)."""
    spec = importlib.util.find_spec("transformers.models.auto.modeling_auto")
    if spec is None or spec.origin is None:
        return {}
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"):
            pairs = ast.literal_eval(node.value.args[0])  # OrderedDict([(model_type, class name), ...])
            return {k: v for k, v in pairs if isinstance(v, str)}
    return {}


def family_of(config: Any, *, text_ok: bool = False) -> Family:
    """The family of a config.json dict (or transformers config). Raises UnsupportedModel when it holds no
    vision-language model the trainer supports; `text_ok`: a config without vision_config is CAUSAL_LM."""
    if not isinstance(config, dict) and not hasattr(config, "model_type"):
        raise UnsupportedModel("the model's config.json is not a JSON object")
    model_type = _get(config, "model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UnsupportedModel("the model's config.json has no model_type: it is not a transformers model folder")
    architectures = list(_get(config, "architectures") or [])
    if _get(config, "vision_config") is None:
        if text_ok:
            return CAUSAL_LM
        raise UnsupportedModel(f"model_type '{model_type}' is a text-only model (its config has no vision_config); "
                               "fine-tuning here needs a vision-language model")
    family = FAMILIES.get(model_type)
    if family is not None:
        unknown = [a for a in architectures if a not in family.architectures]
        if unknown:
            raise UnsupportedModel(f"architecture {unknown[0]} is not one the trainer loads for model_type "
                                   f"'{model_type}' (it loads {', '.join(family.architectures)})")
        return family
    rope = _get(_text(config), "rope_parameters") or _get(_text(config), "rope_scaling") or {}
    if isinstance(rope, dict) and "mrope_section" in rope:
        raise UnsupportedModel(f"model_type '{model_type}' uses multimodal rotary positions (mrope_section), "
                               "which the generic adapter cannot build; it needs an entry in trainer/families.py")
    classes = image_text_to_text_classes()
    if model_type not in classes:
        raise UnsupportedModel(f"model_type '{model_type}' does not load with transformers' "
                               "AutoModelForImageTextToText, so the trainer cannot train it")
    unknown = [a for a in architectures if a not in classes.values()]
    if unknown:
        raise UnsupportedModel(f"architecture {unknown[0]} is not an image-text-to-text class of transformers "
                               f"(model_type '{model_type}' loads {classes[model_type]})")
    return replace(GENERIC, name=model_type, architectures=(classes[model_type],))
