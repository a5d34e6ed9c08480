"""Optional compiled kernels (numba, in `grader._kernels`) for the hot path of the `iou` grader on large batches.

Same semantics and bit-identical results as the numpy code in `grader.boxes` (tests compare them);
used only when numba is importable (the project's ML stack brings it with vLLM), the batch is large
enough to pay for the one-time compilation (cached on disk), and VRFT_GRADER_NUMBA is not 0.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

log = logging.getLogger(__name__)

MIN_BATCH = 64
"""Smaller batches use numpy: not worth compiling for."""

_loaded = None
_failed = False


def available(n: int) -> bool:
    return n >= MIN_BATCH and os.environ.get("VRFT_GRADER_NUMBA", "1") != "0" and _load() is not None


def _load():
    global _loaded, _failed
    if _loaded is None and not _failed:
        try:
            _loaded = _build()
        except Exception as e:  # numba missing or broken: numpy it is
            _failed = True
            log.info("numba kernels unavailable (%s); using numpy", e)
    return _loaded


def _build():
    from grader import _kernels as k  # imports numba

    return {"parse": k.parse, "detection": k.detection, "clean": k.clean, "kp": k.POSITION, "kc": k.CONFIDENCE,
            "ta": k.ANSWER_OPEN, "tb": k.ANSWER_CLOSE}


_local = threading.local()
SCRATCH_KEEP = 64 << 20
"""Scratch arrays up to this many bytes are kept per thread for the next batch."""
CHUNK = 1 << 16
"""Texts are encoded about this many bytes at a time."""


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array of `shape` for `name`, reused across batches on this thread.

    A fresh multi-MB array per batch costs more than the parsing itself: the allocator hands freed memory
    back to the OS and every page faults in again on the next batch. Valid until the next `_scratch(name)`
    call on the thread.
    """
    buf = getattr(_local, name, None)
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]:
        buf = np.empty((max(shape[0], 1024), *shape[1:]), dtype=dtype)
        if buf.nbytes <= SCRATCH_KEEP:
            setattr(_local, name, buf)
    return buf[: shape[0]]


def parse_visual_rft(texts: list[str], extract: int = 0, slot: str | None = None):
    """boxes.parse_visual_rft_batch for ASCII `texts` -> (values [N, 5], counts [n], ok [n]).

    With `slot`, the values are a view of a scratch array of that name (see `_scratch`), else a new array.
    """
    k = _load()
    n = len(texts)
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    ends = np.cumsum(lens)
    starts = ends - lens
    total = int(ends[-1]) if n else 0
    b = _scratch("text", (total,), np.uint8)
    # encoded a slice of texts at a time, into the reused buffer (no separators: the kernel keeps to
    # starts/lens): a whole-batch str and its bytes would be two more fresh multi-MB buffers
    cuts = [0, *np.searchsorted(ends, np.arange(CHUNK, total, CHUNK), side="right").tolist(), n]
    for a, z in zip(cuts, cuts[1:]):
        if a < z:
            chunk = "".join(texts[a:z]).encode("ascii")
            b[starts[a] : starts[a] + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    # the shortest box the kernel reads, {'Position':[0,0,0,0],'Confidence':0}, takes 37 bytes: enough rows
    # (one more for a box being read); the kernel also stops at the end of `out` (that text is then not ok)
    rows = total // 37 + 2
    out = _scratch("boxes-" + slot, (rows, 5), np.float64) if slot else np.empty((rows, 5))
    counts = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)
    w = k["parse"](b, starts, lens, out, counts, ok, k["kp"], k["kc"], extract, k["ta"], k["tb"])
    return out[:w], counts, ok


def clean(vals: np.ndarray, rows: np.ndarray, dedupe: bool, max_boxes: int) -> np.ndarray | None:
    """Mask of the boxes to keep (see boxes.clean_rows), or None when all are kept."""
    keep = np.empty(rows.size, dtype=np.bool_)
    dropped = _load()["clean"](vals, rows, bool(dedupe), int(max_boxes), keep)
    return keep if dropped else None


def detection(g, g_start, g_count, ref_of, p, conf, p_start, p_count, iou_threshold: float, giou: bool):
    """-> (iou_term [n], confidence_term [n]) of n = ref_of.size samples stored flat (see the kernel)."""
    n = ref_of.size
    iou_out = np.empty(n)
    conf_out = np.empty(n)
    _load()["detection"](g, g_start, g_count, ref_of, p, conf, p_start, p_count, float(iou_threshold), bool(giou),
                         iou_out, conf_out)
    return iou_out, conf_out
