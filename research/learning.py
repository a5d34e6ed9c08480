"""The learning benchmark (issue 6): does RFT teach more than SFT from the same few examples?

For each task and seed, through the service's public API only (the openai SDK against a `vrft serve` this
script starts, or one already answering on --url):

1. generate N training rows (synthetic, short answers) and a held-out set of M rows (an independent split);
2. **warm start**: an SFT job on the base model (--base-model: `tiny-qwen2-vl`, random, by default; or a tiny model
   pretrained by research/pretrain_base.py on thousands of rows of another split) over the N rows;
3. from the warm start, with the same N rows and the same compute budget:
   (a) **+SFT**: a second SFT job;
   (b) **+RFT**: a reinforcement (GRPO) job with the task's grader (`synthetic.grader_spec`);
   the budget is counted in training sequences that go through a forward and backward pass: RFT does
   N x rft_epochs prompts x G samples, so +SFT gets rft_epochs x G epochs of the N rows (unless --sft-epochs);
4. evaluate base / warm start / +SFT / +RFT on the held-out rows: each fine-tuned model's weights are fetched
   from the service's storage (`api.staging.local_model_path`, what the chat endpoint serves) and answered with
   a local greedy `transformers.generate` (faster on a small CPU than four vLLM engine starts per seed); the
   answers are scored with the task grader's `task` part: IoU (grounding), Visual-RFT's detection reward
   (IoU + confidence, detection), exact label (classification).

Writes --out/learning.json (every number, every job id, per-seed scores and a few answers), --out/learning.md
(the table: mean +- sample standard deviation over seeds) and --out/learning.png.

    VRFT_HOME=/tmp/learn-bench .venv/bin/python research/learning.py --tasks grounding --seeds 0 1 2 \
        --out /tmp/learn-bench/out
    # from a pretrained tiny base (research/pretrain_base.py, run first when the base's folder is missing),
    # easier scenes:
    VRFT_HOME=/tmp/learn-pre .venv/bin/python research/learning.py --base-model tiny-qwen2-vl-pre --pretrain 1500 \
        --pretrain-stop-after 600 --pretrain-lr 5e-4 --pretrain-rows 8000 --max-objects 2 --plain-background \
        --tasks grounding --seeds 0 1 2 --out /tmp/learn-pre/out
    # an absolute-position cue in the pixels (a faint red/blue background ramp; Qwen2-VL's positions are relative):
    ... --image-size 56 --gradient-background 96 --max-objects 2 --plain-background ...
    # big shapes, and a relational task (3 shapes, a decoy of the target's class) on a base pretrained on 2-shape
    # scenes (its two pretrain_base.py commands are in research/results/learning.vocabulary.md):
    ... --base-model e6 --image-size 56 --plain-background --shape-scale 0.3 0.45 --min-objects 3 --max-objects 3 ...
    # the same relations in words the base never read (the headline, research/results/learning.vocabulary.md):
    ... --min-objects 3 --max-objects 3 --relation-words compass ...
    # 4 shapes, a decoy beside a second anchor: only the anchor's name tells which (the sixth try):
    ... --base-model e6 --image-size 56 --plain-background --shape-scale 0.3 0.45 --min-objects 4 --max-objects 4 \
        --decoy other_anchor ...
    .venv/bin/python research/learning.py --render /tmp/out/learning.json --out /tmp/out   # table + plot only
    # one process per seed side by side (each with its own VRFT_HOME and --out), then one table from their files:
    .venv/bin/python research/learning.py --merge /tmp/s0/learning.json /tmp/s1/learning.json --out /tmp/merged

The tables are rewritten after every finished (task, seed), so a run cut short still leaves an honest table of
what it finished. Trainer rollouts use transformers (VRFT_ROLLOUT_ENGINE=hf unless set): no vLLM engine start
per RFT job. SFT jobs get the rows repeated `epochs` times in one epoch (see `sft_job`).

The job-driving helpers (server start, upload, follow) are the demo's (`demo.client`), and so are the jobs, the
hyperparameters and the evaluation of one (task, seed) (`demo.learning.run_stages`: `python -m demo` runs one seed
of this benchmark's headline setting); the scenes are `research.scenes`' (the product generator with the studies'
options).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import synthetic  # noqa: E402
from demo.client import BASE, api_key, healthy, start_server, stop_server  # noqa: E402
from demo.learning import (  # noqa: E402, F401 (names the studies and their tests use from here)
    LABELS,
    MAX_TOKENS,
    SCORE_NAMES,
    STAGES,
    THINK_TOKENS,
    branch_hyperparameters,
    evaluate,
    generate_answers,
    local_rollout,
    model_folder,
    rft_hyperparameters,
    rft_job,
    run_stages,
    sample_answers,
    sft_job,
)
from research import scenes  # noqa: E402
from research.models import SIZES  # noqa: E402

# ---------------------------------------------------------------- data

def add_scene_arguments(ap: argparse.ArgumentParser) -> None:
    """The scene options `task_options` reads (this script's and pretrain_base.py's)."""
    ap.add_argument("--image-size", type=int, default=112, help="square images of this side (0: the generator's sizes)")
    ap.add_argument("--plain-background", action="store_true", help="no noisy backgrounds (an easier setting)")
    ap.add_argument("--max-objects", type=int, default=None,
                    help="at most this many shapes a scene (an easier setting)")
    ap.add_argument("--min-objects", type=int, default=None, help="at least this many shapes a scene")
    ap.add_argument("--shape-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="shape sides as a fraction of the image side (research.scenes StudyOptions.shape_scale)")
    ap.add_argument("--gradient-background", type=int, default=0, metavar="AMPLITUDE",
                    help="backgrounds carry a faint red (x) / blue (y) ramp of this many grey levels: an "
                         "absolute-position cue in the pixels (StudyOptions.gradient; 0: plain greys)")
    ap.add_argument("--decoy", choices=scenes.DECOYS, default="opposite",
                    help="grounding decoys (StudyOptions.decoy): 'opposite' (the anchor's other side) or "
                         "'other_anchor' (4+ shapes, in-line relations, a decoy beside a second anchor: only the "
                         "anchor's name tells which)")
    ap.add_argument("--relation-words", choices=tuple(scenes.RELATION_WORDS), default="plain",
                    help="grounding relations in plain words ('left of') or compass words ('west of'): the same "
                         "relations in a vocabulary a base pretrained on plain words has never read")
    ap.add_argument("--think-anchor", action="store_true",
                    help="grounding answers reason first: <think> names the anchor and gives its box, then <answer> "
                         "the target's box (StudyOptions.think_anchor; Visual-RFT's think format, not short answers)")


def task_options(args: argparse.Namespace) -> dict:
    """research.scenes.generate options: short answers (or --think-anchor's reasoning); square images of --image-size
    pixels (fewer image tokens)."""
    opts = {"short": True}
    if getattr(args, "think_anchor", False):
        opts = {"short": False, "think_anchor": True}
    if args.image_size:
        opts["sizes"] = ((args.image_size, args.image_size),)
    if args.plain_background:
        opts["noise_prob"] = 0.0
    if getattr(args, "min_objects", None):
        opts["min_objects"] = args.min_objects
    if getattr(args, "max_objects", None):
        opts["max_objects"] = args.max_objects
    if getattr(args, "shape_scale", None):
        opts["shape_scale"] = tuple(args.shape_scale)
    if getattr(args, "gradient_background", 0):
        opts["gradient"] = args.gradient_background
    if getattr(args, "decoy", "opposite") != "opposite":
        opts["decoy"] = args.decoy
    if getattr(args, "relation_words", "plain") != "plain":
        opts["relation_words"] = args.relation_words
    return opts


def task_grader(task: str, opts: dict) -> tuple[dict, int]:
    """(grader spec, completion budget in tokens) for rows generated with `opts` (`task_options`)."""
    return synthetic.grader_spec(task, short=opts["short"]), MAX_TOKENS[task] + (0 if opts["short"] else THINK_TOKENS)


def datasets(task: str, seed: int, args: argparse.Namespace) -> dict[str, list[dict]]:
    opts = task_options(args)
    return {
        "sft": scenes.generate(task, args.n_train, seed=seed, sft=True, **opts),
        "rft": scenes.generate(task, args.n_train, seed=seed, **opts),  # the same rows, without the answer
        "eval": scenes.generate(task, args.n_eval, seed=10_000 + seed, split="valid", **opts),
    }


# ---------------------------------------------------------------- one task, one seed

def run_one(client, task: str, seed: int, args: argparse.Namespace) -> dict:
    """`demo.learning.run_stages` on this run's scenes (`datasets`) and grader (`task_grader`)."""
    spec, max_tokens = task_grader(task, task_options(args))
    return run_stages(client, task, seed, args, datasets(task, seed, args), spec, max_tokens)



# ---------------------------------------------------------------- outputs

def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        rs = [r for r in runs if r["task"] == task]
        out[task] = {}
        for stage in STAGES:
            xs = [r["eval"][stage]["score"] for r in rs]
            out[task][stage] = {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                "per_seed": dict(zip([r["seed"] for r in rs], xs))}
        for stage in ("sft", "rft"):
            d = [r["eval"][stage]["score"] - r["eval"]["warm"]["score"] for r in rs]
            out[task][f"{stage}_minus_warm"] = {"mean": statistics.fmean(d),
                                                "std": statistics.stdev(d) if len(d) > 1 else 0.0}
        d = [r["eval"]["rft"]["score"] - r["eval"]["sft"]["score"] for r in rs]
        out[task]["rft_minus_sft"] = {"mean": statistics.fmean(d), "std": statistics.stdev(d) if len(d) > 1 else 0.0,
                                      "wins": sum(x > 0 for x in d), "seeds": len(d)}
    return out


def base_note(args: argparse.Namespace) -> str:
    """How the base model was made, for the table's header."""
    info = getattr(args, "pretrain_info", None)
    if not info:
        return " (random init)" if args.base_model == BASE else ""
    a = info["args"]
    ev = info["evals"][-1] if info.get("evals") else {}
    held = ", ".join(f"{t} {v['score']:.3f}" for t, v in ev.items() if t != "step") or "not recorded"
    steps = info.get("step", a["steps"])
    return (f" (`{BASE}`-architecture, size {a['size']}, {info['parameters']:,} parameters, pretrained by "
            f"research/pretrain_base.py: {steps} steps (of a {a['steps']}-step schedule, lr {a['lr']:g}) of "
            f"{a['batch_size']} rows from a corpus of {a['rows']:,} "
            f"{'/'.join(a['tasks'])} rows of split '{info['split']}'; its own held-out score: {held})")


def scene_note(args: argparse.Namespace) -> str:
    size = f"{args.image_size}x{args.image_size} images" if args.image_size else "the generator's image sizes"
    lo, hi = getattr(args, "min_objects", None), getattr(args, "max_objects", None)
    objects = (f"{lo} to {hi or 5} shapes" if lo and lo != hi else f"{lo} shapes" if lo else
               f"at most {hi} shapes" if hi else "up to 5 shapes")
    if getattr(args, "shape_scale", None):
        objects += f" of {args.shape_scale[0]:g}-{args.shape_scale[1]:g} of the image's side"
    background = "plain backgrounds" if args.plain_background else "half of the backgrounds noisy"
    if getattr(args, "gradient_background", 0):
        background += f", with a position ramp of {args.gradient_background} levels (red along x, blue along y)"
    if getattr(args, "decoy", "opposite") == "other_anchor":
        background += ("; grounding decoys beside a second anchor (in-line relations: only the anchor's name tells "
                       "which)")
    if getattr(args, "relation_words", "plain") != "plain":
        words = ", ".join(f"'{w}'" for w in scenes.RELATION_WORDS[args.relation_words].values())
        background += f"; grounding relations in {args.relation_words} words ({words})"
    return f"{size}, {objects}, {background}"


def markdown(summary: dict, runs: list[dict], args: argparse.Namespace, command: str, seconds: float) -> str:
    lines = [f"Held-out score, mean ± sample std over seeds; {args.n_train} training rows, {args.n_eval} held-out rows "
             f"per seed; base model `{args.base_model}`{base_note(args)}. Scenes: {scene_note(args)}.", "",
             "| task (metric) | seeds | baseline | SFT warm start | +SFT (a) | +RFT (b) | RFT − warm start "
             "| RFT − SFT (RFT wins) |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda d: f"{d['mean']:.3f} ± {d['std']:.3f}"  # noqa: E731
    g = lambda d: f"{d['mean']:+.3f} ± {d['std']:.3f}"  # noqa: E731
    for task, s in summary.items():
        seeds = ", ".join(map(str, s["base"]["per_seed"]))
        wins = f"({s['rft_minus_sft']['wins']}/{s['rft_minus_sft']['seeds']})"
        lines.append(f"| {task} ({SCORE_NAMES[task]}) | {seeds} | {f(s['base'])} | {f(s['warm'])} | {f(s['sft'])} | "
                     f"{f(s['rft'])} | {g(s['rft_minus_warm'])} | {g(s['rft_minus_sft'])} {wins} |")
    lines += ["", "Per seed (baseline / warm / +SFT / +RFT):", ""]
    for r in runs:
        e = r["eval"]
        lines.append(f"- {r['task']} seed {r['seed']}: " + " / ".join(f"{e[s]['score']:.3f}" for s in STAGES)
                     + " (format ok: " + " / ".join(f"{e[s]['format_rate']:.2f}" for s in STAGES) + ")")
    lines += ["", "Compute per seed (training sequences through forward + backward; job wall time, mean over seeds):",
              ""]
    for task in summary:
        rs = [r for r in runs if r["task"] == task]
        j = rs[0]["jobs"]
        for stage in ("warm", "sft", "rft"):
            secs = statistics.fmean(r["jobs"][stage]["seconds"] for r in rs)
            lines.append(f"- {task}, {LABELS[stage]}: {j[stage]['sequences']} sequences, {j[stage]['steps']} "
                         f"optimizer steps, {secs:.0f} s")
    lines += ["", f"Command (wall time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores, {platform.machine()}, "
              "no GPU):", "",
              "```bash", command, "```"]
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict, runs: list[dict], base_model: str = BASE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5 * len(tasks), 8), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        s = summary[task]
        xs = range(len(STAGES))
        ax.bar(xs, [s[k]["mean"] for k in STAGES], yerr=[s[k]["std"] for k in STAGES], capsize=4,
               color=["#bbbbbb", "#88aadd", "#4477aa", "#cc6633"])
        for r in runs:
            if r["task"] == task:
                ax.plot(list(xs), [r["eval"][k]["score"] for k in STAGES], "k.", alpha=0.6)
        ax.set_xticks(list(xs), [LABELS[k].replace(" (", "\n(") for k in STAGES], fontsize=8)
        ax.set(title=f"{task}", ylabel=f"held-out {SCORE_NAMES[task]}")
    fig.suptitle(f"{base_model}: baseline / SFT warm start / +SFT / +RFT\n(mean ± std over seeds, dots: seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(runs: list[dict], args: argparse.Namespace, home: Path, command: str, seconds: float) -> str:
    summary = summarise(runs)
    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                        if k != "pretrain_info"},
               "command": command,
               "vrft_home": str(home), "rollout_engine": os.environ["VRFT_ROLLOUT_ENGINE"],
               "evaluation": "local greedy transformers.generate of the served weights", "cpu_count": os.cpu_count(),
               "seconds_total": round(seconds, 1), "base_model_pretraining": args.pretrain_info,
               "summary": summary, "runs": runs}
    (args.out / "learning.json").write_text(json.dumps(results, indent=2))
    md = markdown(summary, runs, args, command, seconds)
    (args.out / "learning.md").write_text(md)
    plot(args.out / "learning.png", summary, runs, args.base_model)
    return md


