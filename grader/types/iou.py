"""`iou` (ours): box IoU reward, `grounding` (one box, dense IoU) or `detection` (many boxes, greedy matching).

The reward is computed for the whole batch at once (numpy, or numba kernels for large batches: grader/_accel.py);
numpy is imported when a batch is graded, so that `import grader` stays light.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, NamedTuple, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from grader.errors import SampleError
from grader.images import item_image_size, smart_resize
from grader.registry import Spec, register
from grader.reward import Col, Reward, resolve_all
from grader.templates import Template, extract_answer, make_sample

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
CoordinateSpace = Literal["pixel", "norm1000", "norm1"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmartResize(_Options):
    """Qwen2-VL/2.5-VL `smart_resize`: the image the model saw has sides rounded to multiples of `factor`
    with min_pixels <= h*w <= max_pixels. Qwen2.5-VL answers in absolute pixels of THAT image. The defaults are
    Qwen2.5-VL's hub processor's; with `input_format: "auto"` a training job uses its model's own."""

    factor: int = Field(default=28, ge=1)
    min_pixels: int = Field(default=56 * 56, ge=1)
    max_pixels: int = Field(default=28 * 28 * 16384, ge=1)

    @model_validator(mode="after")
    def _order(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class BoxConvention(_Options):
    """How a list of four numbers is to be read."""

    box_format: BoxFormat = "xyxy"
    """xyxy: corners; xywh: top-left + size; cxcywh: centre + size."""
    coordinates: CoordinateSpace = "norm1000"
    """norm1000: 0..1000 (Qwen2-VL, Visual-RFT); norm1: 0..1; pixel: absolute pixels."""
    resize: Optional[SmartResize] = None
    """For `pixel`: the pixels are those of the smart-resized image (Qwen2.5-VL)."""


# "auto" or an object. The tags name the input's JSON type the way pydantic labels union members ('str',
# 'dict[...]'), so that an error in the object is reported at `input_format.<field>` (registry._clean_loc).
InputFormat = Annotated[
    Union[Annotated[Literal["auto"], Tag("str")], Annotated[BoxConvention, Tag("dict[str, Any]")]],
    Discriminator(lambda v: "str" if isinstance(v, str) else "dict[str, Any]"),
]


class IouGrader(Spec):
    """Box IoU reward: `grounding` (one box, dense IoU) or `detection` (many boxes, greedy matching).

    Detection follows Visual-RFT: predictions sorted by confidence are matched greedily to the unmatched
    reference box of highest IoU, a match counts when IoU >= iou_threshold; the IoU term is the sum of
    matched IoUs over max(#reference, #predicted); the confidence term is the mean over predictions of
    conf (matched) or 1 - conf (unmatched). reward = (1 - confidence_weight) * iou + confidence_weight * conf.
    """

    name: str
    type: Literal["iou"]
    input: str = "{{sample.answer}}"
    """Text holding the predicted boxes."""
    reference: str = "{{item.boxes}}"
    """Reference boxes: a list of boxes, of {"Position"|"bbox"|"box": [...]} objects, one box, or text."""
    mode: Literal["detection", "grounding"] = "detection"
    parser: Literal["auto", "json", "list", "tuple", "qwen"] = "auto"
    """json: [{"Position": [..], "Confidence": c}]; list: [x1,y1,x2,y2]; tuple: (x1,y1),(x2,y2);
    qwen: <|box_start|>(x1,y1),(x2,y2)<|box_end|>; auto tries them in that order."""
    input_format: InputFormat = Field(default_factory=BoxConvention)
    """Convention of the model's boxes, or "auto": in a training job, the convention the job's model family was
    trained on (Qwen2-VL and Qwen3-VL xyxy norm1000, Qwen2.5-VL xyxy pixels of the smart-resized image,
    LLaVA-OneVision xyxy norm1); elsewhere (e.g. graders/run) xyxy norm1000."""
    reference_format: Optional[BoxConvention] = None
    """Convention of the reference boxes; defaults to `input_format` (without `resize`), or with
    `input_format` "auto" to xyxy norm1000 (the dataset's boxes do not change with the model)."""
    iou_threshold: float = Field(default=0.5, ge=0, le=1)
    """Detection: minimum IoU for a prediction to match a reference box."""
    iou_type: Literal["iou", "giou"] = "iou"
    """giou scores a pair by (GIoU + 1) / 2 so it stays in [0, 1]."""
    confidence_weight: float = Field(default=0.0, ge=0, le=1)
    """Weight of the confidence term (detection only)."""
    no_objects: str = "No Objects"
    """Answer meaning "no boxes" (case-insensitive); an empty prediction against an empty reference scores 1."""
    max_boxes: int = Field(default=100, ge=1)
    """Predicted boxes beyond this many are dropped."""

    templates = ("input", "reference")


def resolve_box_convention(spec, convention: dict | None):
    """`spec` (any grader) with every iou grader's input_format "auto" replaced by `convention` (None: the
    default, xyxy norm1000); multi graders are walked."""
    if isinstance(spec, IouGrader):
        if spec.input_format != "auto":
            return spec
        return spec.model_copy(update={"input_format": BoxConvention.model_validate(convention or {}),
                                       "reference_format": spec.reference_format or BoxConvention()})
    children = getattr(spec, "graders", None)
    if isinstance(children, dict):
        return spec.model_copy(update={"graders": {k: resolve_box_convention(g, convention)
                                                   for k, g in children.items()}})
    return spec


class Iou(Reward):
    def __init__(self, spec: IouGrader, context=None):
        spec = resolve_box_convention(spec, getattr(context, "box_convention", None))
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")
        # `{{sample.answer}}` is read inside the parser: no per-sample extraction in Python
        self.raw = self.input.vars == [("sample", ("answer",))] and self.input._single
        self.texts_only = self.raw and all(ns == "item" for ns, _ in self.reference.vars)

    def grade(self, samples, items):
        rewards, comps, errors = iou_batch(self.spec, *self.inputs(samples, items), items, raw_answers=self.raw)
        return Col(rewards.tolist(), errors, comps)

    def inputs(self, samples, items) -> tuple[list, list]:
        """(answers, references) of a batch as iou_batch takes them (with raw_answers=self.raw)."""
        if self.raw:
            answers = samples if self.texts_only else [s["output_text"] for s in samples]
        else:
            answers = resolve_all(self.input, samples, items, raw=True)
        return answers, resolve_all(self.reference, samples, items, raw=True)


def iou_graders(spec: Spec) -> list[tuple[str, IouGrader]]:
    """The iou graders of `spec`, with the key their score has in sub_rewards (a multi grader's child key)."""
    if isinstance(spec, IouGrader):
        return [(spec.name, spec)]
    children = getattr(spec, "graders", None)
    return [(k, g) for k, g in children.items() if isinstance(g, IouGrader)] if isinstance(children, dict) else []


def drawn_boxes(spec: Spec, samples: Sequence[Any], items: Sequence[Any],
                convention: dict | None = None) -> list[list[dict]]:
    """The boxes each iou grader of `spec` compares for each (sample, item), as the grader parsed, cleaned and
    converted them, in fractions of the item's image (x1, y1, x2, y2 in [0, 1] when inside it): what the
    dashboard draws on the image. `convention` is what input_format "auto" means (a job's model family's; None:
    xyxy norm1000); a sample None draws the references only. Per row, per iou grader:

        {"grader": "iou", "reference": [[x1, y1, x2, y2], ...],
         "predicted": [{"box": [x1, y1, x2, y2], "confidence": 1.0}, ...], "error": None or why}
    """
    from grader import boxes as B

    spec = resolve_box_convention(spec, convention)
    answered = [s is not None for s in samples]
    samples = [make_sample("" if s is None else s) for s in samples]
    out: list[list[dict]] = [[] for _ in samples]
    for key, g in iou_graders(spec):
        reward = Iou(g)
        texts = [s["output_text"] for s in samples] if reward.texts_only else samples
        bb = batch_boxes(reward.spec, *reward.inputs(texts, items), items, raw_answers=reward.raw)
        for i, item in enumerate(items):
            err = bb.errors.get(i)
            try:
                if bb.in_fractions:
                    sx = sy = 1.0
                else:
                    sx, sy = B.scale_for(bb.ref_conv.coordinates, None if bb.ref_conv.coordinates != "pixel"
                                         else item_image_size(item))
            except SampleError as e:
                out[i].append({"grader": key, "reference": [], "predicted": [], "error": e.message})
                continue
            scale = [sx, sy, sx, sy]
            refs = bb.g_box[bb.g_rows == bb.ref_of[i]] / scale
            mine = bb.p_rows == i
            preds = [{"box": [float(v) for v in b], "confidence": float(c)}
                     for b, c in zip(bb.p_box[mine] / scale, bb.p_conf[mine])] if answered[i] else []
            if err is not None and not answered[i] and err.flag == "sample_parse_error":
                err = None  # no sample, no answer to find
            out[i].append({"grader": key, "reference": [[float(v) for v in b] for b in refs], "predicted": preds,
                           "error": None if err is None else err.message})
    return out


# ------------------------------------------------------------------------------------- the batched reward


def _is_no_objects(text: str, phrase: str) -> bool:
    return bool(phrase) and phrase.casefold() in text.casefold()


def _size(conv: BoxConvention, item: Any, cache: dict) -> tuple[float, float]:
    """(width, height) that `conv`'s pixel coordinates refer to (smart-resized when asked)."""
    key = id(item)
    if key not in cache:
        cache[key] = item_image_size(item)
    w, h = cache[key]
    if conv.resize is not None:
        r = conv.resize
        h, w = smart_resize(h, w, r.factor, r.min_pixels, r.max_pixels)
    return float(w), float(h)


def _divisor(conv: BoxConvention, item: Any, cache: dict) -> tuple[float, float]:
    from grader import boxes as B

    if conv.coordinates != "pixel":
        return B.scale_for(conv.coordinates, None)
    return _size(conv, item, cache)


def _needs_size(spec: IouGrader, ref_conv: BoxConvention) -> bool:
    """Only differing spaces (or a resize) need the image: a common scale does not change IoU."""
    a = spec.input_format
    if a.resize is not None or ref_conv.resize is not None:
        return True
    return a.coordinates != ref_conv.coordinates and "pixel" in (a.coordinates, ref_conv.coordinates)


def _strip_answer(text: str) -> str:
    end = text.rfind("</answer>")
    if end != -1:
        start = text.rfind("<answer>", 0, end)
        if start != -1:
            return text[start + 8 : end].strip()
    return text.strip()


def _parse_texts(texts: list[str], parser: str, max_boxes: int, dedupe: bool = True, extract: int = 0,
                 slot: str | None = None):
    """Boxes of many texts -> (vals [N, 5] x1 y1 x2 y2 conf, rows [N], found [n] bool, answers {i: text}).

    extract 0: the texts are the answers; 1: full model outputs, the boxes are inside the last
    <answer>...</answer> pair (as `sample.answer`); 2: the same, but a text without the pair is taken
    whole (reference fields). The common Visual-RFT JSON shape goes through the vectorised (or compiled)
    parser, anything else through `parse_boxes`, one text at a time. `found[i]` is False when text i
    has no box syntax at all; `answers` holds the extracted answer of each text that took the slow path.
    With `slot`, `vals` may be a view of a reused scratch array (see `parse_visual_rft_batch`).
    """
    import numpy as np

    from grader import _accel
    from grader import boxes as B

    n = len(texts)
    found = np.ones(n, dtype=bool)
    if extract and not _accel.available(n):
        texts = [(extract_answer(t) if extract == 1 else _strip_answer(t)) for t in texts]
        extract = 0
    if parser in ("auto", "json") and n:
        vals, counts, ok = B.parse_visual_rft_batch(texts, extract=extract, slot=slot)
    else:
        vals, counts, ok = np.zeros((0, 5)), np.zeros(n, np.int64), np.zeros(n, dtype=bool)
    rows = np.repeat(np.arange(n), counts)  # counts are 0 where not ok
    answers: dict[int, str] = {}
    parts, row_parts = [], []
    for i in np.flatnonzero(~ok).tolist():
        t = texts[i]
        t = extract_answer(t) if extract == 1 else _strip_answer(t) if extract == 2 else t
        answers[i] = t
        boxes = B.parse_boxes(t, parser)
        if boxes is None:
            found[i] = False
            continue
        arr = np.asarray([b + [1.0 if c is None else c] for b, c in boxes], dtype=np.float64).reshape(-1, 5)
        parts.append(arr)
        row_parts.append(np.full(len(arr), i))
    if parts:  # merge the slow path's boxes in, in text order
        vals, rows = np.concatenate([vals] + parts), np.concatenate([rows] + row_parts)
        order = np.argsort(rows, kind="stable")
        vals, rows = vals[order], rows[order]
    # the fast parser reads digits only (always finite): nothing to clean in its boxes unless asked to
    if parts or dedupe or counts.max(initial=0) > max_boxes:
        keep = B.clean_rows(vals, rows, dedupe, max_boxes)
        if keep is not None:
            vals, rows = vals[keep], rows[keep]
    return vals, rows, found, answers


class BatchBoxes(NamedTuple):
    """A batch's boxes as the reward compares them: corners (x1 <= x2, y1 <= y2), in the reference's space, or
    in fractions of the image when the two conventions needed its size (`in_fractions`)."""

    g_box: Any  # [G, 4] the distinct references' boxes
    g_rows: Any  # [G] the distinct reference each belongs to
    ref_of: Any  # [B] sample -> its distinct reference
    n_refs: int
    p_box: Any  # [P, 4] the predicted boxes, in the reference's space
    p_conf: Any  # [P] their confidences (1 where the answer gave none)
    p_rows: Any  # [P] the sample each belongs to
    errors: dict  # {sample index: SampleError}
    ref_conv: BoxConvention
    in_fractions: bool


def iou_batch(spec: IouGrader, answers: Sequence[Any], references: Sequence[Any], items: Sequence[Any],
              raw_answers: bool = False):
    """Score a batch: returns (rewards [B], components {name: [B]}, errors {index: SampleError}).

    `answers` are the resolved `input` values (or SampleError) -- or, with raw_answers, the full model
    outputs whose `<answer>` is to be read --, `references` the resolved `reference` values (or
    SampleError), `items` the rows (for the image size). The parsed boxes are held in this thread's
    scratch arrays while it runs (see `parse_visual_rft_batch`): nothing it returns refers to them.
    """
    import numpy as np

    from grader import boxes as B

    spec = resolve_box_convention(spec, None)  # "auto" outside a job: the default
    g_box, g_rows, ref_of, n_refs, p_box, p_conf, p_rows, errors, _, _ = batch_boxes(
        spec, answers, references, items, raw_answers)
    n = len(answers)
    giou = spec.iou_type == "giou"
    if spec.mode == "grounding":
        p_pad, p_mask = B.pad_rows(p_box, p_rows, n, 4)
        gt_pad, gt_mask = B.pad_rows(g_box, g_rows, max(n_refs, 1), 4)
        g, gmask = gt_pad[ref_of], gt_mask[ref_of]
        rewards = np.zeros(n)
        for i in np.flatnonzero(~p_mask[:, 0] if p_mask.shape[1] else np.ones(n, bool)).tolist():
            errors.setdefault(i, SampleError("sample_parse_error", "no box found in the sample"))
        if p_pad.shape[1]:
            first = p_pad[:, 0, :4]
            m = B.iou_matrix(first[:, None, :], g, giou=giou)[:, 0, :] if g.shape[1] else np.zeros((n, 0))
            if giou:
                m = (m + 1) / 2
            m = np.where(gmask, m, -np.inf)
            best = m.max(1) if m.shape[1] else np.full(n, -np.inf)
            rewards = np.where(np.isfinite(best), np.clip(best, 0.0, 1.0), 0.0)
        comp = {"iou": rewards.tolist()}
    else:
        it, ct = B.detection_rows(g_box, g_rows, n_refs, ref_of, p_box, p_conf, p_rows, spec.iou_threshold, giou)
        w = spec.confidence_weight
        rewards = (1 - w) * it + w * ct
        comp = {"iou": it.tolist(), "confidence": ct.tolist()}
    if errors:
        rewards[list(errors)] = 0.0
    return rewards, comp, dict(sorted(errors.items()))


def batch_boxes(spec: IouGrader, answers: Sequence[Any], references: Sequence[Any], items: Sequence[Any],
                raw_answers: bool = False) -> BatchBoxes:
    """The boxes `iou_batch` scores (its arguments; `spec` with a resolved input_format), parsed, cleaned and
    brought to one space. The dashboard draws these (`drawn_boxes`): what was scored. The arrays may be views of
    this thread's scratch arrays (see `parse_visual_rft_batch`): read them before its next batch."""
    import numpy as np

    from grader import boxes as B

    n = len(answers)
    ref_conv = spec.reference_format or spec.input_format.model_copy(update={"resize": None})
    need_size = _needs_size(spec, ref_conv)
    errors: dict[int, SampleError] = {}
    sizes: dict = {}
    # per-sample loops below run only where something is off: a clean GRPO batch is all strings
    a_types, r_types = set(map(type, answers)), set(map(type, references))
    if SampleError in a_types or SampleError in r_types:
        for i, (a, r) in enumerate(zip(answers, references)):
            if type(a) is SampleError or type(r) is SampleError:
                errors[i] = a if type(a) is SampleError else r

    # reference boxes: parsed once per distinct (reference, item) object; the samples of a prompt share them
    ids = np.fromiter(map(id, references), dtype=np.uint64, count=n)
    if need_size:
        ids = np.stack([ids, np.fromiter(map(id, items), dtype=np.uint64, count=n)], axis=1)
    _, first, ref_of = np.unique(ids, axis=0 if need_size else None, return_index=True, return_inverse=True)
    first, ref_of = first.tolist(), ref_of.reshape(-1)
    u_refs, u_items = [references[i] for i in first], [items[i] for i in first] if need_size else []
    all_text = r_types <= {str}
    u_text = list(range(len(u_refs))) if all_text else [j for j, r in enumerate(u_refs) if type(r) is str]
    g_vals, g_rows, g_found, _ = _parse_texts([u_refs[j] for j in u_text] if not all_text else u_refs, "auto",
                                              1 << 30, dedupe=False, extract=2, slot="references")
    u_bad: dict[int, SampleError] = {}
    for k in np.flatnonzero(~g_found).tolist():
        j = u_text[k]
        if _strip_answer(u_refs[j]) not in ("", "[]") and not _is_no_objects(u_refs[j], spec.no_objects):
            u_bad[j] = SampleError("other_error", "cannot read the reference boxes of the item")
    if not all_text:  # structured references (lists of boxes, dicts) and errors
        g_vals_parts, g_rows_parts = [g_vals], [np.asarray(u_text, dtype=np.int64)[g_rows]]
        for j, r in enumerate(u_refs):
            if type(r) is str or type(r) is SampleError:
                continue
            parsed = B.boxes_from_value(r)
            if parsed is None:
                u_bad[j] = SampleError("other_error", "cannot read the reference boxes of the item")
                continue
            arr = np.asarray([b for b, _ in B.finite_boxes(parsed)], dtype=np.float64).reshape(-1, 4)
            g_vals_parts.append(np.concatenate([arr, np.ones((len(arr), 1))], axis=1))
            g_rows_parts.append(np.full(len(arr), j))
        g_vals, g_rows = np.concatenate(g_vals_parts), np.concatenate(g_rows_parts).astype(np.int64)
        order = np.argsort(g_rows, kind="stable")
        g_vals, g_rows = g_vals[order], g_rows[order]
    g_box = B.to_xyxy(g_vals[:, :4], ref_conv.box_format)
    if need_size and len(g_rows):
        div = np.ones((len(u_refs), 4))
        for j, it in enumerate(u_items):
            if j in u_bad:
                continue
            try:
                sx, sy = _divisor(ref_conv, it, sizes)
                div[j] = (sx, sy, sx, sy)
            except SampleError as e:
                u_bad[j] = e
        g_box = g_box / div[g_rows]

    # predictions
    texts = list(answers) if a_types <= {str} else [
        a if type(a) is str else "" if type(a) is SampleError else json.dumps(a) for a in answers]
    p_vals, p_rows, p_found, p_answers = _parse_texts(texts, spec.parser, spec.max_boxes,
                                                      extract=1 if raw_answers else 0, slot="answers")
    for i in np.flatnonzero(~p_found).tolist():
        if i in errors:
            continue
        t = p_answers.get(i, texts[i]).strip()
        if not (_is_no_objects(t, spec.no_objects) or t in ("[]", "{}")):
            errors[i] = SampleError("sample_parse_error", "no box found in the sample")
    p_box = B.to_xyxy(p_vals[:, :4], spec.input_format.box_format)
    if need_size and len(p_rows):
        div = np.ones((n, 4))
        for i in np.unique(p_rows).tolist():
            if i not in errors:
                try:
                    sx, sy = _divisor(spec.input_format, items[i], sizes)
                    div[i] = (sx, sy, sx, sy)
                except SampleError as e:
                    errors[i] = e
        p_box = p_box / div[p_rows]
    elif not need_size and spec.input_format.coordinates != ref_conv.coordinates:  # norm1000 <-> norm1: one constant
        sa = B.scale_for(spec.input_format.coordinates, None)[0]
        sb = B.scale_for(ref_conv.coordinates, None)[0]
        p_box = p_box * (sb / sa)
    if u_bad:
        for i in np.flatnonzero(np.isin(ref_of, list(u_bad))).tolist():
            errors.setdefault(i, u_bad[int(ref_of[i])])
    return BatchBoxes(g_box, g_rows, ref_of, len(u_refs), p_box, p_vals[:, 4], p_rows, errors, ref_conv, need_size)


register(IouGrader, Iou)
