"""Synthetic Visual-RFT tasks: coloured shapes on a background, with exact pixel boxes.

Three tasks, shaped like the Visual-RFT paper's (arXiv 2503.01785) and emitted as OpenAI fine-tuning JSONL:

* ``detection``: "Detect all red circles ..." -> ``[{'Position': [x1, y1, x2, y2], 'Confidence': c}, ...]``
  or ``No Objects``; graded by the ``iou`` grader (detection mode, Visual-RFT's IoU + confidence reward)
  and the ``format`` grader inside a ``multi`` grader.
* ``grounding``: "the box of the red circle left of the blue square" -> ``[x1, y1, x2, y2]``; exactly one
  object fits the sentence (checked by `referents`); ``iou`` (grounding mode) + ``format``.
* ``classification``: one shape; "which colour and shape is this?" -> ``dark red circle``. Fine-grained:
  the palette holds near colours (red / dark red, green / dark green, blue / light blue);
  ``classification`` + ``format``.

API::

    rows = generate("detection", 64, seed=0)                  # RFT rows (last message: the user's)
    rows = generate("detection", 64, seed=0, sft=True)        # + the assistant's reference answer
    rows = generate("grounding", 64, seed=0, dpo=True)        # DPO preference rows: a right box against a wrong one
    spec = grader_spec("detection")                           # a grader dict for method.reinforcement.grader
    paths = write_task("out/", "detection", 64, seed=0)       # JSONL + grader JSON files
    python -m synthetic --task detection --n 64 --seed 0 --out DIR [--sft | --dpo] [--short] [--coordinates norm1000]

Everything is a function of (task, split, seed, row index, options): row i of a split is the same whatever
``n`` is, the bytes are identical from run to run, and ``split`` names independent streams (train / valid).

Images and boxes
----------------
Images are 112..224 pixels a side, every side a multiple of 28, with 28*28*16 .. 28*28*64 pixels: Qwen2-VL's
``smart_resize`` (factor 28, the tiny model's 28*28*4 .. 28*28*64 pixels and the real models' defaults)
leaves them unchanged, so pixel coordinates of the image as given are also those of the image the model
sees (Qwen2.5-VL's absolute coordinates). Backgrounds are plain greys or grey noise (equal R, G and B, so
they never take a shape's colour); shapes are drawn without anti-aliasing in one flat colour.

A box is ``[x1, y1, x2, y2]`` in pixels, the tight box of the pixels the shape painted, with exclusive
ends: the shape covers columns x1 .. x2-1 and rows y1 .. y2-1 (so x2 - x1 is its width in pixels). By
default shapes do not overlap (their squares keep a 2-pixel gap); ``overlap=0.1`` allows squares with IoU
up to 0.1, and a box is then the whole shape's, including any part a later shape hides.

Row fields (every row)
----------------------
``messages``
    ``[{"role": "system", "content": str}, {"role": "user", "content": [{"type": "image_url", "image_url":
    {"url": "data:image/png;base64,..."}}, {"type": "text", "text": prompt}]}]``; SFT rows add
    ``{"role": "assistant", "content": reference answer}``. ``system=None`` drops the system message.
``id``            ``"{task}-{split}-{seed}-{index:05d}"``.
``task``          ``"detection" | "grounding" | "classification"``.
``width``, ``height``, ``image_size``   the image size in pixels; ``image_size = [width, height]`` (what the
    ``iou`` grader reads when it must convert between pixel and normalised coordinates).
``coordinates``   the space the prompt asks boxes in: ``pixel`` (default), ``norm1000`` (0..1000 integers, as
    Qwen2-VL / Visual-RFT), ``norm1`` (0..1, three decimals).
``boxes``         reference boxes, ``[[x1, y1, x2, y2], ...]``, ALWAYS in pixels of the image (the grader's
    ``reference_format``); detection: every object of the category (may be ``[]``); grounding: one box;
    classification: the one shape's box.
``solution``      the reference answer, the text that goes inside ``<answer></answer>``, in ``coordinates``.
``objects``       the whole scene: ``[{"colour": str, "shape": str, "box": [x1, y1, x2, y2]}, ...]`` in
    drawing order.
``background``    ``"{grey name}"`` or ``"{grey name} noise"``.
Detection adds ``category`` (``"red circle"``); grounding adds ``expression`` (``"the red circle left of the
blue square"``), ``target`` / ``anchor`` (indices into ``objects``) and ``relation`` (``left`` / ``right`` /
``above`` / ``below``); classification adds ``label`` (``"dark red circle"``), ``colour`` and ``shape``.

Styles
------
Default: Visual-RFT's ``<think> ... </think><answer> ... </answer>``; format pattern
``<think>.*?</think>\\s*<answer>\\s*\\S.*?</answer>`` (Visual-RFT's, with a non-empty answer). ``short=True``
(for the tiny model's small context) asks for ``<answer> ... </answer>`` alone; its format pattern is
``<answer>\\s*\\S.*?</answer>``.

Graders (`grader_spec`)
-----------------------
A ``multi`` grader ``{"task": <iou or classification grader>, "format": <format grader>}`` whose
``calculate_output`` weighs them by ``format_weight`` (default: Visual-RFT's equal weights of its reward terms,
scaled to [0, 1]):

* detection: ``iou`` in detection mode with ``confidence_weight`` 0.5 (its reward is (IoU term + confidence
  term) / 2) -> ``(2 * task + format) / 3`` = (R_IoU + R_conf + R_format) / 3;
* grounding: ``iou`` in grounding mode (IoU of the one box) -> ``(task + format) / 2``;
* classification: ``classification`` on ``{{item.label}}`` (exact label after normalisation; an empty answer
  scores 0) -> ``(task + format) / 2``.

The ``iou`` grader reads ``{{sample.answer}}`` (the text inside the answer tags) in the prompt's
``coordinates`` and ``{{item.boxes}}`` in pixels; the format grader reads ``{{sample.output_text}}``.

Hooks
-----
`Options` ends with methods a study overrides in a subclass to change a scene (shape sizes, background, how a
grounding scene picks and words its referent, the ``<think>`` text); their defaults draw the scenes above. The
learning studies' options are such a subclass (research/scenes.py); pass one as ``opts=`` to `generate`.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

TASKS = ("detection", "grounding", "classification")
COORDINATES = ("pixel", "norm1000", "norm1")

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "cross")
PLURALS = {"cross": "crosses"}

# Saturated colours (max - min channel >= 100): a grey background pixel can never equal one of them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "dark red": (130, 0, 0),
    "orange": (250, 140, 0),
    "yellow": (240, 220, 20),
    "green": (40, 185, 40),
    "dark green": (0, 100, 0),
    "blue": (30, 70, 230),
    "light blue": (110, 180, 250),
    "purple": (135, 40, 195),
    "pink": (250, 120, 190),
    "brown": (140, 85, 30),
    "cyan": (0, 200, 215),
}

BACKGROUNDS: dict[str, int] = {"white": 250, "light gray": 210, "gray": 128, "dark gray": 60, "black": 8}
"""Grey levels; noisy backgrounds add per-pixel noise of +-NOISE_AMPLITUDE, equal on R, G and B."""
NOISE_AMPLITUDE = 14

SIZES: tuple[tuple[int, int], ...] = (
    (112, 112), (140, 140), (168, 168), (196, 196), (224, 224),
    (168, 112), (112, 168), (224, 168), (168, 224), (196, 140), (140, 196),
)
"""(width, height): sides multiples of 28, 28*28*16 .. 28*28*64 pixels (smart_resize leaves them as they are)."""

RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
"""A grounding expression's words for each relation."""
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

