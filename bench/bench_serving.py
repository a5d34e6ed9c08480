"""Serving benchmark: completion tokens/s and p50/p95 latency at 1, 4 and 8 concurrent chat requests (an image
and a question, greedy, a fixed number of completion tokens), served

  (a) through our API (auth, model check, proxy) and by the same vLLM server directly: the proxy's cost;
  (b) by `transformers.generate` on the same weights, batched per concurrency level: what a user without us
      would write.

    python bench/bench_serving.py [--model DIR] [--tokens 64] [--requests 32] [--rounds 3] [--out results.json]

The API runs in its own process (as in production), the vLLM server is the one its serving manager starts;
the load generator is an asyncio httpx client. The proxy's throughput loss is measured two ways, each
`--rounds` times, the median round reported: separate direct and proxied runs that alternate (simple, but on
a shared machine the load drifts between runs), and side by side, direct and proxied requests interleaved in
one run under the same load (`mixed_load`). The side-by-side run also sends requests through a bare
pass-through proxy (`BARE_HOP_SCRIPT`), the least any proxy can do, so that the cost of a hop as such and
the cost our code adds to it are told apart. Without `--model` the tiny Qwen2-VL is built (seed 0) into a
temporary folder.

`--pin` puts the vLLM engine on CPU 0 and everything else (our API, the bare hop, this load generator) on
CPU 1. On a GPU host the engine's compute does not share cores with the proxy; on a 2-core machine without
pinning every hop takes CPU from the engine, which is a cost of the machine rather than of the proxy.
Pinned, the measured loss is the proxy's own latency and CPU, not its competition with the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import free_port, image_data_url  # noqa: E402

KEY = "sk-vrft-bench-0123456789"
MODEL = "tiny-qwen2-vl"
MESSAGES = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url("red", (56, 56))}},
                                         {"type": "text", "text": "Where is the red circle?"}]}]
API_SCRIPT = """
import uvicorn
from api.settings import Settings
from tests.serving.support import serving_app
uvicorn.run(serving_app(Settings()), host="127.0.0.1", port={port}, log_level="warning")
"""
# The peer for the proxy's own cost: the least a proxy can do (aiohttp in, aiohttp out, no auth, no model
# check, no rename), in its own process like ours. Any hop costs something on a 2-core machine where the
# engine wants both cores; our API's loss beyond this one is what our code adds.
BARE_HOP_SCRIPT = """
import aiohttp
from aiohttp import web

async def handle(request):
    body = await request.read()
    async with request.app["session"].post("{upstream}" + request.path, data=body,
                                           headers={{"content-type": "application/json"}}) as r:
        return web.Response(body=await r.read(), status=r.status, content_type="application/json")

async def start(app):
    app["session"] = aiohttp.ClientSession()

