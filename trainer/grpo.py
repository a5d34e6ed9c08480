"""GRPO for vision-language models (Visual-RFT, DeepSeek-R1), in one file that reads top to bottom.

One optimizer step:
  1. sample   B prompts of the training file, G completions each (vLLM in this process, or a transformers decode loop)
  2. score    every completion with the job's grader: r [B, G]                 (grader.compile(spec).grade)
  3. advantage A = (r - mean_group(r)) / (std_group(r) + 1e-4)                  (scale_rewards=group)
  4. loss     clipped surrogate  -min(rho * A, clip(rho, 1-eps, 1+eps_high) * A) + beta * KL_k3(pi || pi_ref)
              per completion token, aggregated by `loss_type` (grpo | dr_grpo | dapo), for num_iterations steps;
              a prompt's forward pass runs once for its G completions (`completion_logprobs`)
  5. step     DeepSpeed backward/step (ZeRO 0-3, gradient clipping), learning rate from a pure schedule
  6. sync     the new weights into the rollout engine
Every `eval_interval` steps the validation prompts are sampled and scored, a checkpoint is written and the
best 3 (by valid reward) plus the last are kept. Events follow OpenAI's RFT metrics layout; a sample of each
step's rollouts and every evaluated validation prompt go out as `rollouts` events (trainer/rollout_records.py).

References: Shao et al. 2024 (GRPO, DeepSeekMath), DeepSeek-R1 2025, Liu et al. 2025 (Visual-RFT: reward
= format + IoU/accuracy, beta 0.04, G 8, temperature 1), Liu et al. 2025 (Dr. GRPO: no length or std
normalisation), Yu et al. 2025 (DAPO: token-level mean, clip-higher), Schulman 2020 (k3 KL estimator).
The settings (`GRPOConfig`, OpenAI's hyperparameters and ours) are declared in trainer/hparams.py; the table of
them is in trainer/README.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainer.accelerator import planned_bytes
from trainer.checkpoints import Checkpointer
from trainer.data import ChatData, Prompt, cat_mm, pack_prompts
from trainer.engine import lr_at, make_reference, prepare_policy, set_lr
from trainer.export import export_weights
from trainer.families import family_of
from trainer.hparams import GRPOConfig
from trainer.job_spec import TrainerError
from trainer.model import load_job_data, model_config, model_family, placeholder_token_ids, stop_token_ids
from trainer.process import all_gather_tensor, all_reduce, derive_seed, epoch_order, memory_stats, seed_everything
from trainer.rollout_records import build_records, gather_records

# ------------------------------------------------------------------------------------------- the loss

def group_advantages(rewards: torch.Tensor, scale_rewards: str, eps: float = 1e-4) -> torch.Tensor:
    """rewards [N, G] (N prompts, G completions each) -> advantages [N, G].

    >>> group_advantages(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), "none").tolist()
    [[0.5, -0.5], [0.0, 0.0]]
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [N, G], r - mean of its group
    if scale_rewards == "group":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)  # unbiased std of each group
    if scale_rewards == "batch":
        return centred / (rewards.std() + eps)  # one std over all N*G rewards
    return centred  # "none": Dr. GRPO


def per_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                   adv: torch.Tensor, eps_low: float, eps_high: float, beta: float):
    """The GRPO objective per completion token (to minimise), the clipped mask and the KL.

    logp, old_logp, ref_logp: [B, T] log-probs of the sampled tokens under the policy being trained, the
    policy that sampled them and the reference; adv: [B] advantage of each completion.
    """
    ratio = torch.exp(logp - old_logp)  # [B, T], rho = pi / pi_old (1 on the first iteration)
    a = adv.unsqueeze(1)  # [B, 1]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    loss = -torch.min(unclipped, clipped)  # [B, T], PPO's pessimistic bound
    is_clipped = (clipped < unclipped).float()  # [B, T], tokens whose gradient the clip removed
    kl = torch.zeros_like(logp)
    if ref_logp is not None and beta != 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1  # [B, T], k3 estimator of KL(pi || pi_ref), >= 0 (Schulman 2020)
        loss = loss + beta * kl
    return loss, is_clipped, kl