DEFAULT_SYSTEM = "You are a helpful assistant."
SHORT_FORMAT_PATTERN = r"<answer>\s*\S.*?</answer>"
THINK_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>\s*\S.*?</answer>"
"""Visual-RFT's format pattern, except that the answer must not be empty (an empty answer earning the format
reward is a known reward hack, Visual-RFT#176)."""
NO_OBJECTS = "No Objects"
GAP = 2
"""Pixels kept between the squares of non-overlapping shapes."""


class Referent(NamedTuple):
    """What a grounding expression names in a scene (indices into its objects), as `Options.pick_referent` picks it."""

    target: int
    anchor: int
    relation: str
    """``left``, ``right``, ``above`` or ``below``: the target is that of the anchor."""
    decoy: int | None = None
    """A shape redrawn as the target's class, which only the relation (or the anchor) tells from the target."""
    others: tuple[int, ...] = ()
    """Shapes that each take a class of their own, apart from the target's, the anchor's and each other's (a
    study's second anchor); the remaining shapes take any class but those."""


@dataclass(frozen=True)
class Options:
    """Generation options (keyword arguments of `generate`, `write_task`), and the hooks a study overrides."""

    short: bool = False
    """Ask for ``<answer>`` only (no ``<think>`` part)."""
    coordinates: str = "pixel"
    """Coordinate space the prompt asks for: pixel, norm1000, norm1."""
    system: str | None = DEFAULT_SYSTEM
    """System message; None for none."""
    sizes: tuple[tuple[int, int], ...] = SIZES
    min_objects: int = 1
    max_objects: int = 5
    max_targets: int = 2
    """Detection: at most this many objects of the asked category (keeps answers short)."""
    empty_prob: float = 0.1
    """Detection: share of scenes without the asked category (answer: No Objects)."""
    noise_prob: float = 0.5
    """Share of noisy backgrounds."""
    overlap: float = 0.0
    """Largest IoU allowed between two shapes' squares (0: no overlap, a 2-pixel gap)."""
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    list_classes: bool = True
    """Classification: name the possible colours and shapes in the prompt."""

    def check(self) -> "Options":
        """Self, or a ValueError naming the first bad option (a subclass checks its own fields after these)."""
        check_choice("coordinates", self.coordinates, COORDINATES)
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.max_targets < 1:
            raise ValueError("max_targets must be at least 1")
        if not 0 <= self.empty_prob <= 1 or not 0 <= self.noise_prob <= 1 or not 0 <= self.overlap < 1:
            raise ValueError("empty_prob and noise_prob must be in [0, 1], overlap in [0, 1)")
        unknown = [c for c in self.colours if c not in COLOURS] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours or shapes: {unknown}")
        if len(self.colours) < 2 or len(self.shapes) < 2:
            raise ValueError("need at least two colours and two shapes")
        for w, h in self.sizes:
            if w < 56 or h < 56:
                raise ValueError("image sides must be at least 56 pixels")
        return self

    # Hooks (see the module docstring). Only `pick_referent` may draw from the scene's random stream.

    def shape_sides(self, lo: float, hi: float) -> tuple[float, float]:
        """A shape's square side, as fractions of the image's shorter side; (lo, hi): the task's own range."""
        return lo, hi

    def finish_background(self, pixels: np.ndarray, label: str, level: int) -> tuple[np.ndarray, str]:
        """A background ([h, w, 3] uint8) and its name once its grey `level` and noise are drawn. No pixel may
        take a shape's colour (channels 100 or more apart), or the boxes stop being exact."""
        return pixels, label

    def grounding_min_objects(self) -> int:
        """The fewest shapes of a grounding scene (at least `min_objects`): a target and an anchor."""
        return 2

    def relation_holds(self, relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
        """Whether box `a` is `relation` of box `b` as an expression means it: strictly (`holds`)."""
        return holds(relation, a, b)

    def pick_referent(self, rng: random.Random, objects: list["Obj"],
                      triples: list[tuple[int, int, str]]) -> Referent | None:
        """What the expression names, from `triples` (target, anchor, relation) that hold between `objects`
        (painted, classes not yet final); None draws the scene again. Default: in 75% of the scenes that allow
        one, a decoy on the anchor's OPPOSITE side: a shape that, drawn as the target's, has its centre beyond
        the anchor's centre and is not `relation` of it. Not "strictly opposite" (no overlap along the axis):
        three big shapes seldom fit in a row, and with shapes of a third of the side that rule left no scene with
        a decoy at all."""
        def decoys_for(t: int, a: int, rel: str) -> list[int]:
            return [i for i in range(len(objects)) if i not in (t, a) and opposite_side(
                rel, shape_box(objects[t].shape, objects[i].region), objects[a].box)]

        with_decoy = [(tr, d) for tr in triples for d in [decoys_for(*tr)] if d]
        if with_decoy and rng.random() < 0.75:
            (t, a, rel), cands = rng.choice(with_decoy)
            return Referent(t, a, rel, rng.choice(cands))
        return Referent(*rng.choice(triples))

    def relation_phrase(self, relation: str) -> str:
        """The words between the target's name and the anchor's ("left of")."""
        return RELATIONS[relation]

    def reasoning(self, task: str, info: dict, width: int, height: int) -> str:
        """The ``<think>`` text of a reference answer (not with `short`). `info`: what the task's scene builder
        returns (detection: category, colour, shape, boxes; grounding: expression, target, anchor, relation,
        boxes, anchor_name, anchor_box; classification: label, colour, shape, boxes)."""
        if task == "detection":
            k = len(info["boxes"])
            return (f"There is no {info['category']}." if k == 0 else f"There is 1 {info['category']}." if k == 1
                    else f"There are {k} {info['colour']} {plural(info['shape'])}.")
        if task == "grounding":
            where = place_name(info["boxes"][0], width, height)
            return f"{info['expression'][0].upper()}{info['expression'][1:]} is at the {where}."
        return f"It has the colour {info['colour']} and looks like a {info['shape']}."


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


# ------------------------------------------------------------------------------------------ drawing


def _polygon(shape: str, x: float, y: float, s: float) -> list[tuple[float, float]] | None:
    cx, cy, r = x + s / 2, y + s / 2, s / 2
    if shape == "triangle":
        return [(cx, y), (x + s - 1, y + s - 1), (x, y + s - 1)]
    if shape == "diamond":
        return [(cx, y), (x + s - 1, cy), (cx, y + s - 1), (x, cy)]
    if shape == "hexagon":
        return [(cx + (r - 0.5) * math.cos(math.pi / 3 * k), cy + (r - 0.5) * math.sin(math.pi / 3 * k))
                for k in range(6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = (r - 0.5) if k % 2 == 0 else (r - 0.5) * 0.45
            a = -math.pi / 2 + math.pi / 5 * k
            pts.append((cx + rad * math.cos(a), cy + 0.1 * s + rad * math.sin(a)))
        return pts
    return None


@functools.lru_cache(maxsize=4096)
def _local_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of `shape` drawn in a square of `side` pixels at the origin."""
    im = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(im)
    s = side
    if shape == "circle":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif shape == "square":
        d.rectangle([0, 0, s - 1, s - 1], fill=255)
    elif shape == "cross":
        t = s / 3
        d.rectangle([t, 0, s - 1 - t, s - 1], fill=255)
        d.rectangle([0, t, s - 1, s - 1 - t], fill=255)
    else:
        d.polygon(_polygon(shape, 0, 0, s), fill=255)
    out = np.asarray(im) > 0
    out.setflags(write=False)
    return out


def shape_mask(shape: str, region: Sequence[int], width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of the pixels `shape` paints in the square `region` = (x, y, side)."""
    x, y, s = region
    out = np.zeros((height, width), dtype=bool)
    out[y:y + s, x:x + s] = _local_mask(shape, s)
    return out


def shape_box(shape: str, region: Sequence[int]) -> list[int]:
    """The tight box of `shape_mask` without drawing the whole image."""
    x, y, _ = region
    b = mask_box(_local_mask(shape, region[2]))
    return [b[0] + x, b[1] + y, b[2] + x, b[3] + y]


def mask_box(mask: np.ndarray) -> list[int]:
    """Tight [x1, y1, x2, y2] (exclusive ends) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@dataclass
class Obj:
    shape: str
    colour: str
    region: tuple[int, int, int]
    """(x, y, side) of the square the shape is drawn in."""
    mask: np.ndarray | None = field(default=None, repr=False)
    box: list[int] | None = None

    def paint(self, width: int, height: int) -> "Obj":
        self.mask = shape_mask(self.shape, self.region, width, height)
        self.box = mask_box(self.mask)
        return self

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def to_json(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "box": list(self.box)}


def _square_iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] ** 2 + b[2] ** 2 - inter)


def _apart(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    return (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0]
            or a[1] + a[2] + gap <= b[1] or b[1] + b[2] + gap <= a[1])


def place_regions(rng: random.Random, n: int, width: int, height: int, lo: float, hi: float,
                  overlap: float = 0.0) -> list[tuple[int, int, int]]:
    """Up to `n` squares (x, y, side), side in [lo, hi] * min(width, height), inside a 2-pixel margin,
    pairwise apart by GAP pixels (or with IoU <= overlap). Fewer when the image is full."""
    m = min(width, height)
    smin, smax = max(12, round(lo * m)), max(12, round(hi * m))
    out: list[tuple[int, int, int]] = []
    for _ in range(n):
        for _attempt in range(60):
            s = rng.randint(smin, smax)
            x, y = rng.randint(2, width - 2 - s), rng.randint(2, height - 2 - s)
            r = (x, y, s)
            if all(_apart(r, o, GAP) or (overlap > 0 and _square_iou(r, o) <= overlap) for o in out):
                out.append(r)
                break
        else:
            smax = max(smin, (smin + smax) // 2)
    return out


def _background(rng: random.Random, opts: Options, width: int, height: int) -> tuple[np.ndarray, str]:
    name = rng.choice(sorted(BACKGROUNDS))
    level = BACKGROUNDS[name]
    if rng.random() < opts.noise_prob:
        g = np.random.default_rng(rng.getrandbits(64))
        grey = level + g.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=(height, width))
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        bg, label = np.repeat(grey[:, :, None], 3, axis=2), f"{name} noise"
    else:
        bg, label = np.full((height, width, 3), level, dtype=np.uint8), name
    return opts.finish_background(bg, label, level)


def render(objects: Sequence[Obj], background: np.ndarray) -> Image.Image:
    img = background.copy()
    for o in objects:
        img[o.mask] = COLOURS[o.colour]
    return Image.fromarray(img, "RGB")


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_data_url(url: str) -> Image.Image:
    """The image of a ``data:image/...;base64,`` URL (for tests and tools)."""
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


# ------------------------------------------------------------------------------------------ geometry


def holds(relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether box `a` is strictly `relation` of box `b` (no overlap along that axis)."""
    if relation == "left":
        return a[2] <= b[0]
    if relation == "right":
        return a[0] >= b[2]
    if relation == "above":
        return a[3] <= b[1]
    if relation == "below":
        return a[1] >= b[3]
    raise ValueError(relation)


def beyond(relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether box `a`'s centre is farther `relation` than box `b`'s (farther left for "left")."""
    axis = 0 if relation in ("left", "right") else 1
    centre = lambda box: box[axis] + box[axis + 2]  # noqa: E731  twice the centre, integer
    return centre(a) < centre(b) if relation in ("left", "above") else centre(a) > centre(b)


def opposite_side(relation: str, a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether box `a` stands on the side of box `b` opposite to `relation`: its centre beyond `b`'s centre
    that way, and `a` not `relation` of `b`."""
    return beyond(OPPOSITE[relation], a, b) and not holds(relation, a, b)


def referents(objects: Sequence[dict], target: str, relation: str, anchor: str,
              rel_holds: Callable[[str, Sequence[int], Sequence[int]], bool] = holds) -> list[int]:
    """Indices of the objects named `target` ("red circle") that are `relation` of an object named
    `anchor` (as `rel_holds` tells, strictly by default); objects are ``{"colour", "shape", "box"}`` dicts (a
    row's ``objects``)."""
    name = lambda o: f"{o['colour']} {o['shape']}"  # noqa: E731
    anchors = [o for o in objects if name(o) == anchor]
    return [i for i, o in enumerate(objects)
            if name(o) == target and any(rel_holds(relation, o["box"], a["box"]) for a in anchors)]


def place_name(box: Sequence[int], width: int, height: int) -> str:
    """Where a box's centre lies, in words ("top left", "center", "right side", ...)."""
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    col = 0 if cx < 1 / 3 else 2 if cx > 2 / 3 else 1
    row = 0 if cy < 1 / 3 else 2 if cy > 2 / 3 else 1
    return [["top left", "top", "top right"], ["left side", "center", "right side"],
            ["bottom left", "bottom", "bottom right"]][row][col]


def to_space(box: Sequence[int], width: int, height: int, coordinates: str) -> list:
    """A pixel box in the prompt's coordinate space (integers, or three decimals for norm1)."""
    if coordinates == "pixel":
        return [int(v) for v in box]
    if coordinates == "norm1000":
        return [round(box[0] / width * 1000), round(box[1] / height * 1000),
                round(box[2] / width * 1000), round(box[3] / height * 1000)]
    return [round(box[0] / width, 3), round(box[1] / height, 3), round(box[2] / width, 3), round(box[3] / height, 3)]


def _space_phrase(coordinates: str, width: int, height: int) -> str:
    if coordinates == "pixel":
        return f"in pixels of the {width}x{height} image"
    if coordinates == "norm1000":
        return "scaled 0 to 1000 (integers)"
    return "scaled 0 to 1 (three decimals)"


# ------------------------------------------------------------------------------------------ tasks


@dataclass
class _Scene:
    width: int
    height: int
    objects: list[Obj]
    background: np.ndarray
    background_name: str


def _distinct(rng: random.Random, opts: Options, avoid: set[str], shape: str | None = None,
              colour: str | None = None) -> tuple[str, str]:
    """A random (colour, shape) whose name is not in `avoid`, keeping `shape`/`colour` when given."""
    for _ in range(200):
        c = colour or rng.choice(opts.colours)
        s = shape or rng.choice(opts.shapes)
        if f"{c} {s}" not in avoid:
            return c, s
    raise RuntimeError("no free class")  # pragma: no cover (needs >= 2 colours and shapes)


def _scene_base(
    rng: random.Random, opts: Options, n: int, lo: float, hi: float
) -> tuple[int, int, list, np.ndarray, str]:
    """Size, shape squares, background of a scene; `lo`, `hi`: the task's shape sides (see `Options.shape_sides`)."""
    lo, hi = opts.shape_sides(lo, hi)
    width, height = rng.choice(opts.sizes)
    regions = place_regions(rng, n, width, height, lo, hi, opts.overlap)
    bg, bg_name = _background(rng, opts, width, height)
    return width, height, regions, bg, bg_name


def _detection(rng: random.Random, opts: Options) -> tuple[_Scene, dict]:
    n = rng.randint(opts.min_objects, opts.max_objects)
    width, height, regions, bg, bg_name = _scene_base(rng, opts, n, 0.16, 0.30)
    colour, shape = rng.choice(opts.colours), rng.choice(opts.shapes)
    category = f"{colour} {shape}"
    n = len(regions)
    k = 0 if rng.random() < opts.empty_prob else rng.randint(1, min(opts.max_targets, n))
    objects = []
    for i, region in enumerate(regions):
        if i < k:
            c, s = colour, shape
        else:  # a hard negative half of the time: same colour or same shape
            r = rng.random()
            keep = {"shape": shape} if r < 0.25 else {"colour": colour} if r < 0.5 else {}
            c, s = _distinct(rng, opts, {category}, **keep)
        objects.append(Obj(s, c, region))
    rng.shuffle(objects)
    for o in objects:
        o.paint(width, height)
    scene = _Scene(width, height, objects, bg, bg_name)
    targets = sorted((o.box for o in objects if o.name == category), key=lambda b: (b[1], b[0]))
    return scene, {"category": category, "colour": colour, "shape": shape, "boxes": targets}


def _grounding(rng: random.Random, opts: Options) -> tuple[_Scene, dict]:
    least = max(opts.grounding_min_objects(), opts.min_objects)
    for _attempt in range(100):
        n = rng.randint(least, max(least, opts.max_objects))
        width, height, regions, bg, bg_name = _scene_base(rng, opts, n, 0.16, 0.30)
        if len(regions) < least:
            continue  # the image was full: draw the scene again rather than give fewer shapes than asked
        objects = [Obj(rng.choice(opts.shapes), rng.choice(opts.colours), r).paint(width, height) for r in regions]
        triples = [(t, a, rel) for t in range(len(objects)) for a in range(len(objects)) if t != a
                   for rel in RELATIONS if opts.relation_holds(rel, objects[t].box, objects[a].box)]
        if not triples:
            continue
        picked = opts.pick_referent(rng, objects, triples)
        if picked is None:
            continue
        t, a, rel, decoy, others = picked
        tgt, anc = objects[t], objects[a]
        anc.colour, anc.shape = _distinct(rng, opts, {tgt.name}, shape=anc.shape)
        taken = {tgt.name, anc.name}
        for i in others:
            o = objects[i]
            o.colour, o.shape = _distinct(rng, opts, taken, shape=o.shape)
            taken.add(o.name)
        named = (t, a, *others)
        for i, o in enumerate(objects):
            if i == decoy:
                o.colour, o.shape = tgt.colour, tgt.shape
            elif i not in named:
                o.colour, o.shape = _distinct(rng, opts, taken)
            if i not in (t, a):
                o.paint(width, height)
        rows = [o.to_json() for o in objects]
        if (referents(rows, tgt.name, rel, anc.name, opts.relation_holds) != [t]
                or sum(o.name == anc.name for o in objects) != 1):
            continue  # pragma: no cover (the construction guarantees it; kept as a safety net)
        scene = _Scene(width, height, objects, bg, bg_name)
        expression = f"the {tgt.name} {opts.relation_phrase(rel)} the {anc.name}"
        return scene, {"expression": expression, "target": t, "anchor": a, "relation": rel, "boxes": [tgt.box],
                       "anchor_name": anc.name, "anchor_box": anc.box}
    raise RuntimeError("could not build a grounding scene; allow more objects or larger images")


def _classification(rng: random.Random, opts: Options) -> tuple[_Scene, dict]:
    width, height, regions, bg, bg_name = _scene_base(rng, opts, 1, 0.35, 0.70)
    colour, shape = rng.choice(opts.colours), rng.choice(opts.shapes)
    obj = Obj(shape, colour, regions[0]).paint(width, height)
    scene = _Scene(width, height, [obj], bg, bg_name)
    return scene, {"label": obj.name, "colour": colour, "shape": shape, "boxes": [obj.box]}


_BUILDERS = {"detection": _detection, "grounding": _grounding, "classification": _classification}


# ------------------------------------------------------------------------------------------ prompts


def _format_instruction(short: bool, answer_shape: str) -> str:
    if short:
        return f"Answer only as <answer>{answer_shape}</answer>."
    return ("Output the thinking process in <think> </think> and the final answer in <answer> </answer> tags: "
            f"<think> ... </think><answer>{answer_shape}</answer>")


def prompt_text(task: str, info: dict, width: int, height: int, opts: Options) -> str:
    """The user's text (after the image)."""
    space = _space_phrase(opts.coordinates, width, height)
    if task == "detection":
        return (f"Detect all {info['colour']} {plural(info['shape'])} in the image. Give each box [x1, y1, x2, y2] "
                f"{space} with a confidence between 0 and 1, or '{NO_OBJECTS}' if there is none. "
                + _format_instruction(opts.short, "[{'Position': [x1, y1, x2, y2], 'Confidence': number}, ...]"))
    if task == "grounding":
        return (f"Give the bounding box [x1, y1, x2, y2] of {info['expression']}, {space}. "
                + _format_instruction(opts.short, "[x1, y1, x2, y2]"))
    classes = ""
    if opts.list_classes:
        classes = f" Colours: {', '.join(opts.colours)}. Shapes: {', '.join(opts.shapes)}."
    return ("Name the colour and shape of the shape in the image, e.g. 'dark red circle'."
            + classes + " " + _format_instruction(opts.short, "colour shape"))


def answer_text(task: str, info: dict, width: int, height: int, opts: Options) -> tuple[str, str]:
    """(solution, whole assistant answer) of a row."""
    c = opts.coordinates
    if task == "detection":
        boxes = info["boxes"]
        if boxes:
            solution = "[" + ", ".join(
                f"{{'Position': {to_space(b, width, height, c)}, 'Confidence': 1}}" for b in boxes) + "]"
        else:
            solution = NO_OBJECTS
    elif task == "grounding":
        solution = str(to_space(info["boxes"][0], width, height, c))
    else:
        solution = info["label"]
    body = f"<answer>{solution}</answer>"
    return solution, body if opts.short else f"<think>{opts.reasoning(task, info, width, height)}</think>{body}"


WRONG_ANSWERS = ("other", "space")
"""What a DPO pair's non-preferred answer gets wrong: `other` the box of another object, `space` the right box in
another coordinate space than the prompt asks (norm1000 for pixels, else pixels)"""


def wrong_answer_text(task: str, info: dict, objects: Sequence[Obj], width: int, height: int, opts: Options,
                      correct: str, rng: random.Random, wrong: str = "other") -> str:
    """A wrong assistant answer, the correct one with only its solution replaced (a DPO pair's non-preferred
    answer). `wrong="other"`: grounding the anchor's box (the object the sentence names beside the target);
    detection the boxes of the other objects when there are targets, else every object's box. `wrong="space"`:
    the right boxes in another coordinate space (`WRONG_ANSWERS`; detection without targets as "other").
    Classification, either way: another class."""
    check_choice("wrong", wrong, WRONG_ANSWERS)
    c = opts.coordinates
    if wrong == "space" and task != "classification" and info["boxes"]:
        other_space = "norm1000" if c == "pixel" else "pixel"
        right = answer_text(task, info, width, height, replace(opts, coordinates=other_space))[0]
        return correct.replace(f"<answer>{answer_text(task, info, width, height, opts)[0]}</answer>",
                               f"<answer>{right}</answer>")
    if task == "grounding":
        wrong = str(to_space(info["anchor_box"], width, height, c))
    elif task == "detection":
        category = info["category"]
        boxes = [o.box for o in objects if o.name != category] if info["boxes"] else [o.box for o in objects]
        boxes = sorted(boxes, key=lambda b: (b[1], b[0]))
        wrong = "[" + ", ".join(f"{{'Position': {to_space(b, width, height, c)}, 'Confidence': 1}}"
                                for b in boxes) + "]" if boxes else NO_OBJECTS
    else:
        colour, shape = _distinct(rng, opts, {info["label"]})
        wrong = f"{colour} {shape}"
    return correct.replace(f"<answer>{answer_text(task, info, width, height, opts)[0]}</answer>",
                           f"<answer>{wrong}</answer>")


# ------------------------------------------------------------------------------------------ rows


def make_row(task: str, index: int, seed: int = 0, *, sft: bool = False, split: str = "train",
             opts: Options | None = None, dpo: bool = False, wrong: str = "other", **options: Any) -> dict:
    """Row `index` of (task, split, seed): the same whatever else is generated. Options as `generate`'s
    keyword arguments, or an `Options` as `opts`. `dpo`: OpenAI's preference row instead of a chat row:
    `input.messages` (the prompt), `preferred_output` (the reference answer) and `non_preferred_output` (a wrong
    one, `wrong_answer_text(..., wrong)`), with the same other fields."""
    check_choice("task", task, TASKS)
    if sft and dpo:
        raise ValueError("a row is either a supervised row (sft) or a preference row (dpo)")
    opts = _options(options, opts)
    rng = random.Random(f"vrft-synthetic:{task}:{split}:{seed}:{index}")
    scene, info = _BUILDERS[task](rng, opts)
    w, h = scene.width, scene.height
    image = render(scene.objects, scene.background)
    solution, answer = answer_text(task, info, w, h, opts)
    messages: list[dict] = []
    if opts.system is not None:
        messages.append({"role": "system", "content": opts.system})
    messages.append({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(image)}},
        {"type": "text", "text": prompt_text(task, info, w, h, opts)},
    ]})
    if sft:
        messages.append({"role": "assistant", "content": answer})
    row: dict[str, Any] = {
        "messages": messages,
        "id": f"{task}-{split}-{seed}-{index:05d}",
        "task": task,
        "width": w,
        "height": h,
        "image_size": [w, h],
        "coordinates": opts.coordinates,
        "boxes": [list(b) for b in info["boxes"]],
        "solution": solution,
        "objects": [o.to_json() for o in scene.objects],
        "background": scene.background_name,
    }
    if task == "detection":
        row["category"] = info["category"]
    elif task == "grounding":
        row.update(expression=info["expression"], target=info["target"], anchor=info["anchor"],
                   relation=info["relation"])
    else:
        row.update(label=info["label"], colour=info["colour"], shape=info["shape"])
    if dpo:
        wrong_rng = random.Random(f"vrft-synthetic-dpo:{task}:{split}:{seed}:{index}")
        bad = wrong_answer_text(task, info, scene.objects, w, h, opts, answer, wrong_rng, wrong)
        row = {"input": {"messages": row.pop("messages")},
               "preferred_output": [{"role": "assistant", "content": answer}],
               "non_preferred_output": [{"role": "assistant", "content": bad}], **row}
    return row


def generate(task: str, n: int, seed: int = 0, *, sft: bool = False, split: str = "train",
             opts: Options | None = None, dpo: bool = False, wrong: str = "other", **options: Any) -> list[dict]:
    """`n` rows of `task` (see the module docstring for the fields). `options`: fields of `Options`
    (short, coordinates, system, sizes, min_objects, max_objects, max_targets, empty_prob, noise_prob,
    overlap, colours, shapes, list_classes), set over `opts` (default: ``Options()``; a subclass for a study)."""
    opts = _options(options, opts)
    return [make_row(task, i, seed, sft=sft, split=split, opts=opts, dpo=dpo, wrong=wrong) for i in range(n)]


def _options(options: dict, base: Options | None = None) -> Options:
    """`base` (default ``Options()``) with `options` set (None leaves a field as it is, except `system`), checked."""
    base = base or Options()
    options = dict(options)
    for key in ("sizes", "colours", "shapes"):
        if key in options and options[key] is not None:
            options[key] = tuple(tuple(v) if key == "sizes" else v for v in options[key])
    unknown = set(options) - {f.name for f in fields(base)}
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    return replace(base, **{k: v for k, v in options.items() if v is not None or k == "system"}).check()


def to_jsonl(rows: Iterable[dict]) -> bytes:
    """Rows as JSONL bytes (one compact JSON object a line, newline-terminated)."""
    return b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in rows)


