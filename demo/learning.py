"""The few-shot learning comparison the demo runs and the learning benchmark (research/learning.py) repeats
over seeds and settings: from a base model, through the service's public API only (the openai SDK),

1. **warm start**: an SFT job on the base over the N training rows;
2. from the warm start, with the same N rows and the same compute budget (training sequences through a forward
   and backward pass): (a) **+SFT**, a second SFT job; (b) **+RFT**, a reinforcement (GRPO) job with the task's
   grader;
3. base / warm start / +SFT / +RFT scored on held-out rows: each model's weights are fetched from the service's
   storage (`api.staging.local_model_path`, what the chat endpoint serves) and answered with a local greedy
   `transformers.generate` (faster on a small CPU than four vLLM engine starts), scored with the grader's `task`
   part (IoU for grounding).

`run_stages` does one (task, seed); ``args`` carries the hyperparameters (see `research/learning.py`'s flags,
or `demo.run.learning_recipe`).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

from demo.client import follow, upload

__all__ = ["LABELS", "MAX_TOKENS", "SCORE_NAMES", "STAGES", "THINK_TOKENS", "branch_hyperparameters", "evaluate",
           "generate_answers", "local_rollout", "model_folder", "rft_hyperparameters", "rft_job", "run_stages",
           "sample_answers", "sft_job"]

STAGES = ("base", "warm", "sft", "rft")
LABELS = {"base": "baseline", "warm": "SFT warm start", "sft": "+SFT (a)", "rft": "+RFT (b)"}
SCORE_NAMES = {"grounding": "mean IoU", "detection": "detection reward (IoU+conf)", "classification": "accuracy"}
MAX_TOKENS = {"grounding": 24, "detection": 48, "classification": 12}
"""Completion budget of a short answer, per task."""
THINK_TOKENS = 40
"""Extra budget for a ``<think>`` part (``--think-anchor``: ``<think>The blue star is at [x1, y1, x2, y2].</think>``,
about 20 tokens; the other tasks' reasoning is shorter)."""



def model_folder(model_id: str) -> Path:
    """The HF folder the service serves for `model_id`: a base model's folder, or the fine-tuned weights
    downloaded once from the service's storage into VRFT_HOME/cache (the chat endpoint's own code path)."""
    from api.db import session_scope
    from api.settings import Settings
    from api.staging import local_model_path
    from api.storage import storage_for
    from api.tables import Job

    settings = Settings()
    storage = storage_for(settings.storage_url, settings.s3_endpoint_url)
    with session_scope(settings) as session:
        from sqlmodel import select

        job = session.exec(select(Job).where(Job.fine_tuned_model == model_id)).first()
        project = job.project_id if job is not None else "default"
        return local_model_path(session, settings, storage, project, model_id).resolve()


def generate_answers(folder: Path, rows: list[dict], max_tokens: int) -> list[str]:
    """Greedy answers of the model in `folder`, with the trainer's own prompt rendering and HF generation."""
    return [group[0] for group in sample_answers(folder, rows, max_tokens)]


def local_rollout(folder: Path):
    """(processor, vision, HF rollout) of the model in `folder`, loaded once for consecutive calls on it while
    its files stay the same (pretrain_base.py rewrites one folder between its evaluations)."""
    stamp = tuple(sorted((p.name, (st := p.stat()).st_mtime_ns, st.st_size)
                         for p in Path(folder).iterdir() if p.is_file()))
    return _load_rollout(Path(folder), stamp)


@functools.lru_cache(maxsize=1)
def _load_rollout(folder: Path, stamp: tuple):
    """`local_rollout`'s cache: `stamp` (the files' names, times and sizes) is part of the key."""
    import torch

    from trainer.model import is_vision_model, load_model, load_processor, placeholder_token_ids, stop_token_ids
    from trainer.rollout import HFRollout

    vision = is_vision_model(str(folder))
    processor = load_processor(str(folder), vision)
    tok = getattr(processor, "tokenizer", processor)
    model = load_model(str(folder), vision, torch.float32)
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rollout = HFRollout(lambda: model, tok, stop_token_ids(str(folder), tok), pad, torch.device("cpu"), 0,
                        placeholder_token_ids(model.config))
    return processor, vision, rollout


def sample_answers(folder: Path, rows: list[dict], max_tokens: int, samples: int = 1,
                   temperature: float = 0.0) -> list[list[str]]:
    """`samples` answers a row of the model in `folder` (greedy at temperature 0; seeded by the row's index),
    with the trainer's own prompt rendering and HF generation."""
    from trainer.data import ChatData

    processor, vision, rollout = local_rollout(folder)
    data = ChatData(rows, list(range(1, len(rows) + 1)), processor, vision, "held-out set")
    prompts = [data.prompt(i) for i in range(len(rows))]
    seeds = list(range(len(prompts))) if temperature > 0 else [0] * len(prompts)
    groups = rollout.generate(prompts, samples, max_tokens, temperature, 1.0, seeds)
    return [[completion.text for completion in g] for g in groups]


def evaluate(model_id: str, rows: list[dict], spec: dict, max_tokens: int) -> dict:
    import grader

    t0 = time.time()
    folder = model_folder(model_id)
    outputs = generate_answers(folder, rows, max_tokens)
    batch = grader.compile(spec).grade(outputs, rows)
    task_scores = batch.sub_rewards.get("task", batch.rewards)
    fmt = batch.sub_rewards.get("format", [])
    return {"model": model_id, "n": len(rows), "score": statistics.fmean(task_scores),
            "format_rate": statistics.fmean(fmt) if fmt else None, "mean_reward": statistics.fmean(batch.rewards),
            "seconds": round(time.time() - t0, 1),
            "samples": [{"id": r["id"], "reference": r["solution"], "output": o, "score": s}
                        for r, o, s in list(zip(rows, outputs, task_scores))[:8]]}


# ---------------------------------------------------------------- one task, one seed

def sft_job(client, model: str, rows: list[dict], epochs: int, args, seed: int, suffix: str, label: str,
            lr_multiplier: float | None = None, extra: dict | None = None):
    """An SFT job over `epochs` passes of `rows`, uploaded as ONE epoch of the rows repeated `epochs` times.

    Why: the SFT trainer checkpoints at every epoch end, and with a few rows an epoch lasts a second or two;
    the job runner then uploads a checkpoint while the trainer is already deleting that checkpoint's
    trainer_state/ for the next one, and the job fails ("internal error in the job runner",
    FileNotFoundError .../trainer_state/state.json in the server log). One long epoch has no intermediate
    checkpoint. Same rows, same number of sequences; only the shuffling differs (over the whole job)."""
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        file_id = upload(client, Path(tmp), rows * epochs, f"{suffix}-{seed}-x{epochs}.jsonl")
    job = client.fine_tuning.jobs.create(model=model, training_file=file_id, suffix=suffix, seed=seed,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": 1, "batch_size": args.batch_size,
                                             "learning_rate_multiplier": lr_multiplier or args.sft_lr_multiplier,
                                             **(extra or {})}}})
    job, metrics = follow(client, job.id, label, poll=2.0)
    losses = [m.get("train_loss") for m in metrics]
    return job, {"id": job.id, "model": job.fine_tuned_model, "from": model, "n_epochs": epochs,
                 "steps": len(metrics), "sequences": args.n_train * epochs,
                 "learning_rate_multiplier": lr_multiplier or args.sft_lr_multiplier, **(extra or {}),
                 "seconds": round(time.time() - t0, 1),
                 "trained_tokens": job.trained_tokens, "first_loss": losses[0] if losses else None,
                 "last_loss": losses[-1] if losses else None}


