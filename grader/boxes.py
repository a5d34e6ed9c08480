"""Boxes: parse them out of model text, convert conventions, and score IoU, batched with numpy."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Sequence

import numpy as np

_NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_SEP = r"\s*,\s*"
_QUAD = r"\[\s*" + _NUM + _SEP + _NUM + _SEP + _NUM + _SEP + _NUM + r"\s*\]"
_KEY = r"""['"]?(?:Position|position|bbox_2d|bbox|box)['"]?\s*:\s*"""
_CONF_KEY = r"""['"]?(?:Confidence|confidence|score)['"]?\s*:\s*"""
# {'Position': [x1, y1, x2, y2], 'Confidence': c}  (either key order; other keys such as "label" allowed)
_JSON_OBJ = re.compile(r"\{[^{}]*?" + _KEY + _QUAD + r"[^{}]*?\}")
_JSON_CONF = re.compile(_CONF_KEY + _NUM)
_JSON_POS = re.compile(_KEY + _QUAD)
_LIST = re.compile(_QUAD)
_TUPLE = re.compile(r"\(\s*" + _NUM + _SEP + _NUM + r"\s*\)\s*,?\s*\(\s*" + _NUM + _SEP + _NUM + r"\s*\)")
_QWEN = re.compile(r"<\|box_start\|>\s*\(\s*" + _NUM + _SEP + _NUM + r"\s*\)\s*,?\s*\(\s*" + _NUM + _SEP + _NUM
                   + r"\s*\)\s*<\|box_end\|>")

PARSERS = ("qwen", "json", "tuple", "list")
"""The order `auto` tries."""

Box = list  # [x1, y1, x2, y2] floats


def _parse_json(text: str) -> list | None:
    objs = _JSON_OBJ.findall(text) if "{" in text else []
    if not objs:
        return None
    out = []
    for m in _JSON_OBJ.finditer(text):
        obj = m.group(0)
        pos = _JSON_POS.search(obj)
        conf = _JSON_CONF.search(obj)
        out.append(([float(v) for v in pos.groups()], float(conf.group(1)) if conf else None))
    return out


def _parse_list(text: str) -> list | None:
    found = _LIST.findall(text)
    return [([float(v) for v in q], None) for q in found] or None


def _parse_tuple(text: str) -> list | None:
    found = _TUPLE.findall(text)
    return [([float(v) for v in q], None) for q in found] or None


def _parse_qwen(text: str) -> list | None:
    found = _QWEN.findall(text)
    return [([float(v) for v in q], None) for q in found] or None


_PARSE = {"json": _parse_json, "list": _parse_list, "tuple": _parse_tuple, "qwen": _parse_qwen}


def parse_boxes(text: str, parser: str = "auto") -> list[tuple[Box, float | None]] | None:
    """Boxes in `text` as [(box, confidence or None)], or None when nothing parses.

    auto tries qwen's <|box_start|> tags, then JSON objects with a Position/bbox key (Visual-RFT's
    `[{'Position': [..], 'Confidence': c}]`, Qwen2.5-VL's `{"bbox_2d": [..]}`), then `(x1,y1),(x2,y2)`,
    then bare `[x1,y1,x2,y2]` lists. Truncated outputs keep every complete box.
    """
    if parser != "auto":
        return _PARSE[parser](text)
    for name in PARSERS:
        found = _PARSE[name](text)
        if found:
            return found
    return None


_OBJ_SKELETON = (b"{'Position':[,,,],'Confidence':}", b"{'Confidence':,'Position':[,,,]}")
_CLASS = np.zeros(256, dtype=np.uint8)  # 1 digit, 2 dot, 0 anything else
_CLASS[48:58] = 1
_CLASS[46] = 2
_POW10 = 10.0 ** np.arange(23)


def parse_visual_rft_batch(texts: Sequence[str], accel: bool = True, extract: int = 0, slot: str | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised parser for the common case, Visual-RFT's `[{'Position': [x1,y1,x2,y2], 'Confidence': c}, ...]`.

    All texts are scanned at once with numpy: the number runs and their values (integer mantissa / power of
    ten, so bit-identical to float(str)); then one bytes comparison per text checks the syntax around them
    (with numbers and spaces removed and " read as ', the text must be exactly the canonical skeleton for its
    number of boxes). Returns (values [N, 5] = x1 y1 x2 y2 conf of every box in order, counts [n], ok [n]); a
    text not exactly of that shape has ok=False and goes through `parse_boxes`. Compiled kernel only (else
    every text is ok=False): `extract` 1 parses inside the last <answer>...</answer> pair, 2 takes the whole
    text when there is none; `slot` returns the values in this thread's scratch array of that name, valid
    until the next call with it.
    """
    n = len(texts)
    counts = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return np.zeros((0, 5)), counts, ok
    if extract:
        from grader import _accel

        if not (accel and _accel.available(n)):
            return np.zeros((0, 5)), counts, ok
    if not all(map(str.isascii, texts)):  # non-ASCII texts never have this shape: read them as empty texts
        texts = [t if t.isascii() else "" for t in texts]
    if accel:
        from grader import _accel

        if _accel.available(n):
            return _accel.parse_visual_rft(texts, extract, slot)
    big = "\x00".join(texts).encode("ascii")
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1] + 1, out=starts[1:])
    buf = np.frombuffer(big, dtype=np.uint8)
    cls = _CLASS[buf]
    pos = np.flatnonzero(cls)  # every byte of every number run
    if pos.size == 0 or buf.size == 0:
        return np.zeros((0, 5)), counts, ok
    # number runs and their values
    brk = np.empty(pos.size, dtype=bool)
    brk[0], brk[1:] = True, pos[1:] != pos[:-1] + 1
    r_first = np.flatnonzero(brk)
    run = np.cumsum(brk) - 1
    r_start = pos[r_first]
    r_len = np.diff(np.append(r_first, pos.size))
    r_end = r_start + r_len
    isdot = cls[pos] == 2
    dot_run = run[isdot]
    ndots = np.bincount(dot_run, minlength=r_start.size)
    dot_at = r_end.copy()
    dot_at[dot_run] = pos[isdot]
    digit = ~isdot
    dpos, drun = pos[digit], run[digit]
    after = (r_end[drun] - dpos - 1) - ((dot_at[drun] > dpos) & (ndots[drun] > 0))  # digits after this one
    ndig = r_len - ndots
    bare_dot = (ndots == 1) & ((dot_at == r_start) | (dot_at == r_end - 1))  # `.5` or `10.`: not JSON numbers
    good_run = (ndots <= 1) & (ndig > 0) & (ndig <= 15) & ~bare_dot
    mant = np.bincount(drun, weights=(buf[dpos] - 48) * _POW10[np.clip(after, 0, 22)], minlength=r_start.size)
    frac = np.where(ndots > 0, r_end - dot_at - 1, 0)
    values = mant / _POW10[np.clip(frac, 0, 22)]
    run_sample = np.searchsorted(starts, r_start, side="right") - 1
    bad_runs = np.bincount(run_sample[~good_run], minlength=n) > 0
    k_all, rem = np.divmod(np.bincount(run_sample, minlength=n), 5)
    # the syntax around the numbers: with number runs and spaces removed and " read as ', each text must
    # be exactly the canonical skeleton for its number of boxes
    keep = np.ones(buf.size, dtype=bool)
    keep[pos] = False
    skel = buf[keep].tobytes()
    num_before = np.searchsorted(pos, starts)
    s_lo = (starts - num_before).tolist()
    s_hi = (starts + lens - np.searchsorted(pos, starts + lens)).tolist()
    candidates = np.flatnonzero((rem == 0) & ~bad_runs).tolist()
    k_list = k_all.tolist()
    swapped = np.zeros(n, dtype=bool)
    for i in candidates:
        k = k_list[i]
        s = skel[s_lo[i] : s_hi[i]].replace(b" ", b"").replace(b'"', b"'")
        if s == (_SKELETONS.get((k, 0)) or _skeleton(k, 0)):
            ok[i] = True
        elif k and s == _skeleton(k, 1):  # {'Confidence': c, 'Position': [...]}
            ok[i] = True
            swapped[i] = True
    counts = np.where(ok, k_all, 0)
    vals = values[ok[run_sample]].reshape(-1, 5)
    if swapped.any():
        swap = swapped[np.repeat(np.flatnonzero(ok), counts[ok])]
        vals[swap] = vals[swap][:, [1, 2, 3, 4, 0]]
    return vals, counts, ok


_SKELETONS: dict[tuple[int, int], bytes] = {}


def _skeleton(k: int, variant: int) -> bytes:
    key = (k, variant)
    if key not in _SKELETONS:
        _SKELETONS[key] = b"[" + b",".join([_OBJ_SKELETON[variant]] * k) + b"]"
    return _SKELETONS[key]


def boxes_from_value(value: Any, parser: str = "auto") -> list[tuple[Box, float | None]] | None:
    """Reference boxes from an item field: a list of boxes, of {"Position"|"bbox"|"box"|"bbox_2d": box}
    objects, one flat box, a JSON string of those, or text (parsed like a model answer).
    """
    if isinstance(value, str):
        s = value.strip()
        m = re.search(r"<answer>(.*?)</answer>", s, re.DOTALL)
        if m:
            s = m.group(1).strip()
        if s in ("", "[]"):
            return []
        if s[0] in "[{":
            try:
                return boxes_from_value(json.loads(s), parser)
            except ValueError:
                pass
        return parse_boxes(s, parser)
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)):
        if len(value) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [([float(v) for v in value], None)]
        out = []
        for entry in value:
            if isinstance(entry, dict):
                box = next((entry[k] for k in ("Position", "position", "bbox_2d", "bbox", "box") if k in entry), None)
                conf = next((entry[k] for k in ("Confidence", "confidence", "score") if k in entry), None)
            else:
                box, conf = entry, None
            if not (isinstance(box, (list, tuple)) and len(box) == 4):
                return None
            try:
                out.append(([float(v) for v in box], None if conf is None else float(conf)))
            except (TypeError, ValueError):
                return None
        return out
    return None


# ------------------------------------------------------------------------------- conventions


def to_xyxy(b: np.ndarray, box_format: str) -> np.ndarray:
    """[..., 4] boxes in `box_format` -> corners, ordered so x1 <= x2 and y1 <= y2 (`b` itself when it already is)."""
    b = np.asarray(b, dtype=np.float64)
    if box_format == "xyxy" and (b[..., 0] <= b[..., 2]).all() and (b[..., 1] <= b[..., 3]).all():
        return b  # already in order, the usual case: no copy
    if box_format == "xywh":
        b = np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)
    elif box_format == "cxcywh":
        half = b[..., 2:] / 2
        b = np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)
    out = np.empty(b.shape)
    np.minimum(b[..., :2], b[..., 2:], out=out[..., :2])
    np.maximum(b[..., :2], b[..., 2:], out=out[..., 2:])
    return out


def scale_for(coordinates: str, size: tuple[int, int] | None) -> tuple[float, float]:
    """Divisors (sx, sy) that bring coordinates to [0, 1] of the image; `size` is (width, height)."""
    if coordinates == "norm1000":
        return 1000.0, 1000.0
    if coordinates == "norm1":
        return 1.0, 1.0
    if size is None:
        raise ValueError("pixel coordinates need the image size")
    return float(size[0]), float(size[1])


# ------------------------------------------------------------------------------- IoU


def iou_matrix(a: np.ndarray, b: np.ndarray, giou: bool = False) -> np.ndarray:
    """IoU (or GIoU) of every box of `a` [..., P, 4] with every box of `b` [..., G, 4] -> [..., P, G].

    Zero-area boxes have IoU 0 with everything (no NaN).
    """
    a = a[..., :, None, :]  # [..., P, 1, 4]
    b = b[..., None, :, :]  # [..., 1, G, 4]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        if giou:
            cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
            ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
            hull = cw * ch
            out = np.where(hull > 0, out - (hull - union) / np.where(hull > 0, hull, 1), out)
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 when either has no area)."""
    return float(iou_matrix(np.asarray([a], float), np.asarray([b], float))[0, 0])


def giou(a: Sequence[float], b: Sequence[float]) -> float:
    """Generalised IoU in [-1, 1]: IoU minus the share of the enclosing box that neither covers."""
    return float(iou_matrix(np.asarray([a], float), np.asarray([b], float), giou=True)[0, 0])


def detection_reward(
    gt: Sequence[Sequence[float]],
    preds: Sequence[tuple[Sequence[float], float | None]],
    iou_threshold: float = 0.5,
    giou: bool = False,
) -> tuple[float, float]:
    """(IoU term, confidence term) of one sample, Visual-RFT's rules (see `detection_padded`)."""
    iou_t, conf_t = detection_batch([np.asarray(gt, float).reshape(-1, 4)],
                                    [np.asarray([p for p, _ in preds], float).reshape(-1, 4)],
                                    [np.asarray([1.0 if c is None else c for _, c in preds], float)],
                                    iou_threshold, giou)
    return float(iou_t[0]), float(conf_t[0])


def _pad(arrays: list[np.ndarray], width: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    n = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), n) + ((width,) if width else ()), fill, dtype=np.float64)
    mask = np.zeros((len(arrays), n), dtype=bool)
    for i, a in enumerate(arrays):
        if len(a):
            out[i, : len(a)] = a
            mask[i, : len(a)] = True
    return out, mask


