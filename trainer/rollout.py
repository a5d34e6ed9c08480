"""Rollout engines: sample G completions per prompt from the current policy.

Two engines with one interface (`generate`, `load_weights`, `close`), chosen by `JobSpec.rollout_engine`:

* `VLLMRollout`: vLLM's offline engine in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; executor `uni`
  for one rank, `external_launcher` when DeepSpeed started several, so each rank samples its own prompts).
  This class is the only place that touches vLLM beyond its public `LLM.generate`: weight sync after every
  optimizer step is `collective_rpc("reload_weights", weights_iterator=...)` followed by resetting the
  encoder, multimodal and prefix caches (without the resets vLLM reuses image embeddings and KV blocks
  computed with the old weights, or dies with "Encoder cache miss"). Pinned to the vLLM version below;
  tests/trainer/test_rollout.py checks the sync on every upgrade.
* `HFRollout`: `transformers.generate` on the training model itself (nothing to sync). The fallback, and
  the reference the vLLM engine is tested against: same prompts, weights and greedy decoding give the same
  tokens; sampled tokens have the same log-probabilities under both.

Both render prompts identically: the processor's chat template text plus PIL images (`trainer.data.Prompt`),
both cut a completion after its first stop token (kept: the policy learns to stop), and both never sample
the image/video placeholder tokens (`suppress_ids`): a completion holding one would no longer match its
images in the training forward pass. The trainer's log-probs mask the same tokens.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterable

import torch

from trainer.data import Prompt

log = logging.getLogger("trainer.rollout")

VLLM_PINNED = "0.32."
"""The vLLM release line whose weight-reload API this adapter was written and tested against."""


@dataclass
class Completion:
    token_ids: list[int]
    """Generated tokens up to and including the first stop token."""
    text: str
    """Decoded without special tokens: what graders see as `sample.output_text`."""
    truncated: bool
    """Hit max_tokens before a stop token."""


def _cut(ids: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[: i + 1], False
    return ids, True


class HFRollout:
    """`transformers.generate` on the training model, prompts left-padded into one call."""

    max_batch_prompts = 8
    """prompts per generate call"""

    def __init__(self, get_model, tokenizer, stop_ids: list[int], pad_id: int, device: torch.device,
                 zero_stage: int = 0, suppress_ids: list[int] = ()):
        self.get_model, self.tokenizer, self.suppress_ids = get_model, tokenizer, list(suppress_ids)
        self.stop_ids, self.pad_id, self.device, self.zero_stage = list(stop_ids), pad_id, device, zero_stage

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], n: int, max_tokens: int, temperature: float, top_p: float,
                 seeds: list[int]) -> list[list[Completion]]:
        model = self.get_model()
        was_training = model.training
        model.eval()
        gather = contextlib.nullcontext()
        if self.zero_stage == 3:  # generation needs whole weights
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        out = []
        try:
            with gather:
                # One generate call per chunk of prompts (left-padded): decode steps dominate on small models.
                for i in range(0, len(prompts), self.max_batch_prompts):
                    out += self._generate_chunk(model, prompts[i:i + self.max_batch_prompts], n, max_tokens,
                                                temperature, top_p, seeds[i])
        finally:
            model.train(was_training)
        return out

    def _generate_chunk(self, model, prompts: list[Prompt], n: int, max_tokens: int, temperature: float,
                        top_p: float, seed: int) -> list[list[Completion]]:
        torch.manual_seed(seed)  # one seed per call: the step's samples depend on (seed, step, rank) only
        P = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(prompts), P), dtype=torch.long)
        extra = {k: torch.zeros((len(prompts), P), dtype=torch.long) for k in prompts[0].per_token}
        for b, p in enumerate(prompts):
            ids[b, P - len(p.input_ids):] = torch.tensor(p.input_ids)
            att[b, P - len(p.input_ids):] = 1
            for k in extra:
                extra[k][b, P - len(p.input_ids):] = torch.tensor(p.per_token[k])
        mm = {k: torch.cat([p.mm[k] for p in prompts]).to(self.device) for k in prompts[0].mm}
        mm.update({k: v.to(self.device) for k, v in extra.items()})
        greedy = temperature == 0  # n identical completions: decode once
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p)
        seqs = model.generate(input_ids=ids.to(self.device), attention_mask=att.to(self.device), **mm, **sampling,
                              top_k=0, max_new_tokens=max_tokens, num_return_sequences=1 if greedy else n,
                              suppress_tokens=self.suppress_ids or None, eos_token_id=self.stop_ids,
                              pad_token_id=self.pad_id, use_cache=True)
        if greedy:
            seqs = seqs.repeat_interleave(n, dim=0)
        rows = seqs[:, P:].tolist()  # [len(prompts) * n, new tokens], each prompt's n rows together
        out = []
        for b in range(len(prompts)):
            group = []
            for row in rows[b * n:(b + 1) * n]:
                toks, truncated = _cut(row, set(self.stop_ids))
                group.append(Completion(toks, self.tokenizer.decode(toks, skip_special_tokens=True), truncated))
            out.append(group)
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass  # generates with the training model itself

    def close(self) -> None:
        pass


class VLLMRollout:
    """vLLM's offline engine in this process."""

    def __init__(self, model_path: str, *, tokenizer, stop_ids: list[int], suppress_ids: list[int], dtype: torch.dtype,
                 max_model_len: int, max_num_seqs: int, seed: int, images_per_prompt: int | None,
                 world_size: int, cpu: bool, gpu_memory_utilization: float = 0.3,
                 kv_cache_bytes: int | None = None, enforce_eager: bool | None = None):
        import vllm
        from vllm import LLM

        if not vllm.__version__.startswith(VLLM_PINNED):
            log.warning("vLLM %s: the rollout adapter was tested with %sx; weight sync may break",
                        vllm.__version__, VLLM_PINNED)
        self.tokenizer, self.stop_ids = tokenizer, list(stop_ids)
        self.logit_bias = {int(t): -100.0 for t in suppress_ids} or None  # vLLM's floor for a bias
        kwargs = dict(
            model=model_path,
            dtype={torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype],
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            seed=seed,
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            distributed_executor_backend="uni" if world_size == 1 else "external_launcher",
            enable_prefix_caching=True,
        )
        if images_per_prompt is not None:
            kwargs["limit_mm_per_prompt"] = {"image": max(images_per_prompt, 1), "video": 0}
        if cpu:
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes or (256 << 20)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        with _inspect_in_process(cpu):
            self.llm = LLM(**kwargs)

    def generate(self, prompts: list[Prompt], n: int, max_tokens: int, temperature: float, top_p: float,
                 seeds: list[int]) -> list[list[Completion]]:
        from vllm import SamplingParams

        requests = [{"prompt": p.text, **({"multi_modal_data": {"image": p.images}} if p.images else {})}
                    for p in prompts]
        greedy = temperature == 0  # vLLM refuses n > 1 with greedy decoding: decode once, repeat
        params = [SamplingParams(n=1 if greedy else n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                 max_tokens=max_tokens, seed=s, stop_token_ids=self.stop_ids, detokenize=False,
                                 logit_bias=self.logit_bias)
                  for s in seeds]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        out = []
        for prompt, result in zip(prompts, outputs):
            if list(result.prompt_token_ids) != prompt.input_ids:
                raise RuntimeError("vLLM tokenised the prompt differently from the processor "
                                   f"(row {prompt.index}): check the chat template and image settings")
            group = []
            for o in sorted(result.outputs, key=lambda o: o.index):
                toks, truncated = _cut(list(o.token_ids), set(self.stop_ids))
                group.append(Completion(toks, self.tokenizer.decode(toks, skip_special_tokens=True), truncated))
            out.append(group * n if greedy else group)
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights in place (transformers' names), then drop every cache built on the old ones."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights)})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None


@contextlib.contextmanager
def _inspect_in_process(cpu: bool):
    """On CPU, let vLLM inspect the model class in this process instead of a fresh interpreter.

    vLLM does it in a subprocess "to avoid initializing CUDA" and caches the answer under VLLM_CACHE_ROOT;
    with a cold cache that subprocess (a full vLLM import) costs 10-30 s on 2 cores. Without CUDA there is
    nothing to protect. Private API (vLLM 0.32 `registry._run_in_subprocess`): skipped if it moved.
    """
    try:
        from vllm.model_executor.models import registry
    except ImportError:
        registry = None
    original = getattr(registry, "_run_in_subprocess", None)
    if not cpu or original is None:
        yield
        return
    registry._run_in_subprocess = lambda fn, *a, **k: fn()
    try:
        yield
    finally:
        registry._run_in_subprocess = original


def kv_cache_bytes(config, tokens: int, dtype_bytes: int) -> int:
    """KV cache for `tokens` tokens of a transformers config (CPU: vLLM allocates exactly this), x2 slack."""
    text = getattr(config, "text_config", None) or config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * heads * head_dim * dtype_bytes
    return max(64 << 20, 2 * per_token * tokens)
