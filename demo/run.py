"""The demo, through the openai SDK only; it starts `vrft serve` on --url unless one answers there.

By default, the learning demo (`demo.learn`): it builds once (cached in $VRFT_HOME) a small pretrained base, then
runs the few-shot grounding comparison on one seed (SFT warm start, +SFT, +RFT), scored on held-out rows; a table,
`results.json` and `learning.png` in --out, and the dashboard address of the RFT job.

--quick (or --plumbing for a longer one): the plumbing-only run. On a synthetic task, an SFT job on tiny-qwen2-vl,
then an RFT job from the SFT model; base, SFT and RFT evaluated on a held-out set (graded locally), a table,
`results.json` and `curves.png` in --out. The tiny model has random weights: the numbers say what was measured,
not that anything was learned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
from tqdm import tqdm

import synthetic
from demo import learn
from demo.client import BASE, api_key, follow, healthy, start_server, stop_server, upload, vrft_home

# ---------------------------------------------------------------- evaluation

def answer_text(client: openai.OpenAI, model: str, row: dict, max_tokens: int) -> str:
    r = client.chat.completions.create(model=model, messages=row["messages"], temperature=0, max_tokens=max_tokens)
    return r.choices[0].message.content or ""


def evaluate(client: openai.OpenAI, model: str, rows: list[dict], spec: dict, max_tokens: int, label: str) -> dict:
    import grader

    t0 = time.time()
    outputs = []
    for row in tqdm(rows, desc=f"eval {label}", unit="row", dynamic_ncols=True, file=sys.stdout):
        outputs.append(answer_text(client, model, row, max_tokens))
    seconds = time.time() - t0
    batch = grader.compile(spec).grade(outputs, rows)
    sub = batch.sub_rewards
    mean = lambda xs: float(statistics.fmean(xs)) if xs else 0.0  # noqa: E731
    return {
        "model": model,
        "n": len(rows),
        "mean_reward": mean(batch.rewards),
        "task_score": mean(sub.get("task", batch.rewards)),
        "format_rate": mean(sub.get("format", [])),
        "seconds": round(seconds, 1),
        "samples": [
            {"id": r["id"], "reference": r["solution"], "output": o, "reward": x}
            for r, o, x in zip(rows, outputs, batch.rewards)
        ],
    }


# ---------------------------------------------------------------- outputs

def plot(path: Path, sft_curve: list[dict], rft_curve: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    pts = [(m["step"], m["train_loss"]) for m in sft_curve if m.get("train_loss") is not None]
    if pts:
        a.plot(*zip(*pts), marker="o", label="train_loss")
    a.set(title="SFT", xlabel="step", ylabel="loss")
    a.legend()
    for key in ("train_reward_mean", "valid_reward_mean"):
        pts = [(m["step"], m[key]) for m in rft_curve if m.get(key) is not None]
        if pts:
            b.plot(*zip(*pts), marker="o", label=key)
    b.set(title="RFT (GRPO)", xlabel="step", ylabel="reward", ylim=(-0.02, 1.02))
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(evals: dict[str, dict], score_name: str) -> str:
    head = f"{'model':<6} {'n':>3} {'mean reward':>11} {score_name:>10} {'format ok':>9} {'eval s':>7}  model id"
    lines = [head, "-" * len(head)]
    for name, e in evals.items():
        lines.append(
            f"{name:<6} {e['n']:>3} {e['mean_reward']:>11.4f} {e['task_score']:>10.4f} {e['format_rate']:>9.2f} "
            f"{e['seconds']:>7.1f}  {e['model']}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def plan(args: argparse.Namespace) -> dict:
    """Sizes of the runs. --quick: the shortest run that exercises everything (2 SFT steps, 2 RFT steps, 3 held-out
    rows)."""
    if args.quick:
        p = {
            "sft_rows": 6,
            "sft_epochs": 1,
            "sft_batch": 3,
            "rft_rows": 4,
            "rft_epochs": 1,
            "rft_batch": 2,
            "valid_rows": 1,
            "eval_rows": 3,
        }
    else:
        steps = args.steps or 8
        p = {
            "sft_rows": 32,
            "sft_epochs": 2,
            "sft_batch": 4,
            "rft_rows": 2 * steps,
            "rft_epochs": 1,
            "rft_batch": 2,
            "valid_rows": 4,
            "eval_rows": 16,
        }
        if args.steps is None:
            p.update(rft_rows=8, rft_epochs=2)  # 8 steps over 8 rows seen twice
    if args.eval_rows:
        p["eval_rows"] = args.eval_rows
    p["max_tokens"] = 24 if args.task == "grounding" else 12
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--url",
        default=os.environ.get("VRFT_URL", "http://127.0.0.1:8000"),
        help="the service (started here if none answers)",
    )
    ap.add_argument(
        "--api-key", default=None, help="default: VRFT_API_KEY, then $VRFT_HOME/api_key, then OPENAI_API_KEY"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $VRFT_HOME/demo)")
    learn.add_arguments(ap)
    g = ap.add_argument_group("the plumbing-only run (--quick or --plumbing)")
    g.add_argument("--quick", action="store_true",
                   help="the plumbing-only run, shortest: 2 SFT steps, 2 RFT steps, 3 held-out rows")
    g.add_argument("--plumbing", action="store_true", help="the plumbing-only run, 8 RFT steps, 16 held-out rows")
    g.add_argument("--task", choices=("grounding", "classification"), default="grounding")
    g.add_argument("--steps", type=int, default=None, help="RFT optimizer steps (1 epoch of 2*steps rows; default: 8)")
    g.add_argument("--eval-rows", type=int, default=None, help="held-out rows (default 16, --quick 3)")
    args = ap.parse_args(argv)
    if not (args.quick or args.plumbing):
        return learn.run(args)

    t_start = time.time()
    home = vrft_home()
    out = (args.out or home / "demo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    p = plan(args)
    task, seed = args.task, args.seed
    spec = synthetic.grader_spec(task, short=True)

    proc = None if healthy(args.url) else start_server(args.url, home)
    try:
        client = openai.OpenAI(
            base_url=args.url.rstrip("/") + "/v1", api_key=api_key(args.api_key, home), max_retries=3, timeout=60
        )
        # engines start on the first request (30-170 s on a small CPU machine): the SDK retries 503 + Retry-After
        chat = client.with_options(max_retries=60, timeout=900)

        print(
            f"task {task}: SFT {p['sft_rows']} rows x {p['sft_epochs']} epochs, "
            f"RFT {p['rft_rows']} rows x {p['rft_epochs']} epochs, "
            f"held-out {p['eval_rows']} rows",
            flush=True,
        )
        sft_rows = synthetic.generate(task, p["sft_rows"], seed=seed, short=True, sft=True)
        rft_rows = synthetic.generate(task, p["rft_rows"], seed=seed + 1, short=True)
        valid_rows = synthetic.generate(task, p["valid_rows"], seed=seed + 2, short=True, split="valid")
        eval_rows = synthetic.generate(task, p["eval_rows"], seed=seed + 3, short=True, split="valid")
        with tempfile.TemporaryDirectory() as tmp:
            sft_file = upload(client, Path(tmp), sft_rows, f"demo-{task}-sft.jsonl")
            rft_file = upload(client, Path(tmp), rft_rows, f"demo-{task}-rft.jsonl")
            valid_file = upload(client, Path(tmp), valid_rows, f"demo-{task}-valid.jsonl")

        t0 = time.time()
        sft = client.fine_tuning.jobs.create(model=BASE, training_file=sft_file, suffix="demo-sft", seed=seed,
                                             method={"type": "supervised", "supervised": {"hyperparameters": {
                                                 "n_epochs": p["sft_epochs"], "batch_size": p["sft_batch"]}}})
        print(f"SFT job {sft.id}", flush=True)
        sft, sft_curve = follow(client, sft.id, "SFT")
        sft_seconds = time.time() - t0

        t0 = time.time()
        rft = client.fine_tuning.jobs.create(
            model=sft.fine_tuned_model,
            training_file=rft_file,
            validation_file=valid_file,
            suffix="demo-rft",
            seed=seed,
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "grader": spec,
                    "hyperparameters": {
                        "n_epochs": p["rft_epochs"],
                        "batch_size": p["rft_batch"],
                        "num_generations": 2,
                        "max_completion_length": p["max_tokens"],
                        "eval_interval": 1,
                        "eval_samples": p["valid_rows"],
                    },
                },
            },
        )
        print(f"RFT job {rft.id} from {sft.fine_tuned_model}", flush=True)
        rft, rft_metrics = follow(client, rft.id, "RFT")
        rft_seconds = time.time() - t0
        rft_curve = [
            {
                "step": m["step"],
                **{k: (m.get("scores") or {}).get(k) for k in ("train_reward_mean", "valid_reward_mean")},
            }
            for m in rft_metrics
        ]
        sft_curve = [
            {
                "step": m["step"],
                "train_loss": m.get("train_loss"),
                "train_mean_token_accuracy": m.get("train_mean_token_accuracy"),
            }
            for m in sft_curve
        ]

        evals: dict[str, dict] = {}
        for name, model in (("base", BASE), ("sft", sft.fine_tuned_model), ("rft", rft.fine_tuned_model)):
            print(f"evaluating {name} ({model}); its vLLM engine starts on the first request", flush=True)
            evals[name] = evaluate(chat, model, eval_rows, spec, p["max_tokens"], name)

        row = eval_rows[0]
        t0 = time.time()
        r = chat.chat.completions.create(
            model=rft.fine_tuned_model, messages=row["messages"], temperature=0, max_tokens=p["max_tokens"]
        )
        final = {
            "model": rft.fine_tuned_model,
            "prompt": row["messages"][-1]["content"][-1]["text"],
            "reference": row["solution"],
            "answer": r.choices[0].message.content,
            "usage": r.usage.model_dump() if r.usage else None,
            "seconds": round(time.time() - t0, 2),
        }

        score_name = "mean IoU" if task == "grounding" else "accuracy"
        results = {
            "task": task,
            "seed": seed,
            "plan": p,
            "url": args.url,
            "grader": spec,
            "score": {
                "task_score": score_name,
                "mean_reward": "grader reward: (task + format) / 2",
                "format_rate": "share of answers in <answer> tags",
            },
            "jobs": {
                "sft": {
                    "id": sft.id,
                    "model": sft.fine_tuned_model,
                    "trained_tokens": sft.trained_tokens,
                    "seconds": round(sft_seconds, 1),
                },
                "rft": {
                    "id": rft.id,
                    "model": rft.fine_tuned_model,
                    "trained_tokens": rft.trained_tokens,
                    "seconds": round(rft_seconds, 1),
                },
            },
            "curves": {"sft": sft_curve, "rft": rft_curve},
            "eval": evals,
            "final_chat": final,
            "seconds_total": None,
        }
        png = out / "curves.png"
        plot(png, sft_curve, rft_curve, f"{task}: SFT then RFT of {BASE} (random tiny model)")
        results["seconds_total"] = round(time.time() - t_start, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        text = table(evals, score_name)
        (out / "table.txt").write_text(text + "\n")

        print()
        print(f"held-out {task} ({len(eval_rows)} rows, greedy, max_tokens={p['max_tokens']}):")
        print(text)
        print()
        print(f"one chat completion with an image, {rft.fine_tuned_model}:")
        print(f"  prompt:    {final['prompt']}")
        print(f"  reference: <answer>{final['reference']}</answer>")
        print(f"  answer:    {final['answer']!r}")
        print()
        print("The tiny model has random weights and the run is short: these numbers are what was measured, "
              "not evidence that training helps.")
        print(f"outputs: {out}/results.json, {png}, {out}/table.txt  (total {results['seconds_total']:.0f} s)")
        return 0
    finally:
        if proc is not None:
            print("stopping the server this demo started", flush=True)
            stop_server(proc)