def answer_of(row: dict) -> str:
    """The reference assistant answer of a row, in the row's own style and coordinates (RFT and DPO rows too)."""
    if "preferred_output" in row:
        return row["preferred_output"][0]["content"]
    if row["messages"][-1]["role"] == "assistant":
        return row["messages"][-1]["content"]
    text = row["messages"][-1]["content"][-1]["text"]
    short = "<think>" not in text
    body = f"<answer>{row['solution']}</answer>"
    return body if short else f"<think>...</think>{body}"


# ------------------------------------------------------------------------------------------ graders


def grader_spec(task: str, *, short: bool = False, coordinates: str = "pixel", format_weight: float | None = None,
                iou_threshold: float = 0.5, confidence_weight: float = 0.5, name: str | None = None) -> dict:
    """The grader for `task` rows generated with the same `short` and `coordinates` (a dict for
    ``method.reinforcement.grader``; passes ``grader.validate_grader``)."""
    check_choice("task", task, TASKS)
    check_choice("coordinates", coordinates, COORDINATES)
    if format_weight is None:
        format_weight = 1 / 3 if task == "detection" else 1 / 2
    if not 0 <= format_weight < 1:
        raise ValueError("format_weight must be in [0, 1)")
    if task == "classification":
        main = {"type": "classification", "name": "classification", "input": "{{sample.answer}}",
                "reference": "{{item.label}}"}
    else:
        main = {
            "type": "iou", "name": "iou", "mode": task, "input": "{{sample.answer}}", "reference": "{{item.boxes}}",
            "parser": "auto",
            "input_format": {"box_format": "xyxy", "coordinates": coordinates},
            "reference_format": {"box_format": "xyxy", "coordinates": "pixel"},
        }
        if task == "detection":
            main.update(iou_threshold=iou_threshold, confidence_weight=confidence_weight, no_objects=NO_OBJECTS)
    fmt = {"type": "format", "name": "format", "input": "{{sample.output_text}}",
           "pattern": SHORT_FORMAT_PATTERN if short else THINK_FORMAT_PATTERN}
    w = round(format_weight, 6)
    formula = f"{round(1 - w, 6)} * task + {w} * format" if w else "task"
    if task == "detection" and abs(format_weight - 1 / 3) < 1e-9:
        formula = "(2 * task + format) / 3"
    elif abs(format_weight - 0.5) < 1e-9:
        formula = "(task + format) / 2"
    graders = {"task": main, "format": fmt} if w else {"task": main}
    style = "short" if short else "think"
    return {"type": "multi", "name": name or f"synthetic-{task}-{style}-{coordinates}", "graders": graders,
            "calculate_output": formula}


