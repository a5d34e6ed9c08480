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
"""

from __future__ import annotations

import argparse
import json
import math
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
from research import scenes  # noqa: E402
from research.learning import add_scene_arguments, generate_answers, task_grader, task_options  # noqa: E402
from research.models import SIZES, build_base  # noqa: E402
from trainer.tiny_model import FAMILIES, swap_into  # noqa: E402
from trainer.tiny_model import MARKER as MODEL_MARKER  # noqa: E402

PRETRAIN_SPLIT = "pretrain"
PRETRAIN_SEED = 7_000
EVAL_SEED = 30_000  # its own held-out rows (split "valid"; the benchmark's are seeds 10_000 + seed)
MARKER = "vrft_pretrain.json"


def corpus(args: argparse.Namespace) -> list[dict]:
    """args.rows SFT rows, spread evenly over the tasks, interleaved."""
    opts = task_options(args)
    per = [args.rows // len(args.tasks) + (i < args.rows % len(args.tasks)) for i in range(len(args.tasks))]
    parts = [scenes.generate(t, n, seed=args.data_seed, split=PRETRAIN_SPLIT, sft=True, **opts)
             for t, n in zip(args.tasks, per)]
    out = []
    for i in range(max(per)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def _encode_rows(init: str, rows: list[dict], first: int) -> list:
    """SFT examples of `rows` (numbered from `first`, for error messages)."""
    from trainer.data import ChatData
    from trainer.model import load_processor

    data = ChatData(rows, list(range(first, first + len(rows))), load_processor(init, True), True, "pretraining corpus")
    return [data.sft_example(i) for i in range(len(rows))]


def _encode_chunk(job: tuple[str, list[dict], int]) -> bytes:
    """`_encode_rows` in a worker process of `encode`, as plain pickle bytes: torch's own pickler would send
    each tensor as a shared-memory file descriptor."""
    import pickle

    return pickle.dumps(_encode_rows(*job))


def encode(init: Path, rows: list[dict], workers: int, chunk: int = 500) -> list:
    """The SFT examples of the corpus (the processor costs about 5 ms a row), in `workers` processes that
    take `chunk` rows at a time; in order, and the same as one process makes."""
    if workers <= 1:
        return _encode_rows(str(init), rows, 1)
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent's torch thread pool is already up, and a forked copy of it can hang; an
    # executor, not multiprocessing.Pool: a worker that dies raises here instead of being replaced forever
    jobs = [(str(init), rows[a:a + chunk], a + 1) for a in range(0, len(rows), chunk)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [e for chunk in pool.map(_encode_chunk, jobs) for e in pickle.loads(chunk)]


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


def save(model, init: Path, out: Path, info: dict) -> None:
    """Atomically replace `out` with the model's weights plus the tokenizer / processor files of `init`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    for f in init.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", MODEL_MARKER):
            shutil.copy2(f, tmp / f.name)
    model.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    tmp.chmod(0o755)
    swap_into(tmp, out)


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
    from trainer.sft import collate, token_loss_sums

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
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    order: list[int] = []
    history, evals, losses = [], [], []
    info = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "split": PRETRAIN_SPLIT, "eval_seed": EVAL_SEED, "parameters": n_params, "options": task_options(args)}
    if args.init_from:
        marker = Path(args.init_from) / MARKER
        info["init_from"] = json.loads(marker.read_text()) if marker.exists() else str(args.init_from)
    t_train = time.time()
    last = min(args.stop_after or args.steps, args.steps) if args.budget_seconds is None else math.inf
    step = 0
    while step < last:
        step += 1
        if len(order) < args.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch, order = [examples[i] for i in order[:args.batch_size]], order[args.batch_size:]
        # how far along the schedule: steps, or seconds on a time budget (its last step is the one that ends it)
        done = ((step - args.warmup) / max(args.steps - args.warmup, 1) if args.budget_seconds is None
                else (time.time() - t_train) / args.budget_seconds)
        if args.budget_seconds is not None and done >= 1:
            last = step
        lr = args.lr * (step / args.warmup if step <= args.warmup else
                        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, att, labels, mm = collate(batch, tok.pad_token_id, args.device)
        ce, correct, count = token_loss_sums(model, ids, att, labels, mm)
        loss = ce / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            history.append({"step": step, "loss": statistics.fmean(losses[-50:]), "lr": lr,
                            "seconds": round(time.time() - t_train, 1)})
            of = args.steps if args.budget_seconds is None else "-"
            print(f"step {step}/{of}  loss {history[-1]['loss']:.4f}  lr {lr:.2e}  "
                  f"{time.time() - t_train:.0f} s", flush=True)
        if step % args.eval_every == 0 or step == last:
            model.eval()
            save(model, init, out, {**info, "step": step, "history": history, "evals": evals})
            try:
                e = evaluate(out, args)
            except Exception as exc:  # noqa: BLE001 (an evaluation failure must not lose the training run)
                print(f"eval step {step} failed: {type(exc).__name__}: {exc}", flush=True)
                model.train()
                continue
            evals.append({"step": step, **{t: {"score": v["score"], "format": v["format"]} for t, v in e.items()}})
            save(model, init, out, {**info, "step": step, "history": history, "evals": evals,
                                    "samples": {t: v["samples"] for t, v in e.items()},
                                    "seconds": round(time.time() - t0, 1)})
            if args.keep_evals:  # a copy per eval, so a base can be picked at a chosen level of skill
                shutil.copytree(out, out.parent / f"{out.name}-s{step}", dirs_exist_ok=True)
            print(f"eval step {step}: "
                  + ", ".join(f"{t} {v['score']:.3f} (format {v['format']:.2f})" for t, v in e.items())
                  + f"  samples {e[args.tasks[0]]['samples'][:2]}", flush=True)
            model.train()
    print(f"{out}: {n_params:,} parameters, {last} steps, {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
