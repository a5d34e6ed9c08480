"""The learning demo's base model: a tiny Qwen2-VL-architecture model pretrained on synthetic grounding scenes.

Why: Visual-RFT starts from a model that already perceives; GRPO sharpens what the model can already sample.
`trainer.tiny_model` is random, so RFT from it gets no reward signal. The demo therefore first gives it coarse
ability: plain supervised next-token training (the SFT trainer's loss, `trainer.sft.token_loss_sums`) of a fresh
tiny model, with one token for each integer 0..999 (`NUMBER_TOKENS`), on thousands of 2-shape scenes with plain
relation words (`demo.scenes.PRETRAIN_SCENES`), drawn from their own split ("pretrain") and seed, so none of
them is one of the demo's few-shot training rows (split "train") or held-out rows ("valid").

`ensure_base` builds it once under ``$VRFT_HOME/models/<name>`` (a normal model folder the service lists as a
base model) with a marker, ``vrft_pretrain.json``, that records the `Recipe`; a later call with the same recipe
reuses the folder, a changed recipe builds it again. Deterministic for a recipe on one machine (fixed corpus,
fixed order, fixed step count; torch CPU kernels).

The pieces (`corpus`, `encode`, `train`, `save`) are also what research/pretrain_base.py runs with the studies'
other options.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["DEMO_RECIPE", "EVAL_SEED", "MARKER", "NUMBER_TOKENS", "PRETRAIN_SEED", "PRETRAIN_SPLIT", "Recipe",
           "build_init", "corpus", "encode", "ensure_base", "save", "train"]

NUMBER_TOKENS = tuple(str(i) for i in range(1000))
"""Added after the tags: one token for each integer 0..999. A box coordinate is then one token instead of one
token a digit (PaliGemma has location tokens), so a small model predicts it as one choice."""
PRETRAIN_SPLIT = "pretrain"
PRETRAIN_SEED = 7_000
EVAL_SEED = 30_000
"""The base's own held-out rows (split "valid"); the demo's are seeds 10_000 + seed."""
MARKER = "vrft_pretrain.json"


@dataclass(frozen=True)
class Recipe:
    """How the demo's base is made; the marker records it, and a different recipe builds the base again."""

    name: str = "vrft-demo-base"
    """Model id: folder ``$VRFT_HOME/models/<name>``."""
    family: str = "qwen2_vl"
    seed: int = 0
    """Initial weights and batch order."""
    number_tokens: bool = True
    rows: int = 8_000
    """Corpus size (rows of split "pretrain")."""
    data_seed: int = PRETRAIN_SEED
    steps: int = 2_000
    """Optimizer steps: linear warmup, then cosine to 0.1x (research/results/learning.vocabulary.md's base `e6`
    took two runs, 1,500 then 2,000 steps; the demo's one run of 2,000 is enough for RFT to learn from)."""
    batch_size: int = 32
    lr: float = 5e-4
    """Peak learning rate (2e-3 collapses the tiny vision tower)."""
    warmup: int = 50
    weight_decay: float = 0.01
    scenes: dict = field(default_factory=lambda: dict(_pretrain_scenes()))
    """`demo.scenes.generate` options of the corpus."""
    n_eval: int = 64
    """Held-out rows scored once the base is built (recorded in the marker, not part of the training)."""

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def _pretrain_scenes() -> dict:
    from demo.scenes import PRETRAIN_SCENES

    return PRETRAIN_SCENES


DEMO_RECIPE = Recipe()


# ---------------------------------------------------------------- the pieces

def build_init(folder: str | os.PathLike, seed: int = 0, family: str = "qwen2_vl", number_tokens: bool = False,
               dims=None, force: bool = False) -> Path:
    """A fresh model (random weights from `seed`) in `folder`: `trainer.tiny_model.build_tiny_model`, with
    `NUMBER_TOKENS` added when `number_tokens`."""
    from trainer.tiny_model import build_tiny_model

    kw = {"dims": dims} if dims is not None else {}
    return build_tiny_model(folder, seed=seed, family=family, force=force,
                            added_tokens=NUMBER_TOKENS if number_tokens else (), **kw)


