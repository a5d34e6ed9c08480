"""Optional compiled kernels (numba) for the hot path of the `iou` grader on large batches.

Same semantics and bit-identical results as the numpy code in `grader.boxes` (tests compare them);
used only when numba is importable (the project's ML stack brings it with vLLM), the batch is large
enough to pay for the one-time compilation (cached on disk), and VRFT_GRADER_NUMBA is not 0.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

MIN_BATCH = 64
"""Smaller batches use numpy: not worth compiling for."""

_kernels = None
_failed = False


def available(n: int) -> bool:
    return n >= MIN_BATCH and os.environ.get("VRFT_GRADER_NUMBA", "1") != "0" and _load() is not None


def _load():
    global _kernels, _failed
    if _kernels is None and not _failed:
        try:
            _kernels = _build()
        except Exception as e:  # numba missing or broken: numpy it is
            _failed = True
            log.info("numba kernels unavailable (%s); using numpy", e)
    return _kernels


def _build():
    import numba

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def skip_ws(b, i, end):
        while i < end and (b[i] == 32 or b[i] == 10 or b[i] == 9 or b[i] == 13):
            i += 1
        return i

    @jit
    def number(b, i, end):
        """Digits with at most one dot (no sign, no exponent, <= 15 digits) -> (value, next) or (nan, -1)."""
        mant = 0.0
        frac = 0
        dot = False
        nd = 0
        while i < end:
            c = b[i]
            if 48 <= c <= 57:
                mant = mant * 10.0 + (c - 48)
                nd += 1
                if dot:
                    frac += 1
            elif c == 46 and not dot:
                dot = True
            else:
                break
            i += 1
        if nd == 0 or nd > 15 or (i < end and (b[i] == 46 or b[i] == 101 or b[i] == 69)):
            return np.nan, -1
        return mant / 10.0 ** frac, i

    @jit
    def key(b, i, end, name):
        """'name' or "name" then a colon -> index after it, or -1."""
        if i >= end or not (b[i] == 39 or b[i] == 34):
            return -1
        q = b[i]
        i += 1
        for j in range(name.size):
            if i + j >= end or b[i + j] != name[j]:
                return -1
        i += name.size
        if i >= end or b[i] != q:
            return -1
        i = skip_ws(b, i + 1, end)
        if i >= end or b[i] != 58:
            return -1
        return skip_ws(b, i + 1, end)

    @jit
    def position(b, i, end, out, w):
        """[x1, y1, x2, y2] into out[w, :4] -> index after ']' or -1."""
        if i >= end or b[i] != 91:
            return -1
        i = skip_ws(b, i + 1, end)
        for j in range(4):
            v, i = number(b, i, end)
            if i < 0:
                return -1
            out[w, j] = v
            i = skip_ws(b, i, end)
            if j < 3:
                if i >= end or b[i] != 44:
                    return -1
                i = skip_ws(b, i + 1, end)
        if i >= end or b[i] != 93:
            return -1
        return skip_ws(b, i + 1, end)

    @jit
    def find(b, lo, hi, pat):
        first = pat[0]
        for i in range(lo, hi - pat.size + 1):
            if b[i] != first:
                continue
            match = True
            for j in range(1, pat.size):
                if b[i + j] != pat[j]:
                    match = False
                    break
            if match:
                return i
        return -1

    @jit
    def parse(b, starts, lens, out, counts, ok, kp, kc, extract, ta, tb):
        """Every text must be exactly [{'Position': [..4..], 'Confidence': c}, ...] (either key order).

        extract 1: parse what is inside the last <answer>...</answer> (no such pair: not ok);
        extract 2: the same, or the whole text when it has no pair.
        With extract, the first <answer> is parsed forward; the boxes must be followed by </answer> and no
        later </answer> may exist (else not ok, and the caller's slow path applies the exact rule).
        """
        w = 0
        for s in range(starts.size):
            i = starts[s]
            end = i + lens[s]
            w0 = w
            tagged = False
            if extract:
                open_ = find(b, i, end, ta)
                if open_ >= 0:
                    i, tagged = open_ + ta.size, True
                elif extract == 1 or find(b, i, end, tb) >= 0:
                    continue
            good = False
            i = skip_ws(b, i, end)
            if i < end and b[i] == 91:
                i = skip_ws(b, i + 1, end)
                if i < end and b[i] == 93:
                    i = skip_ws(b, i + 1, end)
                    good = i == end or tagged
                else:
                    while i < end and b[i] == 123:
                        i = skip_ws(b, i + 1, end)
                        j = key(b, i, end, kp)
                        if j >= 0:  # Position first
                            i = position(b, j, end, out, w)
                            if i < 0 or i >= end or b[i] != 44:
                                break
                            i = key(b, skip_ws(b, i + 1, end), end, kc)
                            if i < 0:
                                break
                            v, i = number(b, i, end)
                            if i < 0:
                                break
                            out[w, 4] = v
                        else:  # Confidence first
                            i = key(b, i, end, kc)
                            if i < 0:
                                break
                            v, i = number(b, i, end)
                            if i < 0:
                                break
                            out[w, 4] = v
                            i = skip_ws(b, i, end)
                            if i >= end or b[i] != 44:
                                break
                            i = key(b, skip_ws(b, i + 1, end), end, kp)
                            if i < 0:
                                break
                            i = position(b, i, end, out, w)
                            if i < 0:
                                break
                        w += 1
                        i = skip_ws(b, i, end)
                        if i >= end or b[i] != 125:
                            break
                        i = skip_ws(b, i + 1, end)
                        if i < end and b[i] == 44:
                            i = skip_ws(b, i + 1, end)
                            continue
                        if i < end and b[i] == 93:
                            good = skip_ws(b, i + 1, end) == end if not tagged else True
                            i = skip_ws(b, i + 1, end)
                        break
            if good and tagged:  # </answer> right after the boxes, and no later one
                good = (i + tb.size <= end and find(b, i, i + tb.size, tb) == i
                        and find(b, i + tb.size, end, tb) < 0)
            if good:
                ok[s] = True
                counts[s] = w - w0
            else:
                w = w0
        return w

    @jit
    def detection(g, gn, p, c, pn, thr, giou, iou_out, conf_out):
        """Visual-RFT greedy matching per sample (see boxes.detection_padded), one sample at a time."""
        for s in range(g.shape[0]):
            ng, npred = gn[s], pn[s]
            if ng == 0 and npred == 0:
                iou_out[s] = 1.0
                conf_out[s] = 1.0
                continue
            order = np.argsort(-c[s, :npred], kind="mergesort")
            taken = np.zeros(ng, dtype=np.bool_)
            msum = 0.0
            csum = 0.0
            for r in range(npred):
                k = order[r]
                px1, py1, px2, py2 = p[s, k, 0], p[s, k, 1], p[s, k, 2], p[s, k, 3]
                best, bj = -1.0, -1
                for j in range(ng):
                    if taken[j]:
                        continue
                    gx1, gy1, gx2, gy2 = g[s, j, 0], g[s, j, 1], g[s, j, 2], g[s, j, 3]
                    iw = min(px2, gx2) - max(px1, gx1)
                    ih = min(py2, gy2) - max(py1, gy1)
                    inter = (iw if iw > 0 else 0.0) * (ih if ih > 0 else 0.0)
                    union = (px2 - px1) * (py2 - py1) + (gx2 - gx1) * (gy2 - gy1) - inter
                    v = inter / union if union > 0 else 0.0
                    if v > best:
                        best, bj = v, j
                conf = c[s, k]
                if bj >= 0 and best > thr and best > 0:
                    taken[bj] = True
                    if giou:
                        gx1, gy1, gx2, gy2 = g[s, bj, 0], g[s, bj, 1], g[s, bj, 2], g[s, bj, 3]
                        iw = min(px2, gx2) - max(px1, gx1)
                        ih = min(py2, gy2) - max(py1, gy1)
                        inter = (iw if iw > 0 else 0.0) * (ih if ih > 0 else 0.0)
                        union = (px2 - px1) * (py2 - py1) + (gx2 - gx1) * (gy2 - gy1) - inter
                        hull = (max(px2, gx2) - min(px1, gx1)) * (max(py2, gy2) - min(py1, gy1))
                        gv = best - (hull - union) / hull if hull > 0 else best
                        msum += (gv + 1.0) / 2.0
                    else:
                        msum += best
                    csum += conf
                else:
                    csum += 1.0 - conf
            denom = max(ng, npred)
            iou_out[s] = min(1.0, max(0.0, msum / denom))
            conf_out[s] = min(1.0, max(0.0, csum / npred)) if npred > 0 else 0.0

    @jit
    def dedupe(vals, rows, keep):
        """keep[i] = False when box i repeats an earlier box of its row (rows grouped, in order)."""
        start = 0
        n = rows.size
        while start < n:
            end = start
            while end < n and rows[end] == rows[start]:
                end += 1
            for i in range(start + 1, end):
                for j in range(start, i):
                    if (keep[j] and vals[i, 0] == vals[j, 0] and vals[i, 1] == vals[j, 1]
                            and vals[i, 2] == vals[j, 2] and vals[i, 3] == vals[j, 3]):
                        keep[i] = False
                        break
            start = end

    def u8(s: bytes) -> np.ndarray:
        return np.frombuffer(s, dtype=np.uint8).copy()

    return {"parse": parse, "detection": detection, "dedupe": dedupe, "kp": u8(b"Position"),
            "kc": u8(b"Confidence"), "ta": u8(b"<answer>"), "tb": u8(b"</answer>")}


def parse_visual_rft(texts, big: bytes, lens: np.ndarray, starts: np.ndarray, extract: int = 0):
    k = _load()
    b = np.frombuffer(big, dtype=np.uint8)
    n = len(texts)
    out = np.empty((b.size // 24 + 1, 5))
    counts = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)
    w = k["parse"](b, starts, lens, out, counts, ok, k["kp"], k["kc"], extract, k["ta"], k["tb"])
    return out[:w].copy(), counts, ok


def dedupe(vals: np.ndarray, rows: np.ndarray) -> np.ndarray:
    keep = np.ones(rows.size, dtype=np.bool_)
    _load()["dedupe"](np.ascontiguousarray(vals), np.ascontiguousarray(rows), keep)
    return keep


def detection(g, gmask, p, pmask, c, iou_threshold: float, giou: bool):
    """Padded inputs whose valid entries come first in each row (as pad_rows makes them)."""
    k = _load()
    n = g.shape[0]
    iou_out = np.zeros(n)
    conf_out = np.zeros(n)
    k["detection"](np.ascontiguousarray(g), gmask.sum(1), np.ascontiguousarray(p), np.ascontiguousarray(c),
                   pmask.sum(1), float(iou_threshold), bool(giou), iou_out, conf_out)
    return iou_out, conf_out