# Aggregations: one small pure function each, chosen once. Each returns this micro-batch's share of the
# batch loss, so the shares of all micro-batches (and ranks) add up to the loss of the whole batch.
# mask [B, T] marks completion tokens; n_seqs / n_tokens count the whole batch, max_len is the budget.

def agg_grpo(loss, mask, n_seqs, n_tokens, max_len):
    """Mean over each completion's tokens, then mean over completions (GRPO, Visual-RFT)."""
    per_seq = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
    return per_seq.sum() / n_seqs


def agg_dr_grpo(loss, mask, n_seqs, n_tokens, max_len):
    """Sum over tokens / (completions x max_completion_length): no length bias (Dr. GRPO)."""
    return (loss * mask).sum() / (n_seqs * max_len)


def agg_dapo(loss, mask, n_seqs, n_tokens, max_len):
    """Sum over tokens / all completion tokens of the batch: token-level mean (DAPO)."""
    return (loss * mask).sum() / max(n_tokens, 1)


AGGREGATIONS = {"grpo": agg_grpo, "dr_grpo": agg_dr_grpo, "dapo": agg_dapo}


def completion_logprobs(model, mb: "MicroBatch", temperature: float, suppress_ids: list[int] = (),
                        shared_prefix: bool = True) -> torch.Tensor:
    """log pi(token) of each completion token of the micro-batch: [b, C] (junk on padding: mask it).

    shared_prefix: the G completions of a prompt share its forward pass. The prompts (and their images)
    run once, batch [Bp, P]; their KV cache is copied to each completion's row and the completions run on
    top of it, batch [b, C]. Gradients flow through the copies back into the prompt's pass, so the loss and
    its gradient are those of b full sequences (tests/trainer/test_shared_prefix.py), at the cost of
    Bp x P + b x C tokens instead of b x (P + C): on image prompts most of a step's compute. Off (full
    sequences) under gradient checkpointing, which recomputes layers and cannot keep a cache.

    The distribution is the one sampled from: logits divided by the temperature, image/video placeholder
    tokens removed (the rollout engines never sample them).
    """
    logits = _shared_prefix_logits(model, mb) if shared_prefix else _full_logits(model, mb)  # [b, C, V]
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if suppress_ids:
        logits[..., list(suppress_ids)] = float("-inf")
    return torch.log_softmax(logits, dim=-1).gather(-1, mb.completion_ids.unsqueeze(-1)).squeeze(-1)  # [b, C]


def _shared_prefix_logits(model, mb: "MicroBatch") -> torch.Tensor:
    """Logits predicting each completion token, [b, C, V]: the prompts once, the completions on their cache."""
    hf = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    family = family_of(hf.config, text_ok=True)
    # Positions as generation builds them ([Bp, P], or [4, Bp, P] for M-RoPE: text row + t/h/w of images);
    # completion token t sits one past the prompt's last position, plus t, in every row (as in decoding).
    inputs = {**mb.mm, **mb.per_token}
    pos = family.position_ids(hf, mb.prompt_ids, mb.prompt_att, inputs)
    out = model(input_ids=mb.prompt_ids, attention_mask=mb.prompt_att, position_ids=pos, use_cache=True,
                logits_to_keep=1, **inputs)
    cache = out.past_key_values  # keys/values [Bp, heads, P, head_dim] per layer
    cache.batch_select_indices(mb.owner)  # [b, heads, P, head_dim]: a differentiable copy per completion
    b, C = mb.completion_ids.shape
    first = out.logits[mb.owner, -1:]  # [b, 1, V]: the prompt's last position predicts completion token 0
    if C == 1:
        return first
    steps = torch.arange(1, C + 1, device=pos.device)  # [C]
    cpos = family.decode_positions(pos[..., -1:].index_select(-2, mb.owner), steps)  # [b, C] or [4, b, C]
    att = torch.cat([mb.prompt_att.index_select(0, mb.owner), mb.prompt_att.new_ones(b, C)], dim=1)  # [b, P + C]
    rest = model(input_ids=mb.completion_ids[:, :-1], attention_mask=att[:, :-1], position_ids=cpos[..., :-1],
                 past_key_values=cache, use_cache=True).logits  # [b, C - 1, V]: token t predicts t + 1
    return torch.cat([first, rest], dim=1)  # [b, C, V]