def corpus(tasks, rows: int, data_seed: int, generate: Callable[..., list[dict]], options: dict) -> list[dict]:
    """`rows` SFT rows of split "pretrain" from `generate` (`demo.scenes.generate` or a study's), spread evenly
    over the tasks, interleaved."""
    tasks = list(tasks)
    per = [rows // len(tasks) + (i < rows % len(tasks)) for i in range(len(tasks))]
    parts = [generate(t, n, seed=data_seed, split=PRETRAIN_SPLIT, sft=True, **options) for t, n in zip(tasks, per)]
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


def save(model, init: Path, out: Path, info: dict) -> None:
    """Atomically replace `out` with the model's weights plus the tokenizer / processor files of `init`, and the
    marker `info`."""
    from trainer.tiny_model import MARKER as MODEL_MARKER
    from trainer.tiny_model import swap_into

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    for f in init.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", MODEL_MARKER):
            shutil.copy2(f, tmp / f.name)
    model.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    tmp.chmod(0o755)
    swap_into(tmp, out)


def train(model, examples: list, pad_token_id: int, *, steps: int, batch_size: int, lr: float, warmup: int,
          weight_decay: float, seed: int, device: str = "cpu", stop_after: int | None = None,
          budget_seconds: float | None = None, eval_every: int | None = None,
          on_eval: Callable[[int, list[dict]], None] | None = None,
          on_step: Callable[[int, float, float], None] | None = None, log_every: int = 50,
          on_log: Callable[[dict, Any], None] | None = None) -> tuple[int, list[dict]]:
    """Supervised next-token training of `model` (in train mode, on `device`) on the encoded `examples`:
    AdamW, batches in a seeded random order (a new permutation each pass), the learning rate warming up linearly
    over `warmup` steps then falling on a cosine to 0.1x at `steps` (or over `budget_seconds` of wall-clock time
    instead, its last step the one that ends it), gradients clipped at 1. `stop_after` ends the run early on the
    `steps` schedule. Every `log_every` steps the mean loss goes to `history` (and `on_log(entry, schedule)`);
    `on_step(step, loss, lr)` after each step; at every `eval_every`-th step and the last, `on_eval(step,
    history)` with the model in eval mode. Returns (the last step, the history)."""
    import torch

    from trainer.sft import collate, token_loss_sums

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    history: list[dict] = []
    losses: list[float] = []
    t_train = time.time()
    last = min(stop_after or steps, steps) if budget_seconds is None else math.inf
    step = 0
    while step < last:
        step += 1
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch, order = [examples[i] for i in order[:batch_size]], order[batch_size:]
        # how far along the schedule: steps, or seconds on a time budget (its last step is the one that ends it)
        done = ((step - warmup) / max(steps - warmup, 1) if budget_seconds is None
                else (time.time() - t_train) / budget_seconds)
        if budget_seconds is not None and done >= 1:
            last = step
        rate = lr * (step / warmup if step <= warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
        for g in opt.param_groups:
            g["lr"] = rate
        ids, att, labels, mm = collate(batch, pad_token_id, device)
        ce, correct, count = token_loss_sums(model, ids, att, labels, mm)
        loss = ce / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1], rate)
        if step % log_every == 0:
            history.append({"step": step, "loss": statistics.fmean(losses[-log_every:]), "lr": rate,
                            "seconds": round(time.time() - t_train, 1)})
            if on_log is not None:
                on_log(history[-1], steps if budget_seconds is None else "-")
        if on_eval is not None and ((eval_every and step % eval_every == 0) or step == last):
            model.eval()
            on_eval(step, history)
            model.train()
    return int(last), history


def held_out_score(folder: Path, task: str, n: int, options: dict, generate: Callable[..., list[dict]]) -> dict:
    """Held-out task score (the grader's `task` part: IoU for grounding) of the model in `folder`, greedy, on `n`
    rows of split "valid" and seed `EVAL_SEED`; with the format rate and a few (reference, answer) samples."""
    import grader
    import synthetic
    from demo.learning import MAX_TOKENS, generate_answers

    rows = generate(task, n, seed=EVAL_SEED, split="valid", **options)
    short = options.get("short", False)
    spec = synthetic.grader_spec(task, short=short)
    answers = generate_answers(folder, rows, MAX_TOKENS[task] + (0 if short else 40))
    batch = grader.compile(spec).grade(answers, rows)
    scores = batch.sub_rewards.get("task", batch.rewards)
    return {"score": statistics.fmean(scores), "format": statistics.fmean(batch.sub_rewards.get("format", [0])),
            "samples": [[r["solution"], a] for r, a in list(zip(rows, answers))[:4]]}


