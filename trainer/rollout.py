"""Rollout engines: sample G completions per prompt from the current policy.

Two engines with one interface (`generate`, `load_weights`, `close`), chosen by `JobSpec.rollout_engine`:

* `VLLMRollout`: vLLM's offline engine in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; executor `uni`
  for one rank, `external_launcher` when DeepSpeed started several, so each rank samples its own prompts).
  This class is the only place that touches vLLM beyond its public `LLM.generate`: weight sync after every
  optimizer step is `collective_rpc("reload_weights", weights_iterator=...)` followed by resetting the
  encoder, multimodal and prefix caches (without the resets vLLM reuses image embeddings and KV blocks
  computed with the old weights, or dies with "Encoder cache miss"). Pinned to the vLLM version below;
  tests/trainer/test_rollout.py checks the sync on every upgrade.
* `HFRollout`: the training model itself (nothing to sync), through `decode`: transformers' forward and KV
  cache in a decode loop written out here, which gives `generate`'s greedy tokens without its per-token
  overhead (tests/trainer/test_decode.py). The fallback, and the reference the vLLM engine is tested against:
  same prompts, weights and greedy decoding give the same tokens; sampled tokens have the same log-probabilities
  under both.

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

from trainer.data import Prompt, pack_prompts
from trainer.families import Family, family_of

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
    """Samples with the training model itself: `decode` (below) on prompts left-padded into one batch."""

    max_batch_prompts = 8
    """prompts per decode call"""

    def __init__(self, get_model, tokenizer, stop_ids: list[int], pad_id: int, device: torch.device,
                 zero_stage: int = 0, suppress_ids: list[int] = (), compile_steps: bool = False):
        self.get_model, self.tokenizer, self.suppress_ids = get_model, tokenizer, list(suppress_ids)
        self.stop_ids, self.pad_id, self.device, self.zero_stage = list(stop_ids), pad_id, device, zero_stage
        # torch.compile of the decode step (not under ZeRO-3, whose hooks gather parameters per module).
        self.compile_steps = compile_steps and zero_stage != 3
        self._compiled: tuple[object, object] | None = None  # (model, its compiled wrapper)

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
                # One batch per chunk of prompts (left-padded): decode steps dominate on small models.
                for i in range(0, len(prompts), self.max_batch_prompts):
                    out += self._generate_chunk(model, prompts[i:i + self.max_batch_prompts], n, max_tokens,
                                                temperature, top_p, seeds[i])
        finally:
            model.train(was_training)
        return out

    def _generate_chunk(self, model, prompts: list[Prompt], n: int, max_tokens: int, temperature: float,
                        top_p: float, seed: int) -> list[list[Completion]]:
        ids, att, mm, per_token = pack_prompts(prompts, self.pad_id)  # [B, P] left-padded, images' tensors
        mm = {k: v.to(self.device) for k, v in {**mm, **per_token}.items()}
        greedy = temperature == 0  # n identical completions: decode once
        # One seed per call: the step's samples depend on (seed, step, rank) only.
        generator = torch.Generator(self.device).manual_seed(seed)
        # inference_mode, not only no_grad: no autograd bookkeeping at all (version counters, view tracking),
        # about a tenth of a small model's decode step. Not under ZeRO-3, whose hooks may create parameter
        # tensors inside it that training then could not use.
        with torch.no_grad() if self.zero_stage == 3 else torch.inference_mode():
            seqs = decode(model, ids.to(self.device), att.to(self.device), mm, n=1 if greedy else n,
                          max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          suppress_ids=self.suppress_ids, stop_ids=self.stop_ids, generator=generator,
                          step_model=self._step_model(model))
        if greedy:
            seqs = seqs.repeat_interleave(n, dim=0)
        rows = seqs.tolist()  # [len(prompts) * n, new tokens], each prompt's n rows together
        out = []
        for b in range(len(prompts)):
            group = []
            for row in rows[b * n:(b + 1) * n]:
                toks, truncated = _cut(row, set(self.stop_ids))
                group.append(Completion(toks, self.tokenizer.decode(toks, skip_special_tokens=True), truncated))
            out.append(group)
        return out

    def _step_model(self, model):
        """The model the decode steps call: compiled once (inductor, shapes dynamic) when `compile_steps`.

        The compiled wrapper shares the model's parameters (graph inputs, not constants), so optimizer steps
        need no recompile; the prefill, with its images, stays eager (it runs once per call)."""
        if not self.compile_steps:
            return model
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model, dynamic=True))
        return self._compiled[1]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass  # generates with the training model itself

    def close(self) -> None:
        pass


@torch.no_grad()
def decode(model, ids: torch.Tensor, att: torch.Tensor, mm: dict, *, n: int, max_new_tokens: int,
           temperature: float, top_p: float, suppress_ids: list[int], stop_ids: list[int],
           generator: torch.Generator, step_model=None, family: Family | None = None) -> torch.Tensor:
    """Sample n continuations of each left-padded prompt: tokens [B * n, T], a prompt's n rows together.

    ids, att: [B, P] prompt tokens and attention mask (0 = left padding); mm: the processor's extra inputs
    (pixel_values, image_grid_thw, mm_token_type_ids, ...), given to the prefill only. temperature 0 = greedy.
    T <= max_new_tokens: the loop stops once every row has sampled a stop token; tokens after a row's first
    stop token are junk (the caller cuts there). step_model: what the decode steps call instead of `model`
    (its compiled wrapper; same parameters). family: the model's (trainer/families.py), else found from its config.

    What `model.generate(do_sample=True, top_k=0, num_return_sequences=n, suppress_tokens=...)` does, without
    its Python overhead (config validation, logits processor objects, stopping criteria, input preparation:
    about 40% of its time on a small model), and with the prompt prefilled once instead of n times: its KV
    cache is copied n times, so the vision tower and the prompt run once per prompt. Greedy tokens equal
    `generate`'s (tests/trainer/test_decode.py); sampled tokens follow the same distribution (not the same
    draws: `_sample` uses its random numbers differently from torch.multinomial).
    """
    B, P = ids.shape
    N = B * n
    family = family or family_of(model.config, text_ok=True)
    # Positions as `generate` builds them, by the model's family (trainer/families.py; test_decode.py checks them
    # against generate): [B, P] over the unpadded tokens, or [4, B, P] for M-RoPE (text row + t/h/w rows).
    pos = family.position_ids(model, ids, att, mm)
    out = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1, **mm)
    cache = out.past_key_values  # DynamicCache: keys/values [B, heads, P, head_dim] per layer
    if n > 1:
        cache.batch_repeat_interleave(n)  # [N, heads, P, head_dim]: n copies of each prompt's cache
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # [N, V]
    last = pos[..., -1:].repeat_interleave(n, dim=-2)  # [N, 1] or [4, N, 1]: each row's last position
    # [N, P]; None when no prompt is padded: the causal mask alone is right, and decode steps skip building one.
    att = att.repeat_interleave(n, dim=0) if not bool(att.all()) else None

    step = model if step_model is None else step_model
    suppress = torch.tensor(list(suppress_ids), dtype=torch.long, device=ids.device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=ids.device)
    finished = torch.zeros(N, dtype=torch.bool, device=ids.device)
    tokens = []
    for t in range(max_new_tokens):
        # logits [N, V] of the next token -> tok [N]
        logits[:, suppress] = float("-inf")  # image/video placeholders: never sampled
        if temperature == 0:
            tok = logits.argmax(dim=-1)
        else:
            logits = logits / temperature
            if top_p < 1.0:
                logits = _top_p_filter(logits, top_p)
            tok = _sample(torch.softmax(logits, dim=-1), generator)
        tokens.append(tok)
        finished |= torch.isin(tok, stops)
        if t == max_new_tokens - 1 or bool(finished.all()):  # one host sync per token, as in `generate`
            break
        # Feed tok [N] back: one position further, attending to the prompt and every sampled token.
        if att is not None:
            att = torch.cat([att, att.new_ones(N, 1)], dim=1)  # [N, P + t + 1]
        pos = family.decode_positions(last, t + 1)
        out = step(input_ids=tok[:, None], attention_mask=att, position_ids=pos, past_key_values=cache,
                    use_cache=True)
        logits = out.logits[:, -1].float()  # [N, V]
    return torch.stack(tokens, dim=1)  # [N, T]


def _sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs [N, V] (inverse transform sampling): the first token whose cumulative
    probability exceeds a uniform draw. The distribution of torch.multinomial at ~1/8 of its CPU time (it costs
    0.1-0.2 ms a call, as much as a tenth of a small model's decode step)."""
    cdf = probs.double().cumsum(dim=-1)  # [N, V]; float64 so that tiny probabilities keep their share
    cdf = cdf / cdf[:, -1:]  # last column exactly 1, so a draw in [0, 1) always lands on a token
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)  # [N, 1]
    # right=True: the first index with cdf > u; a zero-probability token repeats its left neighbour's cdf,
    # so it is never the first (suppressed tokens stay unsampled).
    return torch.searchsorted(cdf, u, right=True).squeeze(1)  # [N]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling: keep the fewest most likely tokens whose probability adds up to top_p (as HF's
    TopPLogitsWarper: ascending sort, drop the head whose cumulative probability is <= 1 - top_p)."""
    sorted_logits, order = torch.sort(logits, descending=False)  # [N, V]
    drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    drop[:, -1] = False  # always keep the most likely token
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


class VLLMRollout:
    """vLLM's offline engine in this process. On a GPU it sleeps (level 1: weights to host memory, KV cache
    dropped) once it has sampled, while the policy trains, and wakes for the weight sync or the next sampling;
    its share of the GPU comes from the memory plan (trainer/accelerator.py)."""

    def __init__(self, model_path: str, *, tokenizer, stop_ids: list[int], suppress_ids: list[int], dtype: torch.dtype,
                 max_model_len: int, max_num_seqs: int, seed: int, images_per_prompt: int | None,
                 world_size: int, cpu: bool, gpu_memory_utilization: float = 0.3,
                 kv_cache_bytes: int | None = None, enforce_eager: bool | None = None,
                 response_format: dict | None = None, planned: tuple[int, int] | None = None):
        """gpu_memory_utilization: vLLM's share of the GPU, or its cap when `planned` (training's and vLLM's
        weights' bytes per GPU: `accelerator.planned_bytes`) sets the share from the memory plan."""
        import vllm
        from vllm import LLM

        from trainer.accelerator import sleeps_between_phases, vllm_engine_kwargs, vllm_memory_share

        if not vllm.__version__.startswith(VLLM_PINNED):
            log.warning("vLLM %s: the rollout adapter was tested with %sx; weight sync may break",
                        vllm.__version__, VLLM_PINNED)
        self.tokenizer, self.stop_ids = tokenizer, list(stop_ids)
        self.logit_bias = {int(t): -100.0 for t in suppress_ids} or None  # vLLM's floor for a bias
        self.structured = structured_outputs(response_format)
        kwargs = dict(
            model=model_path,
            dtype={torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype],
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            seed=seed,
            distributed_executor_backend="uni" if world_size == 1 else "external_launcher",
            enable_prefix_caching=True,
            # JSON whitespace carries nothing, and a small model would spend its token budget on it (the
            # per-request flag of StructuredOutputsParams is not read by vLLM 0.32; this one needs the backend named)
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        if images_per_prompt is not None:
            kwargs["limit_mm_per_prompt"] = {"image": max(images_per_prompt, 1), "video": 0}
        device = "cpu" if cpu else "cuda"
        share = gpu_memory_utilization
        if not cpu and planned is not None:
            device_bytes = torch.cuda.mem_get_info()[1]
            share = vllm_memory_share(*planned, device_bytes, cap=gpu_memory_utilization)
            log.info("vLLM takes %.0f%% of the GPU; the memory plan leaves %.1f GiB of %.1f GiB to training",
                     100 * share, planned[0] / 2**30, device_bytes / 2**30)
        kwargs.update(vllm_engine_kwargs(device, gpu_share=share, kv_cache_bytes=kv_cache_bytes))
        if enforce_eager is not None:
            kwargs["enforce_eager"] = enforce_eager
        self.sleeps, self.asleep = sleeps_between_phases(device), False
        with _inspect_in_process(cpu):
            self.llm = LLM(**kwargs)

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompts: list[Prompt], n: int, max_tokens: int, temperature: float, top_p: float,
                 seeds: list[int]) -> list[list[Completion]]:
        from vllm import SamplingParams

        requests = [{"prompt": p.text, **({"multi_modal_data": {"image": p.images}} if p.images else {})}
                    for p in prompts]
        greedy = temperature == 0  # vLLM refuses n > 1 with greedy decoding: decode once, repeat
        params = [SamplingParams(n=1 if greedy else n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                 max_tokens=max_tokens, seed=s, stop_token_ids=self.stop_ids, detokenize=False,
                                 logit_bias=self.logit_bias, structured_outputs=self.structured)
                  for s in seeds]
        self._wake()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if self.sleeps:  # the training phase follows: weights to host memory, KV cache dropped (level 1)
            self.llm.sleep(level=1)
            self.asleep = True
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
        self._wake()  # the sync writes into the weights' device memory, which sleep released
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights)})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None


def constrains(response_format: dict | None) -> bool:
    """Whether a job's `response_format` constrains the samples (json_object, json_schema; not text)."""
    return bool(response_format) and response_format.get("type", "text") != "text"


def structured_outputs(response_format: dict | None):
    """OpenAI's `response_format` as vLLM's structured-output constraint (None: unconstrained).

    The samples are drawn from the model's distribution restricted to the grammar, while the trainer's
    log-probs are the unrestricted model's (as TRL and verl do with guided decoding): the policy learns
    to put its mass on valid outputs. JSON whitespace is turned off for the engine (`VLLMRollout`)."""
    if not constrains(response_format):
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if response_format["type"] == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=response_format["json_schema"]["schema"])


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
    per_token = family_of(config, text_ok=True).kv_bytes_per_token(config, dtype_bytes)
    return max(64 << 20, 2 * per_token * tokens)