def _full_logits(model, mb: "MicroBatch") -> torch.Tensor:
    """The same logits from b full sequences (prompt repeated per completion), [b, C, V]."""
    owner = mb.owner
    b, C = mb.completion_ids.shape
    ids = torch.cat([mb.prompt_ids.index_select(0, owner), mb.completion_ids], dim=1)  # [b, P + C]
    att = torch.cat([mb.prompt_att.index_select(0, owner), mb.prompt_att.new_ones(b, C)], dim=1)
    mm = {k: v.to(ids.device) for k, v in cat_mm([mb.prompt_mm[i] for i in owner.tolist()]).items()}
    for k, v in mb.per_token.items():  # the prompt's, 0 on completion tokens
        mm[k] = torch.cat([v.index_select(0, owner), v.new_zeros(b, C)], dim=1)
    out = model(input_ids=ids, attention_mask=att, logits_to_keep=C + 1, use_cache=False, **mm)
    return out.logits[:, :-1]  # [b, C, V]: position t predicts token t + 1


# ----------------------------------------------------------------------------------------- the loop

@dataclass
class Sequence:
    prompt: Prompt
    completion_ids: list[int]
    advantage: float
    truncated: bool


@dataclass
class MicroBatch:
    """A chunk of completions and the distinct prompts they answer, on the device."""

    prompt_ids: torch.Tensor
    """[Bp, P] the chunk's distinct prompts, left-padded"""
    prompt_att: torch.Tensor
    """[Bp, P] 0 on the padding"""
    mm: dict[str, torch.Tensor]
    """the prompts' images' tensors, concatenated: pixel_values, image_grid_thw, ..."""
    per_token: dict[str, torch.Tensor]
    """the prompts' per-token extras [Bp, P] (e.g. mm_token_type_ids)"""
    prompt_mm: list[dict[str, torch.Tensor]]
    """each prompt's own extra inputs (on the host), for the full-sequence path"""
    owner: torch.Tensor
    """[b] the prompt row each completion answers"""
    completion_ids: torch.Tensor
    """[b, C] right-padded"""
    mask: torch.Tensor
    """[b, C] 1 on completion tokens, 0 on padding"""
    advantages: torch.Tensor
    """[b]"""
    truncated: torch.Tensor
    """[b] 1 where the completion hit max_completion_length"""


def make_microbatches(seqs: list[Sequence], size: int, pad_id: int, device) -> list[MicroBatch]:
    """Chunks of `size` sequences, each with its distinct prompts, padded and moved to the device."""
    out = []
    for i in range(0, len(seqs), size):
        chunk = seqs[i:i + size]
        prompts: list[Prompt] = []
        owner = []
        for s in chunk:  # a group's sequences share one Prompt object
            if not prompts or s.prompt is not prompts[-1]:
                prompts.append(s.prompt)
            owner.append(len(prompts) - 1)
        ids, att, mm, per_token = pack_prompts(prompts, pad_id)  # [Bp, P], left-padded
        C = max(max(len(s.completion_ids) for s in chunk), 1)
        comp = torch.full((len(chunk), C), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), C), dtype=torch.float32)
        for b, s in enumerate(chunk):
            comp[b, :len(s.completion_ids)] = torch.tensor(s.completion_ids, dtype=torch.long)
            mask[b, :len(s.completion_ids)] = 1
        out.append(MicroBatch(
            prompt_ids=ids.to(device), prompt_att=att.to(device), mm={k: v.to(device) for k, v in mm.items()},
            per_token={k: v.to(device) for k, v in per_token.items()}, prompt_mm=[p.mm for p in prompts],
            owner=torch.tensor(owner, device=device), completion_ids=comp.to(device), mask=mask.to(device),
            advantages=torch.tensor([s.advantage for s in chunk], dtype=torch.float32, device=device),
            truncated=torch.tensor([float(s.truncated) for s in chunk], device=device)))
    return out