def file_stem(task: str, *, short: bool = False, coordinates: str = "pixel") -> str:
    return task + ("_short" if short else "") + ("" if coordinates == "pixel" else f"_{coordinates}")


def write_task(out_dir: str | Path, task: str, n: int, seed: int = 0, *, sft: bool = False, split: str = "train",
               opts: Options | None = None, dpo: bool = False, wrong: str = "other",
               **options: Any) -> dict[str, Path]:
    """Write ``{stem}.{split}[.sft|.dpo].jsonl`` and ``{stem}.grader.json`` into `out_dir` (created);
    stem = task [+ "_short"] [+ "_" + coordinates]. Options as `generate`'s. Returns {"data": path, "grader": path}."""
    opts = _options(options, opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(task, short=opts.short, coordinates=opts.coordinates)
    data = out / f"{stem}.{split}{'.sft' if sft else '.dpo' if dpo else ''}.jsonl"
    rows = (make_row(task, i, seed, sft=sft, split=split, opts=opts, dpo=dpo, wrong=wrong) for i in range(n))
    tmp = data.with_name(data.name + ".tmp")
    with open(tmp, "wb") as f:
        for row in rows:
            f.write(to_jsonl([row]))
    tmp.replace(data)
    grader = out / f"{stem}.grader.json"
    grader.write_text(json.dumps(grader_spec(task, short=opts.short, coordinates=opts.coordinates), indent=2) + "\n")
    return {"data": data, "grader": grader}
