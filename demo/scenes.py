"""The learning demo's scenes: `synthetic`'s grounding scenes with big shapes and relations in new words.

The demo (`python -m demo`) pretrains a tiny base on 2-shape scenes whose relations are in plain words ("the red
circle left of the blue star"), then asks it about 3-shape scenes whose relations are in compass words ("the red
circle west of the blue star"), with a decoy of the target's class on the anchor's other side in 75% of them.
The base can find the shape on a named side of an anchor; it has never read the words. That is the setting where
RFT learns from rewards alone (research/results/learning.vocabulary.md).

`SceneOptions` adds two fields to `synthetic.Options` and overrides the hooks that draw them; everything else is
the product generator. With both at their defaults a row is byte for byte `synthetic.generate`'s.

    from demo.scenes import DEMO_SCENES, generate
    rows = generate("grounding", 64, seed=0, **DEMO_SCENES)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import synthetic
from synthetic import RELATIONS, Options

__all__ = ["DEMO_SCENES", "PRETRAIN_SCENES", "RELATION_WORDS", "SceneOptions", "generate"]

RELATION_WORDS = {
    "plain": RELATIONS,
    "compass": {"left": "west of", "right": "east of", "above": "north of", "below": "south of"},
}
"""How a grounding expression words each relation. ``compass`` says the same relations in words a base
pretrained on ``plain`` ones has never read: the skill is there, the vocabulary is new."""

_COMMON = {"short": True, "sizes": ((56, 56),), "noise_prob": 0.0, "shape_scale": (0.3, 0.45)}
PRETRAIN_SCENES: dict[str, Any] = {**_COMMON, "max_objects": 2}
"""The base's pretraining scenes: 56x56 images, plain grey backgrounds, 1 or 2 shapes (a grounding scene has 2)
of 0.3-0.45 of the side, relations in plain words, short answers."""
DEMO_SCENES: dict[str, Any] = {**_COMMON, "min_objects": 3, "max_objects": 3, "relation_words": "compass"}
"""The demo's few-shot task: the same images with 3 shapes (a decoy of the target's class on the anchor's other
side in 75% of them) and the relations in compass words."""


@dataclass(frozen=True)
class SceneOptions(Options):
    """`synthetic.Options` plus the shape scale and the relation words (keyword arguments of `generate`)."""

    shape_scale: tuple[float, float] | None = None
    """Side of each shape's square as a fraction (lo, hi) of the image's shorter side; None: the task's default
    (0.16-0.30 for detection and grounding, 0.35-0.70 for classification's single shape)."""
    relation_words: str = "plain"
    """Grounding: the words for the relations, a key of ``RELATION_WORDS`` ("left of", or "west of" for compass)."""

    def __post_init__(self) -> None:
        if self.shape_scale is not None:  # a list from argparse or JSON
            object.__setattr__(self, "shape_scale", tuple(float(v) for v in self.shape_scale))

    def check(self) -> "SceneOptions":
        super().check()
        if self.relation_words not in RELATION_WORDS:
            raise ValueError(f"relation_words must be one of {', '.join(RELATION_WORDS)}, got {self.relation_words!r}")
        if self.shape_scale is not None and not 0 < self.shape_scale[0] <= self.shape_scale[1] <= 0.9:
            raise ValueError("shape_scale must be (lo, hi) with 0 < lo <= hi <= 0.9")
        return self

    # the hooks of synthetic.Options

    def shape_sides(self, lo: float, hi: float) -> tuple[float, float]:
        return self.shape_scale or (lo, hi)

    def relation_phrase(self, relation: str) -> str:
        return RELATION_WORDS[self.relation_words][relation]


def generate(task: str, n: int, seed: int = 0, *, sft: bool = False, split: str = "train",
             **options: Any) -> list[dict]:
    """`synthetic.generate` with `SceneOptions`: `options` may also set ``shape_scale`` and ``relation_words``."""
    return synthetic.generate(task, n, seed, sft=sft, split=split, opts=SceneOptions(), **options)