def detection_batch(
    gts: list[np.ndarray],
    preds: list[np.ndarray],
    confs: list[np.ndarray],
    iou_threshold: float = 0.5,
    giou: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Visual-RFT's detection reward for a batch given as lists of per-sample arrays (see `detection_padded`)."""
    g, gmask = _pad(gts, 4, 0.0)
    p, pmask = _pad(preds, 4, 0.0)
    c, _ = _pad(confs, 0, -np.inf)
    return detection_padded(g, gmask, p, pmask, c, iou_threshold, giou)


def detection_padded(g: np.ndarray, gmask: np.ndarray, p: np.ndarray, pmask: np.ndarray, c: np.ndarray,
                     iou_threshold: float = 0.5, giou: bool = False, accel: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Visual-RFT's detection reward for a whole batch at once -> (iou_term [B], confidence_term [B]).

    g [B, G, 4] reference boxes, p [B, P, 4] predictions, c [B, P] confidences, masks for the padding.
    Per sample: predictions sorted by confidence (descending, stable) each take the unmatched reference
    box of highest IoU; the pair matches when that IoU > iou_threshold. IoU term = sum of matched IoUs
    (or (GIoU+1)/2 with giou) / max(#gt, #pred); confidence term = mean over predictions of conf if matched
    else 1 - conf. No gt and no prediction scores (1, 1). Valid entries must come first in each row.
    """
    B = g.shape[0]
    if accel:
        from grader import _accel

        if _accel.available(B):  # the flat kernel, reading row s of the padding as sample s's boxes
            G, P, rows = g.shape[1], p.shape[1], np.arange(B)
            return _accel.detection(np.ascontiguousarray(g).reshape(-1, 4), rows * G, gmask.sum(1), rows,
                                    np.ascontiguousarray(p).reshape(-1, 4),
                                    np.ascontiguousarray(c, dtype=np.float64).reshape(-1), rows * P, pmask.sum(1),
                                    iou_threshold, giou)
    n_gt = gmask.sum(1)
    n_pred = pmask.sum(1)
    P, G = p.shape[1], g.shape[1]
    matched_sum = np.zeros(B)
    conf_sum = np.zeros(B)
    c = np.where(pmask, c, -np.inf)
    if P and G:
        order = np.argsort(-c, axis=1, kind="stable")  # [B, P]
        p = np.take_along_axis(p, order[..., None], axis=1)
        pmask = np.take_along_axis(pmask, order, axis=1)
        c = np.take_along_axis(c, order, axis=1)
        ious = iou_matrix(p, g)  # [B, P, G]
        scores = (iou_matrix(p, g, giou=True) + 1) / 2 if giou else ious
        ious = np.where(gmask[:, None, :], ious, -1.0)
        taken = np.zeros((B, G), dtype=bool)
        rows = np.arange(B)
        for k in range(P):
            cand = np.where(taken, -1.0, ious[:, k, :])  # [B, G]
            j = np.argmax(cand, axis=1)
            best = cand[rows, j]
            hit = (best > iou_threshold) & (best > 0) & pmask[:, k]
            taken[rows[hit], j[hit]] = True
            matched_sum += np.where(hit, scores[rows, k, j], 0.0)
            ck = np.where(pmask[:, k], c[:, k], 0.0)
            conf_sum += np.where(pmask[:, k], np.where(hit, ck, 1.0 - ck), 0.0)
    elif P:  # no reference boxes anywhere: every prediction is unmatched
        ck = np.where(pmask, c, 0.0)
        conf_sum = np.where(pmask, 1.0 - ck, 0.0).sum(1)
    denom = np.maximum(n_gt, n_pred)
    iou_term = np.where(denom > 0, matched_sum / np.maximum(denom, 1), 1.0)
    conf_term = np.where(n_pred > 0, conf_sum / np.maximum(n_pred, 1), np.where(n_gt == 0, 1.0, 0.0))
    return np.clip(iou_term, 0.0, 1.0), np.clip(conf_term, 0.0, 1.0)


def detection_rows(g: np.ndarray, g_rows: np.ndarray, n_refs: int, ref_of: np.ndarray, p: np.ndarray,
                   conf: np.ndarray, p_rows: np.ndarray, iou_threshold: float = 0.5, giou: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`detection_padded` for boxes stored flat -> (iou_term [n], confidence_term [n]), n = len(ref_of).

    g [M, 4] reference boxes of rows g_rows [M] (grouped, in order; n_refs rows in all); p [N, 4]
    predictions and conf [N] of samples p_rows [N] (grouped, in order); sample i is scored against
    reference row ref_of[i], so samples of one prompt share its boxes without copies.
    """
    n = len(ref_of)
    from grader import _accel

    if _accel.available(n):
        g_count = np.bincount(g_rows, minlength=n_refs)
        p_count = np.bincount(p_rows, minlength=n)
        return _accel.detection(g, _starts(g_count), g_count, ref_of, p, conf, _starts(p_count), p_count,
                                iou_threshold, giou)
    gt_pad, gt_mask = pad_rows(g, g_rows, max(n_refs, 1), 4)
    p_pad, p_mask = pad_rows(np.concatenate([p, conf[:, None]], axis=1), p_rows, n, 5)
    return detection_padded(gt_pad[ref_of], gt_mask[ref_of], p_pad[..., :4], p_mask, p_pad[..., 4], iou_threshold,
                            giou, accel=False)


def _starts(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def pad_rows(vals: np.ndarray, rows: np.ndarray, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Scatter boxes `vals` [N, width] belonging to `rows` [N] (grouped, in order) into [n, max count, width]."""
    counts = np.bincount(rows, minlength=n) if len(rows) else np.zeros(n, np.int64)
    P = int(counts.max()) if n else 0
    out = np.zeros((n, P, width))
    mask = np.zeros((n, P), dtype=bool)
    if len(rows):
        pos = np.arange(len(rows)) - _starts(counts)[rows]
        out[rows, pos] = vals
        mask[rows, pos] = True
    return out, mask


def clean_rows(vals: np.ndarray, rows: np.ndarray, dedupe: bool = True, max_boxes: int = 1 << 62) -> np.ndarray | None:
    """Mask [N] of the boxes `vals` [N, >= 4] of rows `rows` [N] (grouped, in order) to keep, or None for all:
    drops boxes with a non-finite value, then (with dedupe) repeated positions within a row, keeping the
    first (Visual-RFT's remove_duplicates), then each row's boxes beyond the first max_boxes.
    """
    from grader import _accel

    if _accel.available(len(rows)):
        return _accel.clean(np.ascontiguousarray(vals), np.ascontiguousarray(rows), dedupe, max_boxes)
    keep = np.isfinite(vals).all(1)
    if dedupe:
        keep[keep] = dedupe_rows(vals[keep], rows[keep])
    if len(rows):
        kept_rows = rows[keep]
        counts = np.bincount(kept_rows)
        if counts.max(initial=0) > max_boxes:
            pos = np.arange(len(kept_rows)) - _starts(counts)[kept_rows]
            keep[keep] = pos < max_boxes
    return None if keep.all() else keep


def dedupe_rows(vals: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mask [N] keeping the first of boxes with identical coordinates within a row (order kept).

    Grouped by (row, hash of the coordinates); neighbours are then compared exactly, so a hash collision can
    only miss a duplicate, never drop a distinct box.
    """
    keep = np.ones(len(rows), dtype=bool)
    if len(rows) < 2:
        return keep
    bits = np.ascontiguousarray(vals[:, :4] + 0.0).view(np.uint64)  # + 0.0 folds -0.0 into 0.0
    with np.errstate(over="ignore"):
        h = (bits * _HASH_MUL).sum(axis=1, dtype=np.uint64)
    order = np.lexsort((h, rows))
    sv, sr, sh = vals[order, :4], rows[order], h[order]
    dup = (sr[1:] == sr[:-1]) & (sh[1:] == sh[:-1]) & np.all(sv[1:] == sv[:-1], axis=1)
    keep[order[1:][dup]] = False
    return keep


_HASH_MUL = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], dtype=np.uint64)


def finite_boxes(boxes: Iterable[tuple[Box, float | None]]) -> list[tuple[Box, float | None]]:
    """Drop boxes with NaN or infinite coordinates."""
    return [(b, c) for b, c in boxes if all(math.isfinite(v) for v in b)]
