"""Pretrain a tiny base model (any `trainer.tiny_model` family, any `research.models` size) on a large synthetic
corpus, for the learning benchmark.

Why: Visual-RFT starts from a model that already perceives (Qwen2-VL is pretrained); GRPO sharpens what the
model can already sample. `trainer.tiny_model` is random, so RFT from it gets no reward signal (the first
try, research/results/earlier-tries.md). This script gives the benchmark a base with coarse ability: plain
supervised next-token training (the SFT trainer's loss, `trainer.sft.token_loss_sums`) of a fresh tiny model on many
thousands of synthetic rows of the benchmark's tasks, drawn from their own split ("pretrain") and seed, so
none of them is one of the benchmark's few-shot training rows (split "train") or held-out rows ("valid").

The result is a normal model folder (what `trainer.tiny_model` writes, with trained weights) under
`$VRFT_HOME/models/<name>`, which the service lists as a base model; the benchmark then starts its jobs from
it (`research/learning.py --base-model <name>`). Deterministic for a seed on one machine (fixed corpus, fixed
order, fixed step count; torch CPU kernels).

    VRFT_HOME=/tmp/learn-bench nice -n 19 .venv/bin/python research/pretrain_base.py --name tiny-qwen2-vl-pre \\
        --tasks grounding --rows 16000 --steps 1500

Writes `<folder>/vrft_pretrain.json` (the options, the loss curve and the held-out scores at each eval).

The corpus, its encoding, the training loop and the saving are the learning demo's (`demo.base`, which builds the
demo's base with one fixed recipe); this script adds the studies' options (sizes, scenes, --init-from,
--deepen, a time budget, kept evaluations).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import synthetic  # noqa: E402
from demo import base as demo_base  # noqa: E402
from demo.base import EVAL_SEED, MARKER, PRETRAIN_SEED, PRETRAIN_SPLIT, encode, save  # noqa: E402, F401
from research import scenes  # noqa: E402
from research.learning import add_scene_arguments, generate_answers, task_grader, task_options  # noqa: E402
from research.models import SIZES, build_base  # noqa: E402
from trainer.tiny_model import FAMILIES  # noqa: E402


def corpus(args: argparse.Namespace) -> list[dict]:
    """args.rows SFT rows, spread evenly over the tasks, interleaved (`demo.base.corpus` on the studies' scenes)."""
    return demo_base.corpus(args.tasks, args.rows, args.data_seed, scenes.generate, task_options(args))


def evaluate(folder: Path, args: argparse.Namespace) -> dict:
    """Held-out task score (the benchmark's metric) of the model in `folder`, greedy."""
    import grader

    out = {}
    for task in args.tasks:
        rows = scenes.generate(task, args.n_eval, seed=EVAL_SEED, split="valid", **task_options(args))
        spec, max_tokens = task_grader(task, task_options(args))
        answers = generate_answers(folder, rows, max_tokens)
        batch = grader.compile(spec).grade(answers, rows)
        scores = batch.sub_rewards.get("task", batch.rewards)
        out[task] = {"score": statistics.fmean(scores),
                     "format": statistics.fmean(batch.sub_rewards.get("format", [0])),
                     "samples": [[r["solution"], a] for r, a in list(zip(rows, answers))[:4]]}
    return out


def deepen(model) -> None:
    """Double the depth of both towers without changing what the model computes (LLaMA Pro's block expansion):
    after each text layer and each vision block, a copy of it whose output projections (attention and MLP) are
    zero, so the copy adds nothing to the residual stream until training moves those projections.

    Why: a pretrained base keeps what it learnt (finding shapes) and gains depth for what it could not (binding
    a name to a shape and then a relation to that shape's position, two hops)."""
    import copy

    import torch

    def twin(block, outputs):
        new = copy.deepcopy(block)
        for linear in outputs(new):
            torch.nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                torch.nn.init.zeros_(linear.bias)
        return new

    lm, vision = model.model.language_model, model.model.visual
    lm.layers = torch.nn.ModuleList([m for layer in lm.layers
                                     for m in (layer, twin(layer, lambda b: (b.self_attn.o_proj, b.mlp.down_proj)))])
    for i, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = i  # the KV cache indexes layers by this
    vision.blocks = torch.nn.ModuleList([m for block in vision.blocks
                                         for m in (block, twin(block, lambda b: (b.attn.proj, b.mlp.fc2)))])
    text = model.config.text_config
    text.layer_types = [t for t in text.layer_types for _ in (0, 1)]
    text.num_hidden_layers = text.max_window_layers = len(lm.layers)
    model.config.vision_config.depth = len(vision.blocks)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="tiny-qwen2-vl-pre", help="model id: folder $VRFT_HOME/models/<name>")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $VRFT_HOME/models/<name>)")
    ap.add_argument("--family", default="qwen2_vl", choices=FAMILIES, help="trainer.tiny_model family")
    ap.add_argument("--size", default="tiny", choices=tuple(SIZES), help="research.models size")
    ap.add_argument("--seed", type=int, default=0, help="init weights and batch order")
    ap.add_argument("--number-tokens", action="store_true", help="one token for each integer 0..999 (research.models)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from this model folder's weights (e.g. an earlier run of this script) instead of "
                         "random ones")
    ap.add_argument("--deepen", action="store_true",
                    help="double both towers' depth first, keeping --init-from's function (see deepen())")
    ap.add_argument("--tasks", nargs="+", default=["grounding"], choices=synthetic.TASKS)
    ap.add_argument("--rows", type=int, default=16_000, help="corpus size (rows of split 'pretrain')")
    ap.add_argument("--data-seed", type=int, default=PRETRAIN_SEED)
    ap.add_argument("--steps", type=int, default=1500,
                    help="length of the learning-rate schedule (warmup, cosine to 0.1x)")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps (the weights are then those of that step of the --steps schedule)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="train for this many seconds instead of --steps: the schedule runs over wall-clock time "
                         "and the step count reached is recorded (for a machine lent for a fixed time)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (2e-3 collapses the tiny vision tower)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--eval-every", type=int, default=500, help="evaluate and save every this many steps")
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--keep-evals", action="store_true",
                    help="also keep each evaluated checkpoint as its own model, <name>-s<step> beside the output "
                         "folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="processes that encode the corpus")
    ap.add_argument("--device", default="cpu",
                    help="torch device for the training steps (cuda on a GPU machine); evaluation runs on the CPU")
    add_scene_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    from trainer.model import load_model, load_processor

    torch.set_num_threads(args.threads)
    home = Path(os.environ.get("VRFT_HOME", REPO / ".vrft"))
    out = (args.out or home / "models" / args.name).absolute()
    t0 = time.time()
    init = build_base(Path(tempfile.gettempdir()) / "-".join(
        ["vrft-pretrain-init", args.family, args.size, str(args.seed)]
        + ["numbers"] * args.number_tokens), seed=args.seed, family=args.family, size=args.size,
        number_tokens=args.number_tokens)
    tok = load_processor(str(init), True).tokenizer
    rows = corpus(args)
    examples = encode(init, rows, args.workers)
    print(f"corpus: {len(rows)} rows ({', '.join(args.tasks)}), encoded in {time.time() - t0:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    model = load_model(str(args.init_from or init), True, torch.float32)
    if args.deepen:
        deepen(model)
    model.to(args.device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    evals: list[dict] = []
    info = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "split": PRETRAIN_SPLIT, "eval_seed": EVAL_SEED, "parameters": n_params, "options": task_options(args)}
    if args.init_from:
        marker = Path(args.init_from) / MARKER
        info["init_from"] = json.loads(marker.read_text()) if marker.exists() else str(args.init_from)

    def on_log(entry: dict, schedule) -> None:
        print(f"step {entry['step']}/{schedule}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  "
              f"{entry['seconds']:.0f} s", flush=True)

    def on_eval(step: int, history: list[dict]) -> None:
        save(model, init, out, {**info, "step": step, "history": history, "evals": evals})
        try:
            e = evaluate(out, args)
        except Exception as exc:  # noqa: BLE001 (an evaluation failure must not lose the training run)
            print(f"eval step {step} failed: {type(exc).__name__}: {exc}", flush=True)
            return
        evals.append({"step": step, **{t: {"score": v["score"], "format": v["format"]} for t, v in e.items()}})
        save(model, init, out, {**info, "step": step, "history": history, "evals": evals,
                                "samples": {t: v["samples"] for t, v in e.items()},
                                "seconds": round(time.time() - t0, 1)})
        if args.keep_evals:  # a copy per eval, so a base can be picked at a chosen level of skill
            shutil.copytree(out, out.parent / f"{out.name}-s{step}", dirs_exist_ok=True)
        print(f"eval step {step}: "
              + ", ".join(f"{t} {v['score']:.3f} (format {v['format']:.2f})" for t, v in e.items())
              + f"  samples {e[args.tasks[0]]['samples'][:2]}", flush=True)

    last, _ = demo_base.train(model, examples, tok.pad_token_id, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
                              device=args.device, stop_after=args.stop_after, budget_seconds=args.budget_seconds,
                              eval_every=args.eval_every, on_eval=on_eval, on_log=on_log)
    print(f"{out}: {n_params:,} parameters, {last} steps, {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