# ---------------------------------------------------------------- the base model

def pretrain_command(args: argparse.Namespace) -> list[str]:
    """research/pretrain_base.py's command line for --base-model with this run's scene options (the shapes' count
    capped by --pretrain-max-objects, never raised by --min-objects)."""
    cmd = [sys.executable, str(REPO / "research" / "pretrain_base.py"), "--name", args.base_model,
           "--size", args.pretrain_size, "--tasks", *args.tasks, "--rows", str(args.pretrain_rows),
           "--steps", str(args.pretrain), "--lr", str(args.pretrain_lr), "--image-size", str(args.image_size)]
    cmd += ["--plain-background"] if args.plain_background else []
    cmd += ["--number-tokens"] if args.pretrain_number_tokens else []
    pretrain_max = args.pretrain_max_objects or args.max_objects
    cmd += ["--max-objects", str(pretrain_max)] if pretrain_max else []
    cmd += ["--shape-scale", *map(str, args.shape_scale)] if args.shape_scale else []
    cmd += ["--gradient-background", str(args.gradient_background)] if args.gradient_background else []
    cmd += ["--stop-after", str(args.pretrain_stop_after)] if args.pretrain_stop_after else []
    return cmd


def ensure_base(args: argparse.Namespace, home: Path) -> dict | None:
    """The pretraining record of --base-model (research/pretrain_base.py's marker), building it first if
    --pretrain asks and the folder is missing. None for a model that was not made by pretrain_base.py."""
    import subprocess

    from research.pretrain_base import MARKER

    folder = home / "models" / args.base_model
    if args.base_model != BASE and not (folder / "config.json").exists():
        if not args.pretrain:
            raise SystemExit(f"no base model {folder}: build it with research/pretrain_base.py or pass "
                             "--pretrain STEPS")
        cmd = pretrain_command(args)
        print("pretraining the base model:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "VRFT_HOME": str(home)})
    marker = folder / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


# ---------------------------------------------------------------- merging runs made side by side

PER_RUN_ARGS = {"seeds", "out", "url", "api_key", "render", "merge"}


def merge(paths: list[Path], out: Path, argv: list[str]) -> int:
    """One table from several learning.json files of this script that differ only in seeds (and --out):
    their runs side by side, in the order given; refuses files whose other options differ."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    same = lambda a: {k: v for k, v in a.items() if k not in PER_RUN_ARGS}  # noqa: E731
    for p, part in zip(paths, parts):
        if same(part["args"]) != same(first["args"]):
            diff = sorted(k for k in set(same(part["args"])) | set(same(first["args"]))
                          if part["args"].get(k) != first["args"].get(k))
            raise SystemExit(f"{p}: options differ from {paths[0]}'s ({', '.join(diff)}); not merging")
        if part.get("base_model_pretraining") != first.get("base_model_pretraining"):
            raise SystemExit(f"{p}: another base model than {paths[0]}'s; not merging")
    runs = [r for part in parts for r in part["runs"]]
    keys = [(r["task"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"a (task, seed) appears twice: {keys}")
    seeds = [s for part in parts for s in part["args"]["seeds"]]
    command = "\n".join([f"# side by side, one process per seed ({len(parts)} processes):"]
                         + [part["command"] for part in parts]
                         + [".venv/bin/python research/learning.py " + " ".join(argv)])
    results = {**{k: v for k, v in first.items()
                  if k not in ("runs", "summary", "command", "seconds_total", "vrft_home")},
               "args": {**first["args"], "seeds": seeds}, "command": command, "merged_from": [
                   {"file": str(p), "command": part["command"], "vrft_home": part.get("vrft_home"),
                    "seconds_total": part["seconds_total"]} for p, part in zip(paths, parts)],
               "seconds_total": max(part["seconds_total"] for part in parts), "summary": summarise(runs), "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(results, indent=2))
    print(render(results, out))
    return 0


def render(saved: dict, out: Path) -> str:
    """learning.md and learning.png in `out` from what a learning.json of this script holds; returns the table."""
    run_args = argparse.Namespace(**{"base_model": BASE, **saved["args"], "out": out,
                                     "pretrain_info": saved.get("base_model_pretraining")})
    summary = summarise(saved["runs"])
    md = markdown(summary, saved["runs"], run_args, saved["command"], saved["seconds_total"])
    if saved.get("merged_from"):
        md = md.replace("Command (wall time", "Commands (wall time of the longest process; they ran side by side,", 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.md").write_text(md)
    plot(out / "learning.png", summary, saved["runs"], run_args.base_model)
    return md


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("VRFT_URL"),
                    help="the service (started here, with VRFT_HOME, if none answers; default: a free local port)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--tasks", nargs="+", default=["grounding"], choices=synthetic.TASKS)
    ap.add_argument("--base-model", default=BASE,
                    help="the model the warm start starts from (a base model the service lists: "
                         "$VRFT_HOME/models/<id>)")
    ap.add_argument("--pretrain", type=int, default=0, metavar="STEPS",
                    help="if --base-model's folder is missing, first build it with research/pretrain_base.py: "
                         "this many steps on --pretrain-rows rows of the --tasks, with this run's task options")
    ap.add_argument("--pretrain-stop-after", type=int, default=None, help="pretrain_base.py --stop-after")
    ap.add_argument("--pretrain-rows", type=int, default=16_000)
    ap.add_argument("--pretrain-lr", type=float, default=5e-4,
                    help="pretrain_base.py --lr (2e-3 collapses the tiny vision tower: the fourth try)")
    ap.add_argument("--pretrain-max-objects", type=int, default=None,
                    help="pretrain on scenes of at most this many shapes (default --max-objects; --min-objects is "
                         "not passed on: the base learns to find named shapes, the benchmark may ask for more)")
    ap.add_argument("--pretrain-size", default="tiny", choices=tuple(SIZES),
                    help="research.models size of the pretrained base")
    ap.add_argument("--pretrain-number-tokens", action="store_true",
                    help="the pretrained base has one token for each integer 0..999 (pretrain_base.py --number-tokens)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=32,
                    help="few-shot training rows (warm start, +SFT and +RFT all use them)")
    ap.add_argument("--n-eval", type=int, default=32, help="held-out rows")
    ap.add_argument("--warm-epochs", type=int, default=20, help="SFT warm start epochs")
    ap.add_argument("--rft-epochs", type=int, default=4, help="RFT epochs over the training rows")
    ap.add_argument("--num-generations", type=int, default=8, help="RFT samples per prompt (G)")
    ap.add_argument("--sft-epochs", type=int, default=None,
                    help="+SFT epochs (default: rft_epochs x G, the same training sequences as +RFT)")
    ap.add_argument("--batch-size", type=int, default=4, help="rows (SFT) / prompts (RFT) per optimizer step")
    ap.add_argument("--sft-lr-multiplier", type=float, default=1.0)
    ap.add_argument("--warm-lr-multiplier", type=float, default=None,
                    help="warm start SFT (default: --sft-lr-multiplier)")
    ap.add_argument("--rft-lr-multiplier", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0, help="RFT sampling temperature")
    ap.add_argument("--beta", type=float, default=0.04, help="RFT KL weight")
    ap.add_argument("--loss-type", choices=("grpo", "dr_grpo", "dapo"), default=None,
                    help="RFT loss aggregation (default: the service's, grpo)")
    ap.add_argument("--scale-rewards", choices=("group", "batch", "none"), default=None,
                    help="divide RFT advantages by the group's std, the batch's, or not at all (Dr. GRPO: none; "
                         "default: the service's, group)")
    ap.add_argument("--freeze-vision", action="store_true",
                    help="+SFT and +RFT train the language model only (hyperparameter freeze_vision)")
    add_scene_arguments(ap)
    ap.add_argument("--nice", type=int, default=15, help="niceness of this process and the server it starts")
    ap.add_argument("--out", type=Path, default=Path("research/results"))
    ap.add_argument("--render", type=Path, default=None,
                    help="only rebuild learning.md and learning.png in --out from a learning.json this script wrote")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="LEARNING_JSON",
                    help="combine the runs of several learning.json files this script wrote with the same options "
                         "(e.g. one process per seed, run side by side) into one learning.json/md/png in --out")
    args = ap.parse_args(argv)

    if args.merge:
        return merge(args.merge, args.out, argv if argv is not None else sys.argv[1:])

    if args.render:
        print(render(json.loads(args.render.read_text()), args.out))
        return 0

    if args.nice:
        os.nice(args.nice)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    home = Path(os.environ.get("VRFT_HOME") or tempfile.mkdtemp(prefix="learn-", dir="/tmp")).resolve()
    os.environ["VRFT_HOME"] = str(home)
    # HF rollouts in the trainer: no vLLM engine start per RFT job on a small CPU (set VRFT_ROLLOUT_ENGINE to override)
    os.environ.setdefault("VRFT_ROLLOUT_ENGINE", "hf")
    args.out.mkdir(parents=True, exist_ok=True)
    command = (f"VRFT_HOME={home} .venv/bin/python research/learning.py "
               + " ".join(argv if argv is not None else sys.argv[1:]))
    t_start = time.time()

    import openai

    if not args.url:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    args.pretrain_info = ensure_base(args, home)
    proc = None if healthy(args.url) else start_server(args.url, home)
    runs: list[dict] = []
    try:
        client = openai.OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=api_key(args.api_key, home),
                               max_retries=3, timeout=60)
        for task in args.tasks:
            for seed in args.seeds:
                runs.append(run_one(client, task, seed, args))
                # after every run: a cut-short run leaves its table
                md = write_outputs(runs, args, home, command, time.time() - t_start)
    finally:
        if proc is not None:
            stop_server(proc)
    print()
    print(md)
    print(f"outputs: {args.out}/learning.json, learning.md, learning.png ({(time.time() - t_start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
