"""The studies' model sizes, with the demo's number tokens, built by the product's `demo.base.build_init`
(`trainer.tiny_model.build_tiny_model`).

The product needs the tiny size. The learning studies also tried larger ones (`small`, `base`). The vocabulary
with one token for each integer 0..999 (``number_tokens``, `demo.base.NUMBER_TOKENS`) began here and is now the
learning demo's: a coordinate is then one token instead of one token a digit (Llama 3 splits numbers in runs of
up to 3 digits; PaliGemma has location tokens), so a small model predicts a box coordinate as one choice instead
of a digit decomposition.
"""

from __future__ import annotations

import os
from pathlib import Path

from demo.base import NUMBER_TOKENS, build_init
from trainer.tiny_model import Dimensions

__all__ = ["NUMBER_TOKENS", "SIZES", "build_base"]

SIZES = {
    "tiny": Dimensions(),
    "small": Dimensions(text_hidden=256, text_layers=4, text_heads=8, text_kv_heads=2, text_intermediate=512,
                        vision_depth=4, vision_embed=128, vision_heads=4),
    "base": Dimensions(text_hidden=384, text_layers=6, text_heads=12, text_kv_heads=4, text_intermediate=1024,
                       vision_depth=6, vision_embed=192, vision_heads=6),
}
"""Model sizes by name; each keeps the tiny model's head size (32), so vLLM's CPU backend loads it."""


def build_base(out_dir: str | os.PathLike, seed: int = 0, family: str = "qwen2_vl", size: str = "tiny",
               number_tokens: bool = False, force: bool = False) -> Path:
    """A model of `family` at size `size` (a key of SIZES) with random weights from `seed`, in `out_dir`
    (returned, absolute); what `trainer.tiny_model` builds when size is tiny and there are no number tokens."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {tuple(SIZES)}")
    return build_init(out_dir, seed=seed, family=family, number_tokens=number_tokens, dims=SIZES[size], force=force)
