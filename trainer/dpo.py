"""Direct Preference Optimization on OpenAI's preference rows, in one file that reads top to bottom.

A row: `input` (messages, images allowed, ending with the user's), `preferred_output` and `non_preferred_output`
(one assistant message each). One optimizer step: `batch_size` pairs (all ranks together); for each pair the
summed log-probability of each answer's tokens (prompt, images and padding masked out) under the policy and
under the reference, the starting model (a frozen copy; with LoRA the policy itself with its adapters off), then

    r_w = beta * (log pi(y_w | x) - log pi_ref(y_w | x))         implicit reward of the preferred answer
    r_l = beta * (log pi(y_l | x) - log pi_ref(y_l | x))         and of the non-preferred one
    loss = -log sigmoid(r_w - r_l)                               (Rafailov et al. 2023, eq. 7; TRL's "sigmoid")

averaged over the batch's pairs. A prompt's two answers share one forward pass of the prompt and its images
(`grpo.completion_logprobs`). Metrics: OpenAI's `train_loss` / `valid_loss` / `full_valid_loss`, plus the
reward margin (mean r_w - r_l) and accuracy (fraction of pairs with r_w > r_l) on the step's pairs and on the
validation file at each evaluation. A checkpoint at the end of each epoch; the last 3 are kept. The settings
(`DPOConfig`) are declared in trainer/hparams.py.

    python -m trainer.dpo MODEL PAIRS.jsonl [--reference MODEL] [--beta 0.1]

prints the log-prob margin (log pi(y_w) - log pi(y_l)) and its accuracy of a model on preference rows, and with
a reference the implicit reward margin and accuracy (trainer/README.md's DPO table).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.checkpoints import Checkpointer
from trainer.data import ChatData, Prompt
from trainer.engine import lr_at, make_reference, prepare_policy, set_lr
from trainer.grpo import MicroBatch, Sequence, completion_logprobs, make_microbatches
from trainer.hparams import DPOConfig
from trainer.job_spec import TrainerError
from trainer.model import load_job_data
from trainer.process import all_reduce, epoch_order, memory_stats, seed_everything

# ------------------------------------------------------------------------------------------- the loss


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [B], reward of the preferred answers [B], of the non-preferred [B]) of B pairs.

    chosen, rejected: [B] summed log-probs of each pair's preferred and non-preferred answer under the policy;
    ref_chosen, ref_rejected: the same under the reference.

    >>> loss, rw, rl = dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1)
    >>> round(loss.item(), 4) == round(math.log(2), 4), rw.item(), rl.item()
    (True, 0.0, 0.0)
    """
    chosen_reward = beta * (chosen - ref_chosen)  # [B], r_w = beta log pi(y_w|x) / pi_ref(y_w|x)
    rejected_reward = beta * (rejected - ref_rejected)  # [B], r_l
    loss = -F.logsigmoid(chosen_reward - rejected_reward)  # [B], -log sigma(r_w - r_l)
    return loss, chosen_reward.detach(), rejected_reward.detach()


def answer_logps(model, mb: MicroBatch, shared_prefix: bool) -> torch.Tensor:
    """log pi(answer | prompt) of each sequence of the micro-batch: [b], summed over its answer tokens."""
    logp = completion_logprobs(model, mb, temperature=1.0, shared_prefix=shared_prefix)  # [b, C]
    return (logp * mb.mask).sum(dim=1)  # [b], padding masked out


# ----------------------------------------------------------------------------------------- the batches

Pair = tuple[Prompt, list[int], list[int]]
"""(prompt, preferred answer's tokens, non-preferred answer's tokens)"""


def pair_of(data: ChatData, i: int, max_length: int) -> Pair:
    """Row i as a pair, each answer cut so that prompt + answer fit in `max_length` tokens."""
    prompt, chosen, rejected = data.preference(i)
    room = max_length - len(prompt.input_ids)
    if room < 1:
        raise TrainerError("invalid_hyperparameters", f"{data.what} line {data.lines[i]}: the prompt has "
                           f"{len(prompt.input_ids)} tokens, max_length {max_length} leaves none for the answers")
    return prompt, chosen[:room], rejected[:room]


def pair_batches(pairs: list[Pair], micro: int, pad_id: int, device) -> list[MicroBatch]:
    """Micro-batches of `micro` pairs: sequences [w0, l0, w1, l1, ...], each prompt run once for its two answers."""
    seqs = [Sequence(p, ids, 0.0, False) for p, chosen, rejected in pairs for ids in (chosen, rejected)]
    return make_microbatches(seqs, 2 * micro, pad_id, device)


# ----------------------------------------------------------------------------------------- the loop


