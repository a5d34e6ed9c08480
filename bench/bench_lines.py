"""Splitting an uploaded file into lines: `api.validation.iter_lines` against the splitter it replaced, on
files of one long line (the worst case of issue #27, finding 9), in 1 MiB chunks as storage streams them.

    .venv/bin/python bench/bench_lines.py --megabytes 32 64 128

Prints the seconds of each and the ratio; the old splitter re-split its whole buffer on every chunk, so its
time grows with the square of the line's length, and the new one's with the length.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator

from api.validation import iter_lines

CHUNK = 2**20


def old_iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The splitter before the fix (commit 2f93c70, api/validation.py), the peer."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


def seconds(split, megabytes: int) -> float:  # noqa: ANN001
    chunks = [b"x" * CHUNK] * megabytes + [b"\n"]
    start = time.perf_counter()
    for _ in split(chunks):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args()
    print(f"{'MiB':>6} {'old s':>8} {'new s':>8} {'old/new':>8}")
    for mb in args.megabytes:
        old = seconds(old_iter_lines, mb)
        new = seconds(lambda c: iter_lines(c, max_line_bytes=2**40), mb)
        print(f"{mb:>6} {old:>8.3f} {new:>8.3f} {old / new:>8.1f}")


if __name__ == "__main__":
    main()