app = web.Application()
app.on_startup.append(start)
app.router.add_post("/v1/chat/completions", handle)
web.run_app(app, host="127.0.0.1", port={port}, print=None)
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def load(url: str, model: str, headers: dict, concurrency: int, requests: int, tokens: int) -> dict:
    """`requests` chat completions, `concurrency` at a time; tokens/s over the wall time, latency per request."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    latencies: list[float] = []
    completion_tokens = 0
    queue = list(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal completion_tokens
        while queue:
            queue.pop()
            t = time.perf_counter()
            r = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)
            completion_tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "tokens_per_s": completion_tokens / wall,
        "p50_s": pct(latencies, 0.5),
        "p95_s": pct(latencies, 0.95),
        "requests": requests,
    }


async def mixed_load(
    targets: dict[str, tuple[str, dict]], model: str, concurrency: int, requests: int, tokens: int
) -> dict:
    """`requests` chat completions per target, `concurrency` in flight in all, the targets taken in turn, so
    direct and proxied requests run side by side under the same load from the rest of the machine. At a fixed
    concurrency throughput is concurrency / mean latency, so the proxy's throughput loss is
    1 - mean latency direct / mean latency proxied, without the drift between separate runs."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    queue = [name for _ in range(requests) for name in targets]

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            name = queue.pop()
            url, headers = targets[name]
            t = time.perf_counter()
            r = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            r.raise_for_status()
            latencies[name].append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return {name: statistics.mean(xs) for name, xs in latencies.items()}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto `cpus` (sched_setaffinity on a pid moves only that one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass  # a thread that ended meanwhile


def hf_baseline(folder: Path, concurrency: int, requests: int, tokens: int) -> dict:
    """`transformers.generate`, fp32, greedy, the concurrent requests as one batch."""
    import base64
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # one per CPU this process may use (one when pinned)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    image = Image.open(
        io.BytesIO(base64.b64decode(MESSAGES[0]["content"][0]["image_url"]["url"].split(",", 1)[1]))
    ).convert("RGB")
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the red circle?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(text=[prompt] * concurrency, images=[image] * concurrency, return_tensors="pt", padding=True)
    latencies, produced = [], 0
    t0 = time.perf_counter()
    for _ in range(max(1, requests // concurrency)):
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        latencies += [time.perf_counter() - t] * concurrency
        produced += (out.shape[1] - inputs["input_ids"].shape[1]) * concurrency
    wall = time.perf_counter() - t0
    return {
        "tokens_per_s": produced / wall,
        "p50_s": pct(latencies, 0.5),
        "p95_s": pct(latencies, 0.95),
        "requests": len(latencies),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="an HF model folder (default: build the tiny Qwen2-VL)")
    p.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    p.add_argument("--requests", type=int, default=32, help="requests per run")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating direct/proxied runs per concurrency; the median is kept"
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--pin", action="store_true", help="the engine on CPU 0, API, hop and load generator on CPU 1")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.pin and os.cpu_count() < 2:
        p.error("--pin needs 2 CPUs")

    home = Path(tempfile.mkdtemp(prefix="vrft-bench-"))
    folder = home / "models" / MODEL
    if args.model:
        shutil.copytree(args.model, folder)
    else:
        from trainer.tiny_model import build_tiny_model

        build_tiny_model(folder, seed=0)
    port = free_port()
    env = {
        **os.environ,
        "VRFT_HOME": str(home),
        "VRFT_API_KEY": KEY,
        "VRFT_EMBEDDED_WORKER": "false",
        "VRFT_SERVING_DTYPE": args.dtype,
        "VRFT_SERVING_MAX_NUM_SEQS": str(max(args.concurrency)),
        "VRFT_SERVING_MAX_MODEL_LEN": "1024",
        "VRFT_SERVING_START_WAIT_SECONDS": "900",
        "PYTHONPATH": str(REPO),
    }
    if args.pin:  # the API starts on CPU 0 so that the engine it starts inherits CPU 0; it moves to CPU 1 later
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    api = subprocess.Popen([sys.executable, "-c", API_SCRIPT.format(port=port)], cwd=REPO, env=env,
                           stdout=open(home / "api.log", "wb"), stderr=subprocess.STDOUT,
                           preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if args.pin else None)
    api_proc = psutil.Process(api.pid)
    api_url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    results: dict = {
        "machine": f"{os.cpu_count()} cores",
        "pinned": args.pin,
        "tokens": args.tokens,
        "requests": args.requests,
        "dtype": args.dtype,
        "runs": {},
    }
    try:
        for _ in range(300):
            try:
                if httpx.get(api_url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        t = time.perf_counter()
        r = httpx.post(api_url + "/v1/chat/completions", headers=headers, timeout=900,
                       json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1})
        r.raise_for_status()
        results["cold_start_s"] = time.perf_counter() - t
        engine_log = next((home / "logs" / "serving").glob(f"{MODEL}-*.log"))
        engine_url = f"http://127.0.0.1:{engine_log.stem.rsplit('-', 1)[1]}"
        print(
            f"engine ready after {results['cold_start_s']:.1f} s (first request through the API); "
            f"engine at {engine_url}",
            flush=True,
        )
        if args.pin:
            pin(api.pid, {1})
            pin(os.getpid(), {1})
            engines = api_proc.children(recursive=True)
            print(
                f"pinned: engine pids {[c.pid for c in engines]} on CPUs "
                f"{sorted({x for c in engines for x in c.cpu_affinity()})}, "
                f"API and load generator on CPU 1",
                flush=True,
            )
        hop_port = free_port()
        hop = subprocess.Popen(
            [sys.executable, "-c", BARE_HOP_SCRIPT.format(upstream=engine_url, port=hop_port)],
            stdout=open(home / "hop.log", "wb"),
            stderr=subprocess.STDOUT,
        )  # inherits CPU 1 when pinned
        hop_url = f"http://127.0.0.1:{hop_port}"
        for _ in range(100):
            try:
                httpx.post(
                    hop_url + "/v1/chat/completions",
                    timeout=60,
                    json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1},
                )
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        for c in args.concurrency:
            runs: dict[str, list[dict]] = {"direct": [], "api": []}
            for _ in range(args.rounds):
                runs["direct"].append(asyncio.run(load(engine_url, MODEL, {}, c, args.requests, args.tokens)))
                cpu = sum(api_proc.cpu_times()[:2])
                runs["api"].append(asyncio.run(load(api_url, MODEL, headers, c, args.requests, args.tokens)))
                # the proxy's own cost, free of the engine's noise: CPU time of the API process per request
                runs["api"][-1]["api_cpu_ms_per_request"] = 1000 * (sum(api_proc.cpu_times()[:2]) - cpu) / args.requests
            for name, rs in runs.items():
                results["runs"][f"{name}@{c}"] = sorted(rs, key=lambda x: x["tokens_per_s"])[len(rs) // 2] | {
                    "all_tokens_per_s": [x["tokens_per_s"] for x in rs]
                }
            # paired: each proxied run against the direct run just before it, the median of those ratios
            ratios = sorted(a["tokens_per_s"] / d["tokens_per_s"] for d, a in zip(runs["direct"], runs["api"]))
            results["runs"][f"api@{c}"]["loss_vs_direct"] = 1 - ratios[len(ratios) // 2]
            targets = {"direct": (engine_url, {}), "hop": (hop_url, {}), "api": (api_url, headers)}
            mixed = [asyncio.run(mixed_load(targets, MODEL, c, args.requests, args.tokens)) for _ in range(args.rounds)]
            a = results["runs"][f"api@{c}"]
            for key, (slow, fast) in {
                "mixed_loss_vs_direct": ("api", "direct"),
                "bare_hop_loss_vs_direct": ("hop", "direct"),
                "mixed_loss_vs_bare_hop": ("api", "hop"),
            }.items():
                losses = sorted(1 - m[fast] / m[slow] for m in mixed)
                a[key], a[key + "_rounds"] = losses[len(losses) // 2], losses
            d = results["runs"][f"direct@{c}"]
            print(
                f"c={c}: direct {d['tokens_per_s']:.0f} tok/s, api {a['tokens_per_s']:.0f} tok/s; "
                f"paired throughput loss {100 * a['loss_vs_direct']:+.1f}% "
                f"(per round: {', '.join(f'{100 * (1 - r):+.0f}%' for r in ratios)}); "
                f"API process CPU {a['api_cpu_ms_per_request']:.2f} ms per request; side by side: loss "
                f"{100 * a['mixed_loss_vs_direct']:+.1f}% "
                f"(per round: {', '.join(f'{100 * x:+.0f}%' for x in a['mixed_loss_vs_direct_rounds'])}), "
                f"a bare hop's {100 * a['bare_hop_loss_vs_direct']:+.1f}%, "
                f"ours vs the bare hop {100 * a['mixed_loss_vs_bare_hop']:+.1f}%",
                flush=True,
            )
    finally:
        for proc in (api, locals().get("hop")):
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    for c in args.concurrency:
        results["runs"][f"transformers@{c}"] = hf_baseline(folder, c, args.requests, args.tokens)
        print(
            f"c={c}: transformers.generate {results['runs'][f'transformers@{c}']['tokens_per_s']:.0f} tok/s", flush=True
        )

    print(
        "\n| concurrency | server | completion tok/s | p50 s | p95 s | loss vs direct, separate runs "
        "| loss vs direct, side by side | bare hop's loss vs direct, side by side | loss vs bare hop, side by side "
        "| API CPU ms/request |\n"
        + "|---" * 10
        + "|"
    )
    for c in args.concurrency:
        for name in ("direct", "api", "transformers"):
            x = results["runs"][f"{name}@{c}"]
            label = {
                "direct": "vLLM directly",
                "api": "vLLM through our API",
                "transformers": "transformers.generate (batch)",
            }[name]
            cells = [
                f"{100 * x[k]:+.1f}%" if k in x else ""
                for k in ("loss_vs_direct", "mixed_loss_vs_direct", "bare_hop_loss_vs_direct", "mixed_loss_vs_bare_hop")
            ]
            cpu = f"{x['api_cpu_ms_per_request']:.2f}" if "api_cpu_ms_per_request" in x else ""
            print(
                f"| {c} | {label} | {x['tokens_per_s']:.0f} | {x['p50_s']:.3f} | {x['p95_s']:.3f} "
                f"| {' | '.join(cells)} | {cpu} |"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