def branch_hyperparameters(args) -> dict:
    """Hyperparameters that +SFT and +RFT share (not the warm start)."""
    return {"freeze_vision": True} if getattr(args, "freeze_vision", False) else {}


def rft_hyperparameters(args, max_tokens: int) -> dict:
    """The RFT job's hyperparameters; the loss options only when asked for (else the service's defaults)."""
    optional = {"loss_type": getattr(args, "loss_type", None), "scale_rewards": getattr(args, "scale_rewards", None)}
    return {"n_epochs": args.rft_epochs, "batch_size": args.batch_size, "num_generations": args.num_generations,
            "max_completion_length": max_tokens, "learning_rate_multiplier": args.rft_lr_multiplier,
            "temperature": args.temperature, "beta": args.beta,
            **{k: v for k, v in optional.items() if v is not None},
            "eval_interval": 1_000_000,  # no validation file, no intermediate checkpoint (see sft_job)
            **branch_hyperparameters(args)}


def rft_job(client, model: str, file_id: str, spec: dict, args, seed: int, suffix: str, max_tokens: int):
    t0 = time.time()
    hp = rft_hyperparameters(args, max_tokens)
    job = client.fine_tuning.jobs.create(model=model, training_file=file_id, suffix=suffix, seed=seed,
                                         method={"type": "reinforcement",
                                                 "reinforcement": {"grader": spec, "hyperparameters": hp}})
    job, metrics = follow(client, job.id, "+RFT", poll=2.0)
    rewards = [(m.get("scores") or {}).get("train_reward_mean") for m in metrics]
    return job, {"id": job.id, "model": job.fine_tuned_model, "from": model, "hyperparameters": hp,
                 "steps": len(metrics), "sequences": args.n_train * args.rft_epochs * args.num_generations,
                 "seconds": round(time.time() - t0, 1), "trained_tokens": job.trained_tokens,
                 "train_reward_first": rewards[0] if rewards else None,
                 "train_reward_last": rewards[-1] if rewards else None,
                 "train_reward_curve": rewards}


