"""Supervised fine-tuning on the rows' assistant messages (so a model can first learn an output format).

One optimizer step: `batch_size` examples (all ranks together), cross-entropy on the tokens of the
assistant turns only (prompt, system, image and padding tokens are masked with -100), averaged over all
trained tokens of the batch. Metrics follow OpenAI's SFT layout (train_loss, train_mean_token_accuracy,
valid_loss, valid_mean_token_accuracy, full_valid_* at the end). A checkpoint at the end of each epoch; the
last 3 are kept. The settings (`SFTConfig`) are declared in trainer/hparams.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from trainer.checkpoints import Checkpointer
from trainer.data import ChatData, cat_mm, pad_per_token
from trainer.engine import lr_at, prepare_policy, set_lr
from trainer.hparams import SFTConfig
from trainer.job_spec import TrainerError
from trainer.model import load_job_data
from trainer.process import all_reduce, epoch_order, memory_stats, seed_everything


def collate(examples: list[tuple[list[int], list[int], dict, dict]], pad_id: int, device):
    """Right-padded input_ids, attention_mask, labels (-100 on padding) and the image tensors."""
    T = max(len(ids) for ids, _, _, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for b, (ids, lab, _, _) in enumerate(examples):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        attention[b, :len(ids)] = 1
        labels[b, :len(lab)] = torch.tensor(lab)
    mm = {**cat_mm([m for _, _, m, _ in examples]),
          **pad_per_token([p for _, _, _, p in examples], [len(ids) for ids, _, _, _ in examples], T, left_to=None)}
    mm = {k: v.to(device) for k, v in mm.items()}
    return input_ids.to(device), attention.to(device), labels.to(device), mm


def token_loss_sums(model, input_ids, attention_mask, labels, mm):
    """(sum of token cross-entropies, correctly predicted tokens, trained tokens) over a micro-batch."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **mm, use_cache=False).logits  # [B, T, V]
    logits = logits[:, :-1, :].float()  # position t predicts token t+1
    targets = labels[:, 1:]  # [B, T-1]
    mask = targets != -100
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=-100, reduction="sum")
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return ce, correct, mask.sum()


