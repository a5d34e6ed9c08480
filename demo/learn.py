"""The learning demo (`python -m demo`): few-shot grounding, SFT warm start against +SFT against +RFT.

1. The base: a tiny Qwen2-VL-architecture model pretrained on 2-shape scenes with relations in plain words
   (`demo.base.ensure_base`; built once, cached in ``$VRFT_HOME/models/vrft-demo-base``).
2. The task: 3-shape scenes whose relations are in compass words ("the red circle west of the blue star"), with a
   decoy of the target's class on the anchor's other side in 75% of them (`demo.scenes.DEMO_SCENES`). The base
   finds shapes beside an anchor but has never read the words.
3. Through the openai SDK against `vrft serve` (started here unless one answers on --url, with the same
   VRFT_HOME): a warm-start SFT job on the base, then from it +SFT and +RFT (GRPO with the IoU grader) on the same
   training rows and the same number of trained sequences (`demo.learning.run_stages`, the learning benchmark's
   code: research/results/learning.vocabulary.md has its headline over 6 seeds).
4. The four models scored on held-out rows (mean IoU, local greedy decoding of the served weights); a table,
   ``results.json``, ``learning.png`` and ``table.md`` in --out, and the dashboard address of the RFT job.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import synthetic
from demo.base import DEMO_RECIPE, ensure_base
from demo.client import api_key, healthy, start_server, stop_server, vrft_home
from demo.learning import LABELS, MAX_TOKENS, STAGES, run_stages
from demo.scenes import DEMO_SCENES, RELATION_WORDS
from demo.scenes import generate as scenes

TASK = "grounding"
FEW_SHOT_ROWS = 256
"""Training rows (the learning benchmark's few-shot setting)."""


def recipe(n_train: int, n_eval: int) -> argparse.Namespace:
    """The jobs' hyperparameters (research/learning.py's flags of the headline's few-shot command): a warm start
    of 1,024 trained sequences at lr multiplier 0.1; then, vision tower frozen, +SFT at 0.1 and +RFT (G = 8, batch
    4 prompts, beta 0.04, temperature 1) at 1, each on 8,192 sequences of the same rows."""
    k = max(1, round(1024 / n_train))  # passes over the rows that make 1,024 sequences
    return argparse.Namespace(
        base_model=DEMO_RECIPE.name, n_train=n_train, n_eval=n_eval, batch_size=4,
        warm_epochs=k, warm_lr_multiplier=0.1,
        sft_epochs=8 * k, sft_lr_multiplier=0.1,
        rft_epochs=k, rft_lr_multiplier=1.0, num_generations=8, temperature=1.0, beta=0.04,
        loss_type=None, scale_rewards=None, freeze_vision=True)


def datasets(seed: int, n_train: int, n_eval: int) -> dict[str, list[dict]]:
    """The few-shot rows (with and without answers) and the held-out rows: research/learning.py's for the seed."""
    return {"sft": scenes(TASK, n_train, seed=seed, sft=True, **DEMO_SCENES),
            "rft": scenes(TASK, n_train, seed=seed, **DEMO_SCENES),
            "eval": scenes(TASK, n_eval, seed=10_000 + seed, split="valid", **DEMO_SCENES)}


def table(run: dict) -> str:
    """The held-out table, markdown."""
    e = run["eval"]
    warm = e["warm"]["score"]
    lines = ["| model | held-out mean IoU | vs warm start | answers in format |", "|---|---|---|---|"]
    for stage in STAGES:
        delta = "" if stage in ("base", "warm") else f"{e[stage]['score'] - warm:+.3f}"
        lines.append(f"| {LABELS[stage]} | {e[stage]['score']:.3f} | {delta} | {e[stage]['format_rate']:.2f} |")
    return "\n".join(lines)


def plot(path: Path, run: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(STAGES))
    scores = [run["eval"][s]["score"] for s in STAGES]
    a.bar(xs, scores, color=["#bbbbbb", "#88aadd", "#4477aa", "#cc6633"])
    for x, y in zip(xs, scores):
        a.text(x, y + 0.01, f"{y:.3f}", ha="center", fontsize=9)
    a.set_xticks(list(xs), [LABELS[s].replace(" (", "\n(") for s in STAGES], fontsize=8)
    a.set(title="held-out rows", ylabel="mean IoU", ylim=(0, max(0.05, max(scores) * 1.15)))
    curve = [r for r in run["jobs"]["rft"]["train_reward_curve"] if r is not None]
    if curve:
        window = max(1, len(curve) // 16)
        smooth = [sum(curve[max(0, i - window + 1):i + 1]) / len(curve[max(0, i - window + 1):i + 1])
                  for i in range(len(curve))]
        b.plot(range(1, len(curve) + 1), curve, color="#cc6633", alpha=0.3, label="per step")
        b.plot(range(1, len(curve) + 1), smooth, color="#cc6633", label=f"mean of {window} steps")
        b.legend()
    b.set(title="+RFT: training reward ((IoU + format) / 2)", xlabel="optimizer step", ylabel="reward")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    home = vrft_home()
    # the evaluation reads the service's storage and database through VRFT_HOME; the trainer's rollouts use
    # transformers (no vLLM engine start per RFT job on a small CPU machine) unless VRFT_ROLLOUT_ENGINE says
    os.environ["VRFT_HOME"] = str(home)
    os.environ.setdefault("VRFT_ROLLOUT_ENGINE", "hf")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if (os.cpu_count() or 1) <= 2:  # one torch thread a process (the server's trainer too): two that wait on each
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # other crawl as soon as anything else runs on the machine
    out = (args.out or home / "demo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== the learning demo (VRFT_HOME={home}); `python -m demo --quick` for the plumbing-only run", flush=True)

    t0 = time.time()
    base = ensure_base(home)
    base_seconds = time.time() - t0
    base_info = json.loads((base / "vrft_pretrain.json").read_text())

    hp = recipe(args.n_train, args.n_eval)
    data = datasets(args.seed, args.n_train, args.n_eval)
    spec = synthetic.grader_spec(TASK, short=True)
    words = ", ".join(f"'{w}'" for w in RELATION_WORDS["compass"].values())
    print(f"== the task: {args.n_train} training rows, {args.n_eval} held-out rows of 3-shape scenes with the "
          f"relations in words the base never read ({words}); e.g. {data['eval'][0]['expression']!r}", flush=True)

    proc = None if healthy(args.url) else start_server(args.url, home)
    try:
        import openai

        client = openai.OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=api_key(args.api_key, home),
                               max_retries=3, timeout=60)
        t0 = time.time()
        result = run_stages(client, TASK, args.seed, hp, data, spec, MAX_TOKENS[TASK])
        jobs_seconds = time.time() - t0
        rft_id = result["jobs"]["rft"]["id"]
        dashboard = f"{args.url.rstrip('/')}/dashboard#/jobs/{rft_id}"
        text = table(result)
        results = {
            "task": TASK, "seed": args.seed, "scenes": DEMO_SCENES, "hyperparameters": vars(hp), "grader": spec,
            "base_model": {"folder": str(base), "recipe": base_info.get("recipe"), "steps": base_info.get("step"),
                           "held_out_iou_own_scenes": (base_info.get("eval") or {}).get("score"),
                           "build_seconds": base_info.get("seconds")},
            "url": args.url, "dashboard": dashboard,
            "seconds": {"base": round(base_seconds, 1), "jobs_and_eval": round(jobs_seconds, 1),
                        "total": round(time.time() - t_start, 1)},
            **result,
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "table.md").write_text(text + "\n")
        png = out / "learning.png"
        plot(png, result, f"few-shot grounding with new relation words, seed {args.seed}: {args.n_train} training "
                          f"rows, {args.n_eval} held-out rows, base {DEMO_RECIPE.name}")
        gain = result["eval"]["rft"]["score"] - result["eval"]["warm"]["score"]
        print()
        print(f"held-out mean IoU ({args.n_eval} rows, greedy), seed {args.seed}:")
        print(text)
        print()
        print(f"+RFT beats its warm start by {gain:+.3f} mean IoU: it learnt the new words from the grader's reward "
              "alone." if gain > 0 else f"+RFT does NOT beat its warm start here ({gain:+.3f} mean IoU).")
        print(f"outputs: {out}/results.json, {png}, {out}/table.md  (total {(time.time() - t_start) / 60:.1f} min)")
        if proc is not None and not args.keep_serving:
            print(f"open the dashboard on the RFT job: {dashboard}\n  (this demo's server stops now: run "
                  f"`VRFT_HOME={home} vrft serve` first, or `python -m demo --keep-serving` next time; sign in "
                  f"with the API key in {home / 'api_key'})", flush=True)
        else:
            print(f"open the dashboard on the RFT job: {dashboard}  (sign in with the API key in "
                  f"{home / 'api_key'})", flush=True)
        if proc is not None and args.keep_serving:
            print("the server keeps running; Ctrl-C stops it", flush=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        if proc is not None:
            print("stopping the server this demo started", flush=True)
            stop_server(proc)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("the learning demo (the default)")
    g.add_argument("--n-train", type=int, default=FEW_SHOT_ROWS, help="few-shot training rows (default 256)")
    g.add_argument("--n-eval", type=int, default=64, help="held-out rows (default 64)")
    g.add_argument("--keep-serving", action="store_true",
                   help="when this demo started the server, keep it running at the end (for the dashboard)")
