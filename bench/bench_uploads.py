"""Memory of the API process during a large upload through the SDK's `client.uploads.upload_file_chunked`.

    .venv/bin/python bench/bench_uploads.py                  # 2 GiB, 64 MiB parts (the SDK's default)
    .venv/bin/python bench/bench_uploads.py --mib 256        # a quick run

Starts `vrft serve` (SQLite, local storage) in a temporary home, writes a fine-tune JSONL file of the size asked
for (rows of ~128 KiB of text, generated when the run starts and deleted when it ends), and measures the
server process's peak resident memory (VmHWM in /proc/PID/status, reset between phases through
/proc/PID/clear_refs) in three phases of the same run:

1. idle: the server started and answered a request (the peer: what the process needs anyway);
2. a plain `client.files.create` of a smaller file (`--peer-mib`, default 64): the single-request upload;
3. `upload_file_chunked` of the whole file, until the completed File has been validated (`processed`).

Prints each peak, the upload's over idle, and the target (300 MB); `--write` puts the table in
bench/results/uploads.md. The server's parts and the file it assembles live under the temporary home, so the
disk needs about three times the size free while it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from tests.helpers import LiveServer  # noqa: E402

MiB = 1024**2
TARGET_MB = 300
RESULTS = Path(__file__).with_name("results") / "uploads.md"


def write_jsonl(path: Path, size: int) -> str:
    """At least `size` bytes of valid supervised rows; returns the md5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    filler = "lorem ipsum dolor sit amet " * (128 * 1024 // 27)
    written = i = 0
    with open(path, "wb") as f:
        while written < size:
            row = (json.dumps({"messages": [{"role": "user", "content": f"row {i}: {filler}"},
                                            {"role": "assistant", "content": str(i)}]}) + "\n").encode()
            f.write(row)
            md5.update(row)
            written += len(row)
            i += 1
    return md5.hexdigest()


class PeakRSS:
    """The peak resident memory of a process: the kernel's VmHWM, resettable through clear_refs (value 5), and
    a sampler of VmRSS as a cross-check where the reset is refused."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sampled = max(self.sampled, self._status_kb("VmRSS"))
            except (OSError, KeyError):
                return

    def reset(self) -> bool:
        self.sampled = self._status_kb("VmRSS")
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak_mb(self) -> float:
        return max(self._status_kb("VmHWM"), self.sampled) / 1024

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=2048, help="size of the chunked upload in MiB (default 2048)")
    ap.add_argument("--peer-mib", type=int, default=64, help="size of the plain /v1/files upload in MiB")
    ap.add_argument("--part-mib", type=int, default=64, help="part size in MiB (the SDK's default is 64)")
    ap.add_argument("--write", action="store_true", help="write the table to bench/results/uploads.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
        home, data = Path(tmp) / "home", Path(tmp) / "data"
        data.mkdir()
        key = "sk-vrft-bench-" + secrets.token_hex(8)
        env = {"VRFT_API_KEY": key, "VRFT_WORKER_TRAIN": "false", "VRFT_SERVING_PREWARM": "false",
               "VRFT_MAX_UPLOAD_BYTES": str(max(args.peer_mib, 1) * MiB * 2)}
        server = LiveServer(env, home).start()
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=1800)
            mem = PeakRSS(server.proc.pid)
            client.models.list()
            time.sleep(1)
            idle = mem.peak_mb()

            peer_path = data / "peer.jsonl"
            write_jsonl(peer_path, args.peer_mib * MiB)
            resettable = mem.reset()
            t = time.perf_counter()
            with peer_path.open("rb") as fh:
                f = client.files.create(file=fh, purpose="fine-tune")
            client.files.wait_for_processing(f.id, poll_interval=0.5, max_wait_seconds=600)
            peer_s, peer = time.perf_counter() - t, mem.peak_mb()
            peer_path.unlink()

            big = data / "big.jsonl"
            t = time.perf_counter()
            md5 = write_jsonl(big, args.mib * MiB)
            gen_s, size = time.perf_counter() - t, big.stat().st_size
            mem.reset()
            t = time.perf_counter()
            up = client.uploads.upload_file_chunked(file=big, mime_type="text/jsonl", purpose="fine-tune",
                                                    part_size=args.part_mib * MiB, md5=md5)
            up_s = time.perf_counter() - t
            big.unlink()  # the server has its own copy now
            upload_peak = mem.peak_mb()
            f = client.files.wait_for_processing(up.file.id, poll_interval=0.5, max_wait_seconds=3600)
            valid_s, validated_peak = time.perf_counter() - t - up_s, mem.peak_mb()
            mem.stop()
            assert up.status == "completed" and up.file.bytes == size, up
            assert f.status == "processed", f.status_details
        finally:
            server.stop()

    parts = -(-size // (args.part_mib * MiB))
    rows = [
        ("idle (started, one request)", idle, "-"),
        (f"`files.create`, {args.peer_mib} MiB, until processed", peer, f"{peer_s:.1f} s"),
        (f"`upload_file_chunked`, {size / MiB:.0f} MiB in {parts} parts of {args.part_mib} MiB, until completed",
         upload_peak, f"{up_s:.1f} s"),
        ("... and until its File is validated (`processed`)", validated_peak, f"+{valid_s:.1f} s"),
    ]
    worst = max(upload_peak, validated_peak)
    lines = [
        "| phase | peak RSS of the API process | time |",
        "|---|---|---|",
        *[f"| {name} | {mb:.0f} MB | {took} |" for name, mb, took in rows],
        "",
        f"Upload peak {worst:.0f} MB = {worst / idle:.2f}x the idle process ({worst - idle:+.0f} MB), "
        f"{worst / peer:.2f}x a {args.peer_mib} MiB `files.create`; target under {TARGET_MB} MB: "
        f"{'met' if worst < TARGET_MB else 'MISSED'}.",
        "",
        f"Peaks are VmHWM of the server process{', reset between phases (clear_refs)' if resettable else ''}, "
        f"and VmRSS sampled every 20 ms. SQLite + local storage; the test data was generated in {gen_s:.0f} s and "
        f"deleted after. openai {openai.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}.",
    ]
    print("\n".join(lines))
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Upload memory (bench/bench_uploads.py)\n\n"
                           f"`{' '.join(['.venv/bin/python', 'bench/bench_uploads.py', *sys.argv[1:]])}`\n\n"
                           + "\n".join(lines) + "\n")
    if worst >= TARGET_MB:
        sys.exit(1)


if __name__ == "__main__":
    main()