def run_stages(client, task: str, seed: int, args: argparse.Namespace, data: dict[str, list[dict]], spec: dict,
               max_tokens: int) -> dict:
    """Warm start, +SFT and +RFT of `task` for `seed`, then the four models scored on the held-out rows.
    `data`: "sft" (training rows with answers), "rft" (the same rows without) and "eval" (held-out rows); `spec`
    the grader, `max_tokens` the completion budget. Returns the run's record (jobs, scores, a few answers)."""
    with tempfile.TemporaryDirectory() as tmp:
        rft_file = upload(client, Path(tmp), data["rft"], f"learn-{task}-{seed}-rft.jsonl")
    sft_epochs = args.sft_epochs or args.rft_epochs * args.num_generations
    print(f"== {task} seed {seed}: warm start {args.warm_epochs} epochs; +SFT {sft_epochs} epochs; "
          f"+RFT {args.rft_epochs} epochs x G={args.num_generations}", flush=True)
    warm, warm_info = sft_job(client, args.base_model, data["sft"], args.warm_epochs, args, seed, f"learn-{task}-warm",
                              "warm SFT", lr_multiplier=args.warm_lr_multiplier)
    _, sft_info = sft_job(client, warm.fine_tuned_model, data["sft"], sft_epochs, args, seed, f"learn-{task}-sft",
                          "+SFT", extra=branch_hyperparameters(args))
    _, rft_info = rft_job(client, warm.fine_tuned_model, rft_file, spec, args, seed, f"learn-{task}-rft", max_tokens)
    models = {"base": args.base_model, "warm": warm.fine_tuned_model, "sft": sft_info["model"],
              "rft": rft_info["model"]}
    evals = {}
    for stage in STAGES:
        evals[stage] = evaluate(models[stage], data["eval"], spec, max_tokens)
        e = evals[stage]
        print(f"   {stage:<5} {SCORE_NAMES[task]} {e['score']:.4f}  format {e['format_rate']:.2f}  ({e['seconds']} s)",
              flush=True)
    return {"task": task, "seed": seed, "jobs": {"warm": warm_info, "sft": sft_info, "rft": rft_info}, "eval": evals}