def main(job, events, dist, signals) -> str:
    """Train; returns "finished" or "paused"."""
    import grader as graders
    from trainer.rollout import HFRollout, VLLMRollout, constrains, kv_cache_bytes

    t_setup = time.perf_counter()
    output_dir = Path(job.output_dir)
    job_data = load_job_data(job)
    vision, tokenizer, pad_id, train, valid = (job_data.vision, job_data.tokenizer, job_data.pad_id,
                                             job_data.train, job_data.valid)
    cfg = GRPOConfig.resolve(job.hyperparameters, len(train), dist.world)

    if not job.grader:
        raise TrainerError("invalid_grader", "a reinforcement job needs a grader")
    if constrains(job.response_format) and job.rollout_engine != "vllm":
        raise TrainerError(
            "unsupported_response_format",
            "response_format needs the vLLM rollout engine "
            f"(VRFT_ROLLOUT_ENGINE=vllm); the '{job.rollout_engine}' engine cannot constrain its samples",
        )
    # The IoU grader's input_format "auto": the boxes this family answers in, at its processor's pixel limits.
    family = model_family(job.model_path)
    boxes = family.box_convention_for(getattr(train.processor, "image_processor", None))
    try:
        types = grader_types(job.grader)
        grader = graders.compile(job.grader, service_url=job.grader_url, box_convention=boxes)
    except graders.GraderValidationError as e:
        raise TrainerError("invalid_grader", f"the grader is invalid: {e}") from None

    # The policy, its optimizer under DeepSpeed, and (beta > 0) a frozen reference.
    cpu = dist.device.type == "cpu"
    per_rank_prompts = cfg.batch_size // dist.world
    per_rank_seqs = per_rank_prompts * cfg.num_generations
    policy = prepare_policy(job, cfg, per_rank_seqs, vision, dist, events)
    engine, state, micro, dtype = policy.engine, policy.state, policy.micro, policy.dtype
    peak_lr, n_params = policy.peak_lr, policy.n_params
    ref = (
        make_reference(job.model_path, vision, dtype, dist.device, cfg.zero_stage, policy.ds_config)
        if cfg.beta > 0
        else None
    )

    # The rollout engine, started on the base weights and synced to the policy's before any sampling.
    stop_ids = stop_token_ids(job.model_path, tokenizer)
    suppress = placeholder_token_ids(engine.module.config)
    probe = [train.prompt(i) for i in range(min(len(train), 256))]
    if valid is not None:
        probe += [valid.prompt(i) for i in range(min(len(valid), 64))]
    longest_prompt = max(len(p.input_ids) for p in probe)
    if job.rollout_engine == "vllm":
        max_len = min(family.max_positions(engine.module.config), longest_prompt + cfg.max_completion_length + 256)
        seqs_at_once = max(per_rank_seqs, min(cfg.max_eval_prompts, 64) * cfg.eval_samples)
        rollout = VLLMRollout(
            job.model_path, tokenizer=tokenizer, stop_ids=stop_ids, suppress_ids=suppress, dtype=dtype,
            max_model_len=max_len,
            max_num_seqs=min(256, seqs_at_once), seed=job.seed,
            images_per_prompt=max(len(p.images) for p in probe) if vision else None, world_size=dist.world,
            cpu=cpu, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            kv_cache_bytes=kv_cache_bytes(engine.module.config, min(256, seqs_at_once) * max_len, dtype.itemsize),
            response_format=job.response_format,
            planned=None if cpu else planned_bytes(model_config(job.model_path), job.hyperparameters, dist.world))
        rollout.load_weights(export_weights(engine.module, cfg.zero_stage, names="checkpoint"))
    else:
        rollout = HFRollout(lambda: engine.module, tokenizer, stop_ids, pad_id, dist.device, cfg.zero_stage, suppress,
                            compile_steps=job.rollout_compile)
    del probe
    eval_subset = _eval_subset(valid, cfg.max_eval_prompts, job.seed)
    ckpt = Checkpointer(output_dir, job.model_path, events, dist, cfg.zero_stage, cfg.keep_checkpoints,
                        metric="valid_reward_mean")
    events.message(
        f"GRPO: {cfg.total_steps} steps, {cfg.batch_size} prompts x {cfg.num_generations} samples per step, "
        f"lr {peak_lr:g}, beta {cfg.beta}, loss {cfg.loss_type}, ZeRO-{cfg.zero_stage}, {dist.world} rank(s), "
        f"rollouts by {job.rollout_engine}, {n_params:,} parameters; setup {time.perf_counter() - t_setup:.1f} s",
        data={"config": asdict(cfg), "learning_rate": peak_lr, "box_convention": boxes})

    aggregate = AGGREGATIONS[cfg.loss_type]
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    warmup_steps = int(cfg.warmup_ratio * cfg.total_steps)
    n_rows = len(train)
    data: dict = {}
    valid_scores = None

    while state.step < cfg.total_steps:
        step = state.step + 1
        t_step = time.perf_counter()
        seed_everything(job.seed, step)

        # 1. sample: this rank's share of the step's prompts, G completions each.
        positions = range((step - 1) * cfg.batch_size, step * cfg.batch_size)  # in the stream of epochs
        mine = list(positions)[dist.rank * per_rank_prompts:(dist.rank + 1) * per_rank_prompts]
        rows = [epoch_order(n_rows, job.seed, pos // n_rows)[pos % n_rows] for pos in mine]
        prompts = [train.prompt(i) for i in rows]
        groups = rollout.generate(prompts, cfg.num_generations, cfg.max_completion_length, cfg.temperature,
                                  cfg.top_p, seeds=[derive_seed(job.seed, step, pos) for pos in mine])
        t_sampling = time.perf_counter() - t_step

        # 2. score: the grader sees each completion's text and the prompt's dataset row.
        samples = [{"output_text": c.text} for g in groups for c in g]
        items = [p.row for p, g in zip(prompts, groups) for _ in g]
        graded = grader.grade(samples, items)
        local_r = torch.tensor(graded.rewards, dtype=torch.float32).view(per_rank_prompts, cfg.num_generations)

        # 3. advantages, over the whole batch (all ranks), then this rank's rows.
        rewards = all_gather_tensor(local_r.to(dist.device)).cpu()  # [batch_size, G]
        adv_all = group_advantages(rewards, cfg.scale_rewards)
        adv = adv_all[dist.rank * per_rank_prompts:(dist.rank + 1) * per_rank_prompts]  # [P, G]
        seqs = [Sequence(p, c.token_ids, float(adv[i, k]), c.truncated)
                for i, (p, g) in enumerate(zip(prompts, groups)) for k, c in enumerate(g)]
        # Rollout records: the batch's first `rollout_records` prompts, all G completions (trainer/rollout_records.py).
        take = {i: pos - positions.start for i, pos in enumerate(mine) if pos - positions.start < cfg.rollout_records}
        records = gather_records(build_records(train, prompts, groups, graded, take, adv), dist) \
            if cfg.rollout_records else []

        # 4./5. loss and optimizer steps. Normalisers count the whole batch across ranks.
        t_train = time.perf_counter()
        engine.train()
        counted = [s for s in seqs if not (cfg.mask_truncated_completions and s.truncated)]
        n_tokens = all_reduce(
            torch.tensor(float(sum(len(s.completion_ids) for s in counted)), device=dist.device)
        ).item()
        n_seqs = cfg.batch_size * cfg.num_generations
        batches = make_microbatches(seqs, micro, pad_id, dist.device)
        shared = not cfg.gradient_checkpointing  # checkpointed layers cannot keep the prompt's cache
        old_logps, ref_logps = [], []
        with torch.no_grad():
            for mb in batches:
                old_logps.append(completion_logprobs(engine.module, mb, cfg.temperature, suppress, shared)
                                 if cfg.num_iterations > 1 else None)
                ref_logps.append(
                    completion_logprobs(ref, mb, cfg.temperature, suppress, shared) if ref is not None else None
                )
        lr = lr_at(step, cfg.total_steps, peak_lr, cfg.lr_scheduler, warmup_steps)
        set_lr(engine, lr)
        stats = torch.zeros(5, dtype=torch.float64)  # loss, kl sum, clipped sum, token count, (spare)
        grad_norm = None
        for it in range(cfg.num_iterations):
            for k, (mb, old, refl) in enumerate(zip(batches, old_logps, ref_logps)):
                mask = mb.mask * (1 - mb.truncated).unsqueeze(1) if cfg.mask_truncated_completions else mb.mask
                logp = completion_logprobs(engine, mb, cfg.temperature, suppress, shared)  # [b, C]
                old = logp.detach() if old is None else old
                loss_tok, clipped, kl = per_token_loss(logp, old, refl, mb.advantages, cfg.epsilon, eps_high, cfg.beta)
                loss = aggregate(loss_tok, mask, n_seqs, n_tokens, cfg.max_completion_length) * dist.world
                engine.backward(loss, scale_wrt_gas=False)  # DeepSpeed averages gradients over ranks: x world above
                if k == len(batches) - 1 and it == 0:
                    grad_norm = gradient_norm(engine, cfg.zero_stage)
                engine.step()  # steps the optimizer at the last micro-batch (gradient_accumulation_steps)
                if it == 0:
                    stats += torch.tensor([loss.item() / dist.world, (kl * mask).sum().item(),
                                           (clipped * mask).sum().item(), mask.sum().item(), 0.0], dtype=torch.float64)
        if grad_norm is None:
            grad_norm = engine.get_global_grad_norm()
        state.step = step
        state.trained_tokens += int(all_reduce(torch.tensor(float(sum(len(s.prompt.input_ids) + len(s.completion_ids)
                                                                        for s in seqs)), device=dist.device)).item())

        # 6. sync the new weights into the rollout engine.
        rollout.load_weights(export_weights(engine.module, cfg.zero_stage, names="checkpoint"))
        t_training = time.perf_counter() - t_train

        # Metrics (OpenAI's RFT layout + RL health signals), an evaluation and a checkpoint now and then.
        stats = all_reduce(stats.to(dist.device)).cpu()
        lengths = all_gather_tensor(
            torch.tensor([float(len(s.completion_ids)) for s in seqs], device=dist.device)
        ).cpu()
        truncs = all_gather_tensor(torch.tensor([float(s.truncated) for s in seqs], device=dist.device)).cpu()
        train_scores = _grader_scores(graded, types, dist, "train")
        data = {
            "step": step, "total_steps": cfg.total_steps,
            "scores": {"train_reward_mean": rewards.mean().item(), "graders": train_scores["graders"]},
            "errors": {"graders": train_scores["errors"]},
            "train": {
                "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
                "reward_std_within_groups": rewards.std(dim=1).mean().item(),
                "frac_reward_zero_std": (rewards.std(dim=1) < 1e-6).float().mean().item(),
                "kl": (stats[1] / stats[3].clamp(min=1)).item(),
                "clip_ratio": (stats[2] / stats[3].clamp(min=1)).item(),
                "loss": stats[0].item(),
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "learning_rate": lr,
                "completion_length_mean": lengths.mean().item(),
                "completion_length_max": lengths.max().item(),
                "truncated_ratio": truncs.mean().item(),
            },
            "usage": {"samples": {"train_completion_tokens_mean": lengths.mean().item(),
                                  "train_completion_tokens_count": int(lengths.sum().item())}},
            "timing": {"step": {"sampling": t_sampling, "training": t_training}},
            "train_mean_reward": rewards.mean().item(),
            "memory": memory_stats(),
        }
        evaluated = step % cfg.eval_interval == 0 or step == cfg.total_steps
        valid_scores = None
        t_eval = time.perf_counter()
        if evaluated and valid is not None:
            valid_scores = evaluate(valid, eval_subset, rollout, grader, types, cfg, job.seed, dist)
            data["scores"]["valid_reward_mean"] = valid_scores["valid_reward_mean"]
            data["full_valid_mean_reward"] = valid_scores["valid_reward_mean"]
            by_name = {g["name"]: g for g in valid_scores["graders"]}
            for g in data["scores"]["graders"]:
                g.update(by_name.get(g["name"], {}))
            for e in data["errors"]["graders"]:
                e.update(valid_scores["errors"].get(e["name"], {}))
        data["timing"]["step"]["eval"] = time.perf_counter() - t_eval
        data["timing"]["step"]["full_iteration"] = time.perf_counter() - t_step
        msg = f"Step {step}/{cfg.total_steps}: train mean reward={data['train_mean_reward']:.2f}"
        if valid_scores is not None:
            msg += f", full validation mean reward={valid_scores['valid_reward_mean']:.2f}"
        events.metrics(step, data, msg)
        events.rollouts(step, "train", records)
        if valid_scores is not None:
            events.rollouts(step, "validation", valid_scores["records"])

        pause = signals.should_pause(dist.device)
        scores = {"step": step, "train_reward_mean": data["train_mean_reward"]}
        if valid_scores is not None:
            scores["valid_reward_mean"] = valid_scores["valid_reward_mean"]
        if step != cfg.total_steps and ckpt.end_step(engine, state, scores, save=evaluated, pause=pause):
            rollout.close()
            return "paused"

    ckpt.finish(engine, state, scores)
    rollout.close()
    if hasattr(grader, "close"):
        grader.close()
    return "finished"


def evaluate(valid: ChatData, subset: list[int], rollout, grader, types: dict, cfg: GRPOConfig, seed: int,
             dist) -> dict:
    """Mean reward of `eval_samples` completions per validation prompt (same sampling seeds every time)."""
    per_rank = math.ceil(len(subset) / dist.world)
    mine = subset[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    weight = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))  # equal work per rank (ZeRO-3 gathers)
    mine = mine + subset[:per_rank - len(mine)]
    prompts = [valid.prompt(i) for i in mine]
    groups = rollout.generate(prompts, cfg.eval_samples, cfg.max_completion_length, cfg.temperature, cfg.top_p,
                              seeds=[derive_seed(seed, 0x7A11D, i) for i in mine])
    samples = [{"output_text": c.text} for g in groups for c in g]
    items = [p.row for p, g in zip(prompts, groups) for _ in g]
    weights = [w for w, g in zip(weight, groups) for _ in g]
    graded = grader.grade(samples, items) if samples else None
    real = {i: dist.rank * per_rank + i for i in range(len(weight)) if weight[i] > 0}  # not the padding
    records = gather_records(build_records(valid, prompts, groups, graded, real), dist) if cfg.rollout_records else []
    scores = _grader_scores(graded, types, dist, "valid", weights)
    total = all_reduce(torch.tensor([sum(r * w for r, w in zip(graded.rewards, weights)), sum(weights)],
                                    dtype=torch.float64, device=dist.device)).cpu()
    return {"valid_reward_mean": (total[0] / total[1].clamp(min=1)).item(), "graders": scores["graders"],
            "records": records,
            "errors": {e["name"]: {k: v for k, v in e.items() if k not in ("name", "type")} for e in scores["errors"]}}


def _grader_scores(graded, types: dict, dist, split: str, weights: list[float] | None = None) -> dict:
    """Per-grader mean rewards and error rates, summed over ranks, in OpenAI's `graders` list shape."""
    from grader import ERROR_FLAGS

    n = len(graded.results)
    w = torch.tensor(weights if weights is not None else [1.0] * n, dtype=torch.float64)
    subs = graded.sub_rewards
    names = sorted(subs)
    vals = [float((torch.tensor(subs[k], dtype=torch.float64) * w).sum()) for k in names]
    errs = [float(sum(wi for r, wi in zip(graded.results, w.tolist()) if r.errors.get(f))) for f in ERROR_FLAGS]
    t = all_reduce(torch.tensor(vals + errs + [float(w.sum())], dtype=torch.float64, device=dist.device)).cpu()
    count = max(t[-1].item(), 1.0)
    graders = [{"name": k, "type": types.get(k, graded.type), f"{split}_reward_mean": t[i].item() / count}
               for i, k in enumerate(names)]
    err = {f"{split}_{f}_mean": t[len(names) + j].item() / count for j, f in enumerate(ERROR_FLAGS)}
    err.update({f"{split}_{f}_count": int(t[len(names) + j].item()) for j, f in enumerate(ERROR_FLAGS)})
    return {"graders": graders, "errors": [{"name": graded.name, "type": graded.type, **err}]}


def grader_types(spec: dict) -> dict[str, str]:
    """Type of the grader and, for a multi grader, of each sub-grader key (for the `graders` list)."""
    import grader as graders

    s = graders.validate_grader(spec)
    types = {s.name: s.type}
    for key, child in (getattr(s, "graders", None) or {}).items():
        types[key] = child.type
    return types


def _eval_subset(valid: ChatData | None, max_prompts: int, seed: int) -> list[int]:
    if valid is None:
        return []
    order = epoch_order(len(valid), seed, 999_999)  # a fixed draw, not any training epoch's
    return sorted(order[:max_prompts])


def gradient_norm(engine, zero_stage: int) -> float | None:
    """The global gradient norm before clipping (ZeRO-0 holds whole averaged gradients; ZeRO 1-3 report their own)."""
    if zero_stage != 0:
        return None
    grads = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return torch.stack(grads).norm().item() if grads else 0.0