def main(job, events, dist, signals) -> str:
    """Train; returns "finished" or "paused"."""
    t_setup = time.perf_counter()
    output_dir = Path(job.output_dir)
    job_data = load_job_data(job)
    vision, pad_id, train, valid = job_data.vision, job_data.pad_id, job_data.train, job_data.valid
    cfg = DPOConfig.resolve(job.hyperparameters, len(train), dist.world)

    # The policy under DeepSpeed, and the reference: the starting model, frozen.
    per_rank = cfg.batch_size // dist.world
    policy = prepare_policy(job, cfg, per_rank, vision, dist, events)
    engine, state, micro, peak_lr, n_params = policy.engine, policy.state, policy.micro, policy.peak_lr, policy.n_params
    if cfg.lora is not None:
        ref, adapters_off = engine.module, engine.module.disable_adapter  # LoRA: the base weights are the start
    else:
        ref = make_reference(job.model_path, vision, policy.dtype, dist.device, cfg.zero_stage, policy.ds_config)
        adapters_off = nullcontext
    shared = not cfg.gradient_checkpointing  # checkpointed layers cannot keep the prompt's cache

    def reference_logps(mb: MicroBatch) -> torch.Tensor:
        with torch.no_grad(), adapters_off():
            return answer_logps(ref, mb, shared)  # [b]

    ckpt = Checkpointer(output_dir, job.model_path, events, dist, cfg.zero_stage, cfg.keep_checkpoints, metric=None)
    events.message(f"DPO: {cfg.total_steps} steps of {cfg.batch_size} pairs, beta {cfg.beta}, lr {peak_lr:g}, "
                   f"ZeRO-{cfg.zero_stage}, {dist.world} rank(s), reference "
                   f"{'the base weights (LoRA off)' if cfg.lora is not None else 'a frozen copy'}, "
                   f"{n_params:,} parameters; setup {time.perf_counter() - t_setup:.1f} s",
                   data={"config": asdict(cfg), "learning_rate": peak_lr})

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
        pairs = [pair_of(train, epoch_order(n_rows, job.seed, pos // n_rows)[pos % n_rows], cfg.max_length)
                 for pos in mine]
        batches = pair_batches(pairs, micro, pad_id, dist.device)
        ref_logps = [reference_logps(mb) for mb in batches]  # [2m] each, before any update

        engine.train()
        lr = lr_at(step, cfg.total_steps, peak_lr, cfg.lr_scheduler, warmup_steps)
        set_lr(engine, lr)
        sums = torch.zeros(5, dtype=torch.float64)  # loss, margin, correct, chosen reward, rejected reward
        for mb, refl in zip(batches, ref_logps):
            logps = answer_logps(engine, mb, shared)  # [2m]: preferred at even rows, non-preferred at odd
            loss, rw, rl = dpo_loss(logps[0::2], logps[1::2], refl[0::2], refl[1::2], cfg.beta)  # [m] each
            # mean over all pairs of the batch; DeepSpeed averages ranks: x world
            engine.backward(loss.sum() / cfg.batch_size * dist.world, scale_wrt_gas=False)
            engine.step()  # steps the optimizer at the last micro-batch (gradient_accumulation_steps)
            sums += torch.tensor([loss.sum().item(), (rw - rl).sum().item(), (rw > rl).sum().item(),
                                  rw.sum().item(), rl.sum().item()], dtype=torch.float64)
        state.step = step
        n_tokens = float(sum(len(p.input_ids) + len(chosen) + len(rejected) for p, chosen, rejected in pairs))
        state.trained_tokens += int(all_reduce(torch.tensor(n_tokens, device=dist.device)).item())
        sums = all_reduce(sums.to(dist.device)).cpu() / cfg.batch_size
        metrics = {"step": step, "total_steps": cfg.total_steps,
                   "train_loss": sums[0].item(), "train_reward_margin": sums[1].item(),
                   "train_reward_accuracy": sums[2].item(), "train_chosen_reward": sums[3].item(),
                   "train_rejected_reward": sums[4].item(),
                   "learning_rate": lr, "timing": {"step": {"training": time.perf_counter() - t_step}},
                   "memory": memory_stats()}
        last = step == cfg.total_steps
        if valid is not None and (step % cfg.eval_interval == 0 or last):
            t_eval = time.perf_counter()
            metrics.update(evaluate(engine, reference_logps, valid, eval_subset, cfg, pad_id, micro, shared, dist,
                                    "valid"))
            if last:
                metrics.update(evaluate(engine, reference_logps, valid, list(range(len(valid))), cfg, pad_id, micro,
                                        shared, dist, "full_valid"))
            metrics["timing"]["step"]["eval"] = time.perf_counter() - t_eval
        metrics["timing"]["step"]["full_iteration"] = time.perf_counter() - t_step
        message = (f"Step {step}/{cfg.total_steps}: training loss={metrics['train_loss']:.2f}, "
                   f"reward margin={metrics['train_reward_margin']:.3f}")
        events.metrics(step, metrics, message)

        pause = signals.should_pause(dist.device)
        epoch_end = math.floor(step / steps_per_epoch) > math.floor((step - 1) / steps_per_epoch)
        scores = {k: v for k, v in metrics.items() if k not in ("timing", "learning_rate", "total_steps", "memory")}
        if not last and ckpt.end_step(engine, state, scores, save=epoch_end, pause=pause):
            return "paused"

    ckpt.finish(engine, state, scores)
    return "finished"


@torch.no_grad()
def evaluate(engine, reference_logps, valid: ChatData, subset: list[int], cfg: DPOConfig, pad_id: int, micro: int,
             shared: bool, dist, split: str) -> dict:
    """`{split}_loss`, `{split}_reward_margin` and `{split}_reward_accuracy` over `subset` of the validation
    pairs, split over the ranks (each rank the same number of forward passes: ZeRO-3 gathers weights in them)."""
    engine.eval()
    per_rank = math.ceil(len(subset) / dist.world)
    mine = subset[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    real = len(mine)
    mine = mine + subset[:per_rank - real]  # padding rows, not counted
    sums = torch.zeros(4, dtype=torch.float64)  # loss, margin, correct, pairs
    for i in range(0, len(mine), micro):
        pairs = [pair_of(valid, j, cfg.max_length) for j in mine[i:i + micro]]
        (mb,) = pair_batches(pairs, len(pairs), pad_id, dist.device)
        logps, refl = answer_logps(engine, mb, shared), reference_logps(mb)  # [2m]
        loss, rw, rl = dpo_loss(logps[0::2], logps[1::2], refl[0::2], refl[1::2], cfg.beta)  # [m]
        keep = (torch.arange(len(pairs), device=loss.device) + i < real).double()  # [m], 0 on padding rows
        sums += torch.stack([(loss.double() * keep).sum(), ((rw - rl).double() * keep).sum(),
                             ((rw > rl).double() * keep).sum(), keep.sum()]).cpu()
    sums = all_reduce(sums.to(dist.device)).cpu()
    engine.train()
    n = sums[3].clamp(min=1)
    return {f"{split}_loss": (sums[0] / n).item(), f"{split}_reward_margin": (sums[1] / n).item(),
            f"{split}_reward_accuracy": (sums[2] / n).item()}


# ---------------------------------------------------------------------------------- measuring a model


@torch.no_grad()
def measure(model_path: str, pairs_file: str, reference: str | None = None, beta: float = 0.1,
            micro: int = 8) -> dict:
    """A model's preference for the preferred answers of `pairs_file`, on this machine's device, float32:
    `logp_margin` mean of log pi(y_w) - log pi(y_l), `logp_accuracy` the fraction of pairs where it is > 0, and
    with a `reference` model the implicit reward margin and accuracy (the trainer's valid_reward_*)."""
    from trainer.data import read_jsonl
    from trainer.model import is_vision_model, load_model, load_processor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vision = is_vision_model(model_path)
    processor = load_processor(model_path, vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, lines = read_jsonl(pairs_file, "pairs file")
    data = ChatData(rows, lines, processor, vision, "pairs file")

    def margins(path: str) -> torch.Tensor:
        model = load_model(path, vision, torch.float32).to(device).eval()
        out = []
        for i in range(0, len(data), micro):
            pairs = [pair_of(data, j, 1 << 30) for j in range(i, min(i + micro, len(data)))]
            (mb,) = pair_batches(pairs, len(pairs), pad_id, device)
            logps = answer_logps(model, mb, shared_prefix=True)  # [2m]
            out.append((logps[0::2] - logps[1::2]).double().cpu())  # [m]
        return torch.cat(out)  # [N]

    policy = margins(model_path)
    result = {"pairs": len(data), "logp_margin": policy.mean().item(),
              "logp_accuracy": (policy > 0).double().mean().item()}
    if reference is not None:
        reward = beta * (policy - margins(reference))  # [N], r_w - r_l
        result.update(reward_margin=reward.mean().item(), reward_accuracy=(reward > 0).double().mean().item())
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m trainer.dpo",
                                description="A model's log-prob margin (and reward margin) on preference rows.")
    p.add_argument("model")
    p.add_argument("pairs", help="preference rows (JSONL), images as file:// paths, absolute paths or data: URLs")
    p.add_argument("--reference", help="the starting model: also print the implicit reward margin and accuracy")
    p.add_argument("--beta", type=float, default=0.1)
    a = p.parse_args()
    print(json.dumps(measure(a.model, a.pairs, a.reference, a.beta)))