# ---------------------------------------------------------------- the demo's base

def is_built(folder: Path, recipe: Recipe = DEMO_RECIPE) -> bool:
    """Whether `folder` holds a finished base of `recipe` (weights, config and a marker with this recipe)."""
    marker = folder / MARKER
    if not (marker.exists() and (folder / "config.json").exists() and (folder / "model.safetensors").exists()):
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return info.get("recipe") == recipe.as_json() and info.get("complete") is True


def ensure_base(home: Path, recipe: Recipe = DEMO_RECIPE, progress: bool = True, threads: int | None = None,
                workers: int | None = None) -> Path:
    """The folder of the demo's base under `home`/models/<recipe.name>: reused when its marker records
    `recipe`, else pretrained now (a progress bar over the steps when `progress`) and saved atomically."""
    from demo.scenes import generate

    out = (Path(home) / "models" / recipe.name).absolute()
    if is_built(out, recipe):
        info = json.loads((out / MARKER).read_text())
        ev = info.get("eval") or {}
        print(f"base model {recipe.name}: cached in {out} (built in {info.get('seconds', 0) / 60:.1f} min; "
              f"held-out IoU on its own scenes {ev.get('score', float('nan')):.3f})", flush=True)
        return out

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    from tqdm import tqdm

    from trainer.model import load_model, load_processor

    cpus = os.cpu_count() or 1
    # one thread by default: two OpenMP threads that wait on each other are many times slower than one as soon
    # as anything else runs on a 2-core machine (13 s a step instead of 0.3 s, measured)
    torch.set_num_threads(threads or (1 if cpus <= 2 else min(4, cpus // 2)))
    workers = workers if workers is not None else (min(4, cpus // 2) if cpus > 2 else 1)
    t0 = time.time()
    print(f"building the base model {recipe.name} once (cached in {out}): {recipe.steps} pretraining steps of "
          f"{recipe.batch_size} rows from {recipe.rows:,} synthetic 2-shape grounding scenes", flush=True)
    with tempfile.TemporaryDirectory(prefix="vrft-demo-init-") as tmp:
        init = build_init(Path(tmp) / "init", seed=recipe.seed, family=recipe.family,
                          number_tokens=recipe.number_tokens)
        tok = load_processor(str(init), True).tokenizer
        rows = corpus(["grounding"], recipe.rows, recipe.data_seed, generate, recipe.scenes)
        print(f"encoding the corpus ({len(rows):,} rows; about a minute)", flush=True)
        examples = encode(init, rows, workers)
        print(f"corpus: {len(rows):,} rows encoded in {time.time() - t0:.0f} s", flush=True)
        torch.manual_seed(recipe.seed)
        model = load_model(str(init), True, torch.float32)
        model.train()
        bar = tqdm(total=recipe.steps, desc="pretraining the base", unit="step", dynamic_ncols=True, file=sys.stdout,
                   mininterval=1.0, disable=not progress)

        def on_step(step: int, loss: float, lr: float) -> None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        try:
            last, history = train(model, examples, tok.pad_token_id, steps=recipe.steps, batch_size=recipe.batch_size,
                                  lr=recipe.lr, warmup=recipe.warmup, weight_decay=recipe.weight_decay,
                                  seed=recipe.seed, on_step=on_step)
        finally:
            bar.close()
        model.eval()
        info = {"recipe": recipe.as_json(), "complete": False, "split": PRETRAIN_SPLIT, "eval_seed": EVAL_SEED,
                "parameters": sum(p.numel() for p in model.parameters()), "step": last, "history": history}
        # scored before it is marked complete: a run cut short here builds again next time
        save(model, init, out, info)
        ev = held_out_score(out, "grounding", recipe.n_eval, recipe.scenes, generate)
        info.update(complete=True, eval=ev, seconds=round(time.time() - t0, 1))
        save(model, init, out, info)
    print(f"base model {recipe.name}: {info['parameters']:,} parameters, {last} steps, "
          f"{(time.time() - t0) / 60:.1f} min; held-out IoU on its own scenes {ev['score']:.3f}", flush=True)
    return out