def main(job, events, dist, signals) -> str:
    t_setup = time.perf_counter()
    output_dir = Path(job.output_dir)
    job_data = load_job_data(job)
    vision, pad_id, train, valid = job_data.vision, job_data.pad_id, job_data.train, job_data.valid
    cfg = SFTConfig.resolve(job.hyperparameters, len(train), dist.world)

    per_rank = cfg.batch_size // dist.world
    policy = prepare_policy(job, cfg, per_rank, vision, dist, events)
    engine, state, micro, peak_lr, n_params = policy.engine, policy.state, policy.micro, policy.peak_lr, policy.n_params
    ckpt = Checkpointer(output_dir, job.model_path, events, dist, cfg.zero_stage, cfg.keep_checkpoints, metric=None)
    events.message(f"SFT: {cfg.total_steps} steps of {cfg.batch_size} examples, lr {peak_lr:g}, ZeRO-{cfg.zero_stage}, "
                   f"{dist.world} rank(s), {n_params:,} parameters; setup {time.perf_counter() - t_setup:.1f} s",
                   data={"config": asdict(cfg), "learning_rate": peak_lr})

    def example(data: ChatData, i: int):
        ids, labels, mm, per_token = data.sft_example(i)
        n = cfg.max_length
        return ids[:n], labels[:n], mm, {k: v[:n] for k, v in per_token.items()}

    n_rows = len(train)
    steps_per_epoch = n_rows / cfg.batch_size
    warmup_steps = int(cfg.warmup_ratio * cfg.total_steps)
    eval_subset = sorted(epoch_order(len(valid), job.seed, 999_999)[:cfg.max_eval_examples]) if valid else []
    metrics: dict = {}
    while state.step < cfg.total_steps:
        step = state.step + 1
        t_step = time.perf_counter()
        seed_everything(job.seed, step)
        positions = list(range((step - 1) * cfg.batch_size, step * cfg.batch_size))
        mine = positions[dist.rank * per_rank:(dist.rank + 1) * per_rank]
        examples = [example(train, epoch_order(n_rows, job.seed, pos // n_rows)[pos % n_rows]) for pos in mine]
        n_tokens = all_reduce(
            torch.tensor(
                float(sum(sum(1 for x in lab[1:] if x != -100) for _, lab, _, _ in examples)), device=dist.device
            )
        ).item()
        if n_tokens == 0:
            raise TrainerError(
                "invalid_training_file", "a batch has no assistant tokens to learn (all cut by max_length?)"
            )
        engine.train()
        lr = lr_at(step, cfg.total_steps, peak_lr, cfg.lr_scheduler, warmup_steps)
        set_lr(engine, lr)
        sums = torch.zeros(3, dtype=torch.float64)
        for i in range(0, len(examples), micro):
            ids, att, labels, mm = collate(examples[i:i + micro], pad_id, dist.device)
            ce, correct, count = token_loss_sums(engine, ids, att, labels, mm)
            loss = ce / n_tokens * dist.world  # mean over all trained tokens of the batch; DeepSpeed averages ranks
            engine.backward(loss, scale_wrt_gas=False)
            engine.step()
            sums += torch.tensor([ce.item(), correct.item(), count.item()], dtype=torch.float64)
        state.step = step
        state.trained_tokens += int(n_tokens)
        sums = all_reduce(sums.to(dist.device)).cpu()
        metrics = {"step": step, "total_steps": cfg.total_steps,
                   "train_loss": (sums[0] / sums[2]).item(), "train_mean_token_accuracy": (sums[1] / sums[2]).item(),
                   "learning_rate": lr, "timing": {"step": {"training": time.perf_counter() - t_step}},
                   "memory": memory_stats()}
        last = step == cfg.total_steps
        if valid is not None and (step % cfg.eval_interval == 0 or last):
            t_eval = time.perf_counter()
            vl, va = validation_loss(engine, valid, eval_subset, example, pad_id, micro, dist)
            metrics.update(valid_loss=vl, valid_mean_token_accuracy=va)
            if last:
                fl, fa = validation_loss(engine, valid, list(range(len(valid))), example, pad_id, micro, dist)
                metrics.update(full_valid_loss=fl, full_valid_mean_token_accuracy=fa)
            metrics["timing"]["step"]["eval"] = time.perf_counter() - t_eval
        metrics["timing"]["step"]["full_iteration"] = time.perf_counter() - t_step
        events.metrics(step, metrics, f"Step {step}/{cfg.total_steps}: training loss={metrics['train_loss']:.2f}")

        pause = signals.should_pause(dist.device)
        epoch_end = math.floor(step / steps_per_epoch) > math.floor((step - 1) / steps_per_epoch)
        scores = {k: v for k, v in metrics.items() if k not in ("timing", "learning_rate", "total_steps", "memory")}
        if not last and ckpt.end_step(engine, state, scores, save=epoch_end, pause=pause):
            return "paused"

    ckpt.finish(engine, state, scores)
    return "finished"


@torch.no_grad()
def validation_loss(engine, valid: ChatData, subset: list[int], example, pad_id: int, micro: int, dist):
    """(mean token loss, mean token accuracy) over `subset` of the validation file, split over the ranks."""
    engine.eval()
    per_rank = math.ceil(len(subset) / dist.world)
    mine = subset[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    real = len(mine)
    mine = mine + subset[:per_rank - real]  # equal work per rank; padding rows are not counted
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(mine), micro):
        chunk = [example(valid, j) for j in mine[i:i + micro]]
        ids, att, labels, mm = collate(chunk, pad_id, dist.device)
        keep = [k for k in range(len(chunk)) if i + k < real]
        if len(keep) < len(chunk):
            labels[len(keep):] = -100
        ce, correct, count = token_loss_sums(engine, ids, att, labels, mm)
        sums += torch.tensor([ce.item(), correct.item(), count.item()], dtype=torch.float64)
    sums = all_reduce(sums.to(dist.device)).cpu()
    engine.train()
    return (sums[0] / sums[2].clamp(min=1)).item(), (sums[1] / sums[2].clamp(min=1)).item()
