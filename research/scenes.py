"""The learning studies' scene options: `synthetic`'s scenes, changed through its `Options` hooks.

The product generator (`synthetic`) draws the scenes the service, the demo and the tests use. The studies in
research/results/ asked it for scenes it has no use for: a position cue in the background, a decoy beside a
second anchor, and answers that reason through the anchor first. `StudyOptions` adds them as fields to the
learning demo's `demo.scenes.SceneOptions` (bigger shapes, the relations in words a base never read: what the
headline study and the demo share) and overrides the hooks that draw them; everything else is the product's
code. With every study field at its default, a row is byte for byte the product's row.

    from research.scenes import generate
    rows = generate("grounding", 64, seed=0, short=True, sizes=((56, 56),), noise_prob=0.0,
                    shape_scale=(0.3, 0.45), min_objects=3, max_objects=3, relation_words="compass")

A row with a decoy beside a second anchor (``decoy="other_anchor"``) says "directly left of" (``relation`` is
still ``left``): in line with the anchor, see `holds_in_line`. A ``gradient`` background's name ends in
``" gradient"``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import synthetic
from demo.scenes import RELATION_WORDS, SceneOptions
from synthetic import Obj, Referent, beyond, holds, shape_box, to_space

__all__ = ["DECOYS", "GRADIENT_MAX", "IN_LINE", "RELATION_WORDS", "StudyOptions", "generate", "holds_in_line",
           "other_anchor_decoy", "position_ramp"]

DECOYS = ("opposite", "other_anchor")
IN_LINE = "directly"
"""Word before the relation when relations are in line (``decoy="other_anchor"``)."""
GRADIENT_MAX = 96
"""Largest `StudyOptions.gradient`: R - B of a background pixel stays within +-GRADIENT_MAX, below the 100 that
separates every shape colour's channels, so a background pixel never takes a shape's colour."""


@dataclass(frozen=True)
class StudyOptions(SceneOptions):
    """`demo.scenes.SceneOptions` (``shape_scale``, ``relation_words``: the relations in words a base never read,
    the eleventh try) plus the studies' scene options (keyword arguments of `generate`)."""

    gradient: int = 0
    """Amplitude (grey levels, 0..GRADIENT_MAX) of an absolute-position cue in every background: the red channel
    ramps by this much from the left edge to the right one, the blue channel from the top edge to the bottom one
    (up for dark greys, down for light ones), so a background pixel's colour tells where it is. 0 (default):
    grey backgrounds. The ramp is deterministic (no random draw), so a scene is the same with or without it
    except for its background pixels; the channel spread stays below 100, so no background pixel can equal a
    shape colour."""
    decoy: str = "opposite"
    """Grounding: where a decoy of the target's class stands. ``opposite`` (default, the product's): on the
    anchor's other side, in 75% of scenes; a position rule ("of the shapes named X, the one farthest left")
    still finds the target. ``other_anchor``: every scene has 4 or more shapes; relations are in line ("the red
    circle directly left of the blue star": left of it and overlapping its rows), and the decoy stands directly
    in the same relation to a SECOND anchor of another class (a red circle directly left of a green square).
    The decoy is farther that way than the target in half of the scenes, nearer in the other half, so only the
    anchor tells which."""
    think_anchor: bool = False
    """Grounding, with ``short=False``: the ``<think>`` part names the anchor and gives its box ("The blue star is
    at [x1, y1, x2, y2].") instead of naming where the target is. The reasoning is then a step the answer builds
    on: first find the shape the expression names, then the one beside it. The grader still scores only the
    ``<answer>`` box."""

    def check(self) -> "StudyOptions":
        super().check()
        if self.decoy not in DECOYS:
            raise ValueError(f"decoy must be one of {', '.join(DECOYS)}, got {self.decoy!r}")
        if self.in_line and self.max_objects < 4:
            raise ValueError("decoy='other_anchor' needs max_objects >= 4 (target, anchor, decoy, second anchor)")
        if self.think_anchor and self.short:
            raise ValueError("think_anchor needs short=False (the anchor's box goes in the <think> part)")
        if not 0 <= self.gradient <= GRADIENT_MAX:
            raise ValueError(f"gradient must be in [0, {GRADIENT_MAX}]")
        return self

    @property
    def in_line(self) -> bool:
        """Relations in line, and a decoy beside a second anchor."""
        return self.decoy == "other_anchor"

    # the hooks of synthetic.Options (SceneOptions draws the shape sides)

    def finish_background(self, pixels: np.ndarray, label: str, level: int) -> tuple[np.ndarray, str]:
        if not self.gradient:
            return pixels, label
        return position_ramp(pixels, self.gradient, up=level < 128), f"{label} gradient"

    def grounding_min_objects(self) -> int:
        return 4 if self.in_line else 2  # target, anchor, decoy, second anchor

    def relation_holds(self, relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
        return holds_in_line(relation, a, b) if self.in_line else holds(relation, a, b)

    def pick_referent(self, rng: random.Random, objects: list[Obj],
                      triples: list[tuple[int, int, str]]) -> Referent | None:
        if self.in_line:
            return other_anchor_decoy(rng, objects, triples)
        return super().pick_referent(rng, objects, triples)

    def relation_phrase(self, relation: str) -> str:
        words = super().relation_phrase(relation)
        return f"{IN_LINE} {words}" if self.in_line else words

    def reasoning(self, task: str, info: dict, width: int, height: int) -> str:
        if task == "grounding" and self.think_anchor:
            box = to_space(info["anchor_box"], width, height, self.coordinates)
            return f"The {info['anchor_name']} is at {box}."
        return super().reasoning(task, info, width, height)


def generate(task: str, n: int, seed: int = 0, *, sft: bool = False, split: str = "train",
             **options: Any) -> list[dict]:
    """`synthetic.generate` with `StudyOptions`: `options` may also set the study fields."""
    return synthetic.generate(task, n, seed, sft=sft, split=split, opts=StudyOptions(), **options)


def position_ramp(bg: np.ndarray, amplitude: int, up: bool) -> np.ndarray:
    """`bg` with red ramping by `amplitude` along x and blue along y (up from dark greys, down from light ones)."""
    height, width = bg.shape[:2]
    sign = 1 if up else -1
    rx = np.rint(np.linspace(0, amplitude, width)).astype(np.int16) * sign
    ry = np.rint(np.linspace(0, amplitude, height)).astype(np.int16) * sign
    out = bg.astype(np.int16)
    out[:, :, 0] += rx[None, :]
    out[:, :, 2] += ry[:, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def holds_in_line(relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether box `a` is directly `relation` of box `b`: strictly `relation` of it, and overlapping it along
    the other axis (in its rows for left / right, in its columns for above / below)."""
    lo, hi = (1, 3) if relation in ("left", "right") else (0, 2)
    return holds(relation, a, b) and a[lo] < b[hi] and b[lo] < a[hi]


def other_anchor_decoy(rng: random.Random, objects: list[Obj], triples: list[tuple[int, int, str]]) -> Referent | None:
    """A referent with a decoy and a second anchor, in-line relations, or None when the layout allows none: the
    decoy, drawn as the target's shape, is directly `rel` of the second anchor and not of the first. A fair coin
    says whether the decoy stands farther `rel` than the target or not (when the layout allows both), so that no
    rule on the target class's positions alone finds the target."""
    picks: dict[bool, list] = {True: [], False: []}
    for t, a, rel in triples:
        for d in range(len(objects)):
            if d in (t, a):
                continue
            box = shape_box(objects[t].shape, objects[d].region)
            if holds_in_line(rel, box, objects[a].box):
                continue
            picks[beyond(rel, box, objects[t].box)] += [
                (t, a, rel, d, s) for s in range(len(objects))
                if s not in (t, a, d) and holds_in_line(rel, box, objects[s].box)]
    farther = rng.random() < 0.5
    pool = picks[farther] or picks[not farther]
    if not pool:
        return None
    t, a, rel, d, s = rng.choice(pool)
    return Referent(t, a, rel, d, (s,))
