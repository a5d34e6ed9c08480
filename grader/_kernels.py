"""The numba kernels behind `grader._accel` (imported only when numba is; see there).

Module-level functions, so that numba caches them on disk (it does not cache closures that inline).
"""

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True)
inline = numba.njit(cache=True, nogil=True, inline="always")  # parse is ~15% faster with `position` inlined;
# inlining every helper gains little more and compiles 4x slower
pow10 = 10.0 ** np.arange(16)


def _u8(s: bytes) -> np.ndarray:
    return np.frombuffer(s, dtype=np.uint8).copy()


POSITION, CONFIDENCE = _u8(b"Position"), _u8(b"Confidence")
ANSWER_OPEN, ANSWER_CLOSE = _u8(b"<answer>"), _u8(b"</answer>")


@jit
def skip_ws(b, i, end):
    while i < end and (b[i] == 32 or b[i] == 10 or b[i] == 9 or b[i] == 13):
        i += 1
    return i


@jit
def number(b, i, end):
    """Digits with at most one dot between digits (no sign, no exponent, no `10.` or `.5`, as in JSON and
    `parse_boxes`; <= 15 digits) -> (value, next) or (nan, -1)."""
    first = i
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
    if (nd == 0 or nd > 15 or (i < end and (b[i] == 46 or b[i] == 101 or b[i] == 69))
            or (dot and (frac == 0 or b[first] == 46))):
        return np.nan, -1
    return mant / pow10[frac], i  # a table, not a pow() call: exact powers, same values


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


@inline
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
                while i < end and b[i] == 123 and w < out.shape[0]:
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
def detection(g, g_start, g_count, ref_of, p, conf, p_start, p_count, thr, giou, iou_out, conf_out):
    """Visual-RFT greedy matching per sample (see boxes.detection_padded), one sample at a time.

    Boxes are stored flat: sample s has predictions p[p_start[s]:][:p_count[s]] and the reference
    boxes of row r = ref_of[s], g[g_start[r]:][:g_count[r]] (samples of one prompt share them).
    """
    order = np.empty(max(p_count.max(), 1) if p_count.size else 1, dtype=np.int64)
    G = max(g_count.max(), 1) if g_count.size else 1
    # the sample's reference boxes, one array per coordinate: the IoU loop over them vectorises (SIMD)
    gx1, gy1, gx2, gy2, g_area, iou = np.empty(G), np.empty(G), np.empty(G), np.empty(G), np.empty(G), np.empty(G)
    # 0.0 for a free reference box, -inf once matched: added to its IoU, so that picking the best is
    # branch-free (a third faster than skipping matched boxes with an `if`)
    taken = np.empty(G)
    for s in range(ref_of.size):
        r = ref_of[s]
        g0, ng, p0, npred = g_start[r], g_count[r], p_start[s], p_count[s]
        if ng == 0 and npred == 0:
            iou_out[s] = 1.0
            conf_out[s] = 1.0
            continue
        # confidence descending, ties in input order (= a stable argsort of -conf)
        if npred <= 64:  # insertion sort: no allocation, fast on the usual handful of boxes
            for a in range(npred):
                x = conf[p0 + a]
                j = a
                while j > 0 and conf[p0 + order[j - 1]] < x:
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = a
        else:
            order[:npred] = np.argsort(-conf[p0:p0 + npred], kind="mergesort")
        for j in range(ng):
            gx1[j], gy1[j], gx2[j], gy2[j] = g[g0 + j, 0], g[g0 + j, 1], g[g0 + j, 2], g[g0 + j, 3]
            g_area[j] = (gx2[j] - gx1[j]) * (gy2[j] - gy1[j])
            taken[j] = 0.0
        msum = 0.0
        csum = 0.0
        for rank in range(npred):
            k = p0 + order[rank]
            px1, py1, px2, py2 = p[k, 0], p[k, 1], p[k, 2], p[k, 3]
            p_area = (px2 - px1) * (py2 - py1)
            for j in range(ng):
                iw = min(px2, gx2[j]) - max(px1, gx1[j])
                ih = min(py2, gy2[j]) - max(py1, gy1[j])
                inter = (iw if iw > 0 else 0.0) * (ih if ih > 0 else 0.0)
                union = p_area + g_area[j] - inter
                iou[j] = (inter / union if union > 0 else 0.0) + taken[j]
            best, bj = -1.0, -1
            for j in range(ng):
                better = iou[j] > best
                best = iou[j] if better else best
                bj = j if better else bj
            c = conf[k]
            if bj >= 0 and best > thr and best > 0:
                taken[bj] = -np.inf
                if giou:
                    iw = min(px2, gx2[bj]) - max(px1, gx1[bj])
                    ih = min(py2, gy2[bj]) - max(py1, gy1[bj])
                    inter = (iw if iw > 0 else 0.0) * (ih if ih > 0 else 0.0)
                    union = p_area + g_area[bj] - inter
                    hull = (max(px2, gx2[bj]) - min(px1, gx1[bj])) * (max(py2, gy2[bj]) - min(py1, gy1[bj]))
                    gv = best - (hull - union) / hull if hull > 0 else best
                    msum += (gv + 1.0) / 2.0
                else:
                    msum += best
                csum += c
            else:
                csum += 1.0 - c
        denom = max(ng, npred)
        iou_out[s] = min(1.0, max(0.0, msum / denom))
        conf_out[s] = min(1.0, max(0.0, csum / npred)) if npred > 0 else 0.0


@jit
def clean(vals, rows, dedupe, max_boxes, keep):
    """keep[i] = box i is finite, (with dedupe) repeats no earlier kept box of its row, and is among
    the first max_boxes kept of its row (rows grouped, in order). Returns how many were dropped."""
    start = 0
    n = rows.size
    dropped = 0
    while start < n:
        end = start
        while end < n and rows[end] == rows[start]:
            end += 1
        kept = 0
        for i in range(start, end):
            good = kept < max_boxes
            for c in range(vals.shape[1]):
                if not np.isfinite(vals[i, c]):
                    good = False
            if good and dedupe:
                for j in range(start, i):
                    if (keep[j] and vals[i, 0] == vals[j, 0] and vals[i, 1] == vals[j, 1]
                            and vals[i, 2] == vals[j, 2] and vals[i, 3] == vals[j, 3]):
                        good = False
                        break
            keep[i] = good
            kept += good
            dropped += not good
        start = end
    return dropped
