"""The memory plan: peak memory per device of a fine-tuning job, estimated before launch from the model's
config.json (no weights, no torch), and a plan that accepts the job, picks settings that fit, or refuses
with what would fit. Torch-free: the API imports it at job creation (`check_job`).

The estimate, per device (per rank), in bytes, top to bottom:

    weights     + gradients + optimizer (+ its fp32 master copy)        the ZeRO paper's 2 + 2 + 12 bytes/param
    + reference (beta > 0: a frozen copy of the weights)
    + rollout   (vLLM colocated: its share of the GPU; on CPU its weight copy + its KV cache)
    + max(activations of one micro-batch's forward/backward,  transient KV cache of the transformers
          rollout engine,  the weight export that syncs vLLM)                   (these never live together)
    + overhead  (CUDA context, NCCL and cuBLAS workspaces: a constant per GPU; on CPU the process's bookkeeping)

Parameters are counted analytically from the config (embeddings, attention with its KV heads, MLP, norms,
the vision tower's blocks, patch embedding and merger, the LM head unless tied); tests/trainer/test_memory.py
checks the count against the real model's numel for every family we build. Activations use a per-token,
per-layer count of the tensors autograd saves in a Qwen2-style decoder layer under SDPA (no attention matrix
is stored: flash / memory-efficient kernels keep one logsumexp per head and token), plus the LM head's logits,
which dominate at a 150k vocabulary: see `activation_bytes`. bench/memory_plan.py compares the estimate with
measured peaks on the CPU (trainer/README.md, "Memory plan").

KV-cache bytes per token come from the family adapter (trainer/families.py) where it knows the family.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trainer.families import LM_PROJECTIONS

GIB = 1 << 30

DEFAULT_LORA_TARGETS = LM_PROJECTIONS

# ------------------------------------------------------------------------------------- calibration

ACTIVATION_SCALE = 1.0
"""Multiplies the analytic activation count (`activation_bytes`). Left at 1.0: on the CPU (fp32), going from 2 to 8
SFT examples per pass on the real-width Qwen2.5-VL-3B layer grew the measured peak by 1.68 GiB where the count
says 1.58 (bench/memory_plan.py; trainer/README.md, "Memory plan"). Not checked under bf16 on a GPU."""

GPU_OVERHEAD_BYTES = int(1.0 * GIB)
"""Per GPU, outside any tensor: the CUDA context (~0.5 GiB), cuBLAS/NCCL workspaces and allocator
fragmentation. Not measured here (no GPU); the usual figure for an H100 with torch 2.x."""

CPU_OVERHEAD_BYTES = 80 << 20
"""On the CPU, what a trainer process holds beyond its imports and the terms below: tokenizer and processor,
the dataset's decoded images, DeepSpeed's bookkeeping. Measured: the tiny model's runs in bench/memory_plan.py
peak 85-110 MiB above the import baseline, with ~20 MiB of modelled terms."""

ZERO_BUCKET_ELEMENTS = int(5e8)
"""DeepSpeed's default reduce_bucket_size (elements), which engine.py keeps: ZeRO-2/3 allocate a gradient
bucket of min(this, trainable parameters) elements."""

ZERO3_LIVE_LAYERS = 2
"""ZeRO-3 holds the whole weights of the layer being run and of the one being prefetched."""


# ------------------------------------------------------------------------------------- parameter count

def _text(config: dict) -> dict:
    """The language model's config: `text_config` (transformers 5, Qwen3-VL) or the top level (hub Qwen2-VL)."""
    return config.get("text_config") or config


def _get(d: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def _tied(config: dict) -> bool:
    top = config.get("tie_word_embeddings")
    return bool(top if top is not None else _text(config).get("tie_word_embeddings", False))


@dataclass(frozen=True)
class TextShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qkv_bias: bool
    qk_norm: bool


def text_shape(config: dict) -> TextShape:
    t = _text(config)
    heads = t["num_attention_heads"]
    mt = t.get("model_type") or config.get("model_type", "")
    return TextShape(
        hidden=t["hidden_size"], intermediate=t["intermediate_size"], layers=t["num_hidden_layers"], heads=heads,
        kv_heads=_get(t, "num_key_value_heads", default=heads),
        head_dim=_get(t, "head_dim", default=t["hidden_size"] // heads), vocab=t["vocab_size"],
        # Qwen2 / Qwen2.5 put biases on q, k, v; Qwen3 has none but RMS-normalises q and k per head
        qkv_bias=bool(_get(t, "attention_bias", default=mt.startswith("qwen2"))),
        qk_norm=mt.startswith("qwen3"))


@dataclass(frozen=True)
class ParamCount:
    """Parameters by part; `total` is what `sum(p.numel() for p in model.parameters())` gives."""

    embed: int
    text_layers: int
    per_layer: int
    final_norm: int
    lm_head: int
    vision: int
    """the vision tower, its patch embedding and merger/projector included"""

    @property
    def language(self) -> int:
        return self.embed + self.text_layers + self.final_norm + self.lm_head

    @property
    def total(self) -> int:
        return self.language + self.vision

    @property
    def largest_layer(self) -> int:
        """The biggest single module ZeRO-3 gathers at once (a decoder layer, the embedding or the head)."""
        return max(self.per_layer, self.embed, self.lm_head)


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def count_parameters(config: dict) -> ParamCount:
    """Parameters of a vision-language (or text-only) model, from its config.json dict."""
    s = text_shape(config)
    h, q, kv = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    attn = (_linear(h, q, s.qkv_bias) + 2 * _linear(h, kv, s.qkv_bias)  # q, k, v: kv heads only for k and v
            + _linear(q, h, False)  # o_proj
            + (2 * s.head_dim if s.qk_norm else 0))  # Qwen3: q_norm, k_norm over head_dim
    mlp = 3 * h * s.intermediate  # SwiGLU: gate, up, down, no biases
    norms = 2 * h  # input and post-attention RMSNorm
    per_layer = attn + mlp + norms
    embed = s.vocab * h
    return ParamCount(embed=embed, text_layers=s.layers * per_layer, per_layer=per_layer, final_norm=h,
                      lm_head=0 if _tied(config) else s.vocab * h, vision=vision_parameters(config))


def vision_parameters(config: dict) -> int:
    """The vision tower and projector: the family adapter's count (trainer/families.py; an unknown family's
    tower counted as a ViT with a 2-layer projector)."""
    from trainer.families import GENERIC, UnsupportedModel, family_of

    if not config.get("vision_config"):
        return 0
    try:
        family = family_of(config)
    except UnsupportedModel:
        family = GENERIC
    return family.vision_parameters(config)


def lora_parameters(config: dict, r: int, targets: list[str] | tuple[str, ...]) -> int:
    """Adapter weights: r x (in + out) per adapted linear of the language model (A: in -> r, B: r -> out)."""
    s = text_shape(config)
    h, q, kv, i = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.intermediate
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    per_layer = sum(r * (a + b) for name, (a, b) in dims.items() if name in targets)
    head = r * (h + s.vocab) if "lm_head" in targets else 0
    return s.layers * per_layer + head


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """K and V of every layer for one token: the family adapter's figure (trainer/families.py), else (a family
    it refuses) 2 x layers x KV heads x head_dim x dtype bytes."""
    from trainer.families import UnsupportedModel, family_of

    try:
        return family_of(config, text_ok=True).kv_bytes_per_token(config, dtype_bytes)
    except UnsupportedModel:
        s = text_shape(config)
        return 2 * s.layers * s.kv_heads * s.head_dim * dtype_bytes


def image_tokens(config: dict, height: int, width: int) -> int:
    """Language-model tokens of one image of height x width pixels, as the model's family counts them."""
    from trainer.families import UnsupportedModel, family_of, image_tokens_by_config

    try:
        return family_of(config).image_tokens(config, height, width)
    except UnsupportedModel:
        return image_tokens_by_config(config, height, width)


# ------------------------------------------------------------------------------------- the estimate

@dataclass(frozen=True)
class Job:
    """What the estimate needs of a job, resolved (no "auto" left)."""

    method: str = "reinforcement"
    lora_r: int | None = None
    """None: full fine-tuning"""
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    freeze_vision: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    dtype_bytes: int = 2
    """2: bfloat16 weights under mixed precision; 4: float32"""
    micro_batch: int = 8
    """sequences per forward/backward pass (RFT: completions)"""
    num_generations: int = 8
    prompt_tokens: int = 256
    """text tokens of a prompt (SFT: of the whole example), image tokens not included"""
    completion_tokens: int = 256
    images: int = 1
    image_tokens: int = 256
    """language-model tokens per image"""
    gradient_checkpointing: bool = False
    beta: float = 0.04
    rollout_engine: str = "vllm"
    rollout_seqs: int = 8
    """sequences the rollout engine decodes at once (transformers engine: 8 prompts x G at most)"""
    vllm_kv_tokens: int = 0
    """CPU: tokens of vLLM's KV cache (kv_cache_memory_bytes); GPU: unused (vLLM takes its share)"""
    vllm_share: float = 0.3
    """GPU: the fraction of the device's memory vLLM takes (vllm_gpu_memory_utilization)"""
    ranks: int = 1
    device: str = "gpu"
    """gpu, or cpu (where the device is the host: offloaded state counts, and there is no CUDA context)"""
    device_bytes: int = 80 * GIB


@dataclass
class Estimate:
    """Peak bytes per device, by term; `offloaded` lives in host memory (per rank) unless device == cpu."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    kv_cache: int
    reference: int
    rollout: int
    """vLLM's weight copy (CPU) or its whole share (GPU), KV cache included there"""
    overhead: int
    offloaded: int
    total: int
    parameters: int
    trainable: int
    detail: dict = field(default_factory=dict)

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 2) for k, v in asdict(self).items() if isinstance(v, int)
                and k not in ("parameters", "trainable")}


def activation_bytes(config: dict, job: Job) -> dict[str, int]:
    """Bytes autograd keeps for one micro-batch's backward (and the LM head's logits), by part.

    Model: a per-token, per-layer count of saved tensors, not Korthikanti et al.'s 34*h + 5*a*s (that is for
    a 4h GELU MLP with the attention matrix stored). For a Qwen2-style decoder layer under SDPA, in elements
    of the compute dtype, per token:
      norms       2 RMSNorms x (input + normalised output; under bf16 also the fp32 upcast)    4h (6h bf16)
      attention   q, k before and after rotary (2 (q + kv)), v (kv), SDPA output and o_proj input (2 q)
      MLP         SwiGLU: gate and up outputs, silu(gate), their product (down_proj's input)   4 I
    The attention matrix is not stored (flash / memory-efficient SDPA). LoRA adds r per adapter, nothing next to
    these. With gradient checkpointing a layer keeps its input (h) and one layer is recomputed at a time.
    The vision tower, when it trains, keeps per patch and block ~12 d + 4 I_v (same count, LayerNorms).
    The head: the logits of the trained tokens in the dtype, then fp32 copies: .float(), the temperature
    division (RFT), log_softmax's output and its gradient."""
    s = text_shape(config)
    b = job.dtype_bytes
    h, q, kv, i = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.intermediate
    per_token_layer = ((6 if b == 2 else 4) * h + 2 * (q + kv) + kv + 2 * q + 4 * i) * b
    prompt = job.prompt_tokens + job.images * job.image_tokens
    if job.method == "reinforcement":
        # A micro-batch of completions and the distinct prompts they answer (grpo.make_microbatches): each
        # prompt runs once and its cache feeds its G completions; gradient checkpointing runs full sequences.
        prompts_per_mb = min(job.micro_batch, math.ceil(job.micro_batch / job.num_generations) +
                             (1 if job.micro_batch % job.num_generations else 0))
        tokens = (job.micro_batch * (prompt + job.completion_tokens) if job.gradient_checkpointing
                  else prompts_per_mb * prompt + job.micro_batch * job.completion_tokens)
        head_tokens = job.micro_batch * job.completion_tokens  # logits only for completion tokens
        fp32_copies = 4 if b == 2 else 3  # .float() (a no-op in fp32), / temperature, log_softmax, its grad
        images = prompts_per_mb * job.images
    else:
        tokens = head_tokens = job.micro_batch * (prompt + job.completion_tokens)  # whole examples
        fp32_copies = 3 if b == 2 else 2  # .float(), cross_entropy's log_softmax, its grad
        images = job.micro_batch * job.images
    if job.gradient_checkpointing:
        layers = s.layers * tokens * h * b + tokens * per_token_layer  # inputs kept + one layer recomputed
    else:
        layers = s.layers * tokens * per_token_layer
    head = head_tokens * s.vocab * (b + 4 * fp32_copies)
    vision = 0
    v = config.get("vision_config")
    if v and job.lora_r is None and not job.freeze_vision and images:
        # A frozen tower (freeze_vision, LoRA) keeps nothing: its inputs need no gradient.
        d = _get(v, "embed_dim", "hidden_size", default=1280)  # the tower's width (Qwen2-VL names it embed_dim)
        iv = _get(v, "intermediate_size", default=int(d * v.get("mlp_ratio", 4)))
        patches = images * job.image_tokens * v.get("spatial_merge_size", 1) ** 2  # patches per LM token
        depth = _get(v, "depth", "num_hidden_layers", default=24)
        vision = (depth if not job.gradient_checkpointing else 1) * patches * (12 * d + 4 * iv) * b
    scaled = {k: int(ACTIVATION_SCALE * x) for k, x in {"layers": layers, "head": head, "vision": vision}.items()}
    return {**scaled, "tokens": tokens}


def estimate(config: dict, job: Job) -> Estimate:
    """Peak memory per device of `job` on the model of `config` (a config.json dict)."""
    n = count_parameters(config)
    b, N, stage = job.dtype_bytes, job.ranks, job.zero_stage
    lora = job.lora_r is not None
    # Trainable: LoRA's adapters, or every weight (the vision tower's unless frozen).
    trainable = (lora_parameters(config, job.lora_r, job.lora_targets) if lora
                 else n.total - (n.vision if job.freeze_vision else 0))
    # LoRA adapters are kept in fp32 by peft (autocast_adapter_dtype) and are trained like full weights.
    extra = trainable * 4 if lora else 0
    offloaded = 0

    # Weights in the compute dtype (2 bytes bf16, 4 fp32). ZeRO-3 shards them over the ranks and gathers the
    # running layer and the prefetched one whole; offload_params moves the shards to host memory.
    weights = n.total * b + extra
    if stage == 3:
        live = ZERO3_LIVE_LAYERS * n.largest_layer * b
        shard = math.ceil(weights / N)
        if job.offload_params:
            weights, offloaded = live, offloaded + shard
        else:
            weights = shard + live

    # Gradients in the compute dtype, one per trainable weight; ZeRO-2/3 keep only this rank's partition,
    # plus the reduce bucket (DeepSpeed's reduce_bucket_size, elements of the compute dtype).
    gradients = trainable * b
    if stage >= 2:
        gradients = math.ceil(gradients / N) + min(ZERO_BUCKET_ELEMENTS, trainable) * b

    # Adam: 2 fp32 moments (8 bytes); a fp32 master copy of the weights (4 bytes) under bf16 mixed precision,
    # and under ZeRO >= 1 even in fp32 (DeepSpeed's flat fp32 partition); under bf16 DeepSpeed also keeps fp32
    # gradients for the step (4 bytes). ZeRO >= 1 shards all of it; offload_optimizer moves it to host memory.
    per_param = 8 + (4 if (b == 2 or stage >= 1) else 0) + (4 if b == 2 else 0)
    optimizer = trainable * per_param
    if stage >= 1:
        optimizer = math.ceil(optimizer / N)
    if job.offload_optimizer and stage >= 1:
        offloaded, optimizer = offloaded + optimizer, 0

    # The frozen reference (RFT: for the KL term, beta > 0; DPO: without LoRA): the weights again, sharded (not
    # offloaded) under ZeRO-3.
    reference = 0
    if job.method in ("reinforcement", "dpo") and job.beta > 0:
        reference = n.total * b
        if stage == 3:
            reference = math.ceil(reference / N) + ZERO3_LIVE_LAYERS * n.largest_layer * b

    acts = activation_bytes(config, job)
    activations = acts["layers"] + acts["head"] + acts["vision"]

    # Rollouts (RFT). vLLM in the same process: on a GPU its share (vllm_gpu_memory_utilization of the device:
    # its weights, KV cache and activations); on CPU its own weight copy and exactly the KV cache it was given.
    # The transformers engine decodes with the policy itself: a transient KV cache for rollout_seqs sequences,
    # freed before the training pass. Syncing vLLM builds a full copy of the weights (export_weights, LoRA
    # merged), also between the passes.
    rollout = kv_cache = transient = 0
    if job.method == "reinforcement":
        seq = job.prompt_tokens + job.images * job.image_tokens + job.completion_tokens
        if job.rollout_engine == "vllm":
            if job.device == "gpu":
                rollout = int(job.vllm_share * job.device_bytes)
            else:
                kv_cache = job.vllm_kv_tokens * kv_bytes_per_token(config, b)
                rollout = n.total * b
            transient = n.total * b
        else:
            transient = job.rollout_seqs * seq * kv_bytes_per_token(config, b)
            if stage == 3:  # generation gathers the whole weights (trainer/rollout.py)
                transient += n.total * b
    peak_pass = max(activations, transient)

    # Outside the tensors: the CUDA context and workspaces per GPU; on the CPU the process's own bookkeeping.
    overhead = GPU_OVERHEAD_BYTES if job.device == "gpu" else CPU_OVERHEAD_BYTES
    total = weights + gradients + optimizer + reference + rollout + kv_cache + peak_pass + overhead
    if job.device == "cpu":  # the host is the device: what is "offloaded" is still in the process
        total += offloaded
    return Estimate(weights=weights, gradients=gradients, optimizer=optimizer, activations=activations,
                    kv_cache=kv_cache, reference=reference, rollout=rollout, overhead=overhead, offloaded=offloaded,
                    total=total, parameters=n.total, trainable=trainable,
                    detail={"activations": acts, "rollout_transient": transient, "params": asdict(n)})


# ------------------------------------------------------------------------------------- the plan

def default_device() -> str:
    """"gpu" where nvidia-smi is found, else "cpu" (what the trainer will run on, if it runs on this host)."""
    import shutil

    return "gpu" if shutil.which("nvidia-smi") else "cpu"


def default_device_gib() -> float:
    """$VRFT_DEVICE_MEMORY_GIB, else the first GPU's memory (nvidia-smi), else the host's RAM."""
    env = os.environ.get("VRFT_DEVICE_MEMORY_GIB")
    if env:
        return float(env)
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout.split()
            if out:
                return float(out[0]) / 1024  # MiB
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


@dataclass
class Plan:
    fits: bool
    message: str
    changes: dict
    """knob -> value the plan chose (only knobs the job left "auto" or unset)"""
    estimate: Estimate
    job: Job


AUTO_KNOBS = ("gradient_checkpointing", "zero_stage", "offload_optimizer", "offload_params")
"""What the plan may turn on, in this order, where the job left it "auto" or unset."""


def _with(job: Job, knob: str) -> Job:
    if knob == "zero_stage":
        return replace(job, zero_stage=3)
    if knob == "offload_optimizer":
        return replace(job, offload_optimizer=True, zero_stage=max(job.zero_stage, 1))
    if knob == "offload_params":  # only under ZeRO-3
        return replace(job, offload_params=True, zero_stage=3)
    return replace(job, **{knob: True})


def needed_gib(est: Estimate, job: Job) -> float:
    """The device size the job needs, in GiB: the total, except that vLLM's share on a GPU is a fraction of
    the device (vllm_gpu_memory_utilization), so the rest must fit in the other (1 - share)."""
    if est.rollout and job.device == "gpu" and job.rollout_engine == "vllm":
        return (est.total - est.rollout) / (1 - job.vllm_share) / GIB
    return est.total / GIB


def plan(config: dict, job: Job, device_gib: float, free: tuple[str, ...] = AUTO_KNOBS) -> Plan:
    """Accept `job` if its estimate fits `device_gib`; else turn on, one after another and cumulatively,
    gradient checkpointing, ZeRO-3, optimizer offload (ZeRO-1 at least), parameter offload (ZeRO-3) -- those
    named in `free`, each kept only if it lowers the estimate -- until it fits; else refuse, naming the
    estimates of LoRA and of ZeRO-3 with offload (with gradient checkpointing and micro_batch_size 1 added
    where they alone do not fit)."""
    cap = int(device_gib * GIB)
    job = replace(job, device_bytes=cap)
    est = estimate(config, job)
    unit = "GPU" if job.device == "gpu" else "process"
    if est.total <= cap:
        return Plan(True, f"needs about {needed_gib(est, job):.1f} GiB per {unit}, {device_gib:.1f} GiB available",
                    {}, est, job)
    trial, changes, current = job, {}, est.total
    for knob in AUTO_KNOBS:
        # offload_params brings ZeRO-3 with it: it needs zero_stage free too (or already 3)
        if knob not in free or (knob == "offload_params" and trial.zero_stage != 3 and "zero_stage" not in free):
            continue
        nxt = _with(trial, knob)
        e = estimate(config, nxt)
        if nxt == trial or e.total >= current:  # kept only if it lowers the estimate (ZeRO-3 on one rank does not)
            continue
        for k in AUTO_KNOBS:
            if getattr(nxt, k) != getattr(trial, k):
                changes[k] = getattr(nxt, k)
        trial, current = nxt, e.total
        if e.total <= cap:
            said = ", ".join(f"{k}={v}" for k, v in changes.items())
            return Plan(True, f"needs about {needed_gib(est, job):.1f} GiB per {unit} as given, {device_gib:.1f} GiB "
                              f"available; chose {said} (about {needed_gib(e, trial):.1f} GiB)", changes, e, trial)
    # Refuse, with what would fit (or come closest): LoRA, ZeRO-3 with offload; each, if it alone does not
    # fit, with gradient checkpointing and then micro_batch_size 1 added.
    options = []
    if job.lora_r is None:
        options.append(("LoRA", replace(job, lora_r=16, freeze_vision=True)))
    options.append(("ZeRO-3 with optimizer offload", replace(job, zero_stage=3, offload_optimizer=True)))
    options.append(("ZeRO-3 with optimizer and parameter offload",
                    replace(job, zero_stage=3, offload_optimizer=True, offload_params=True)))
    if job.lora_r is None:
        options.append(("LoRA with ZeRO-3 and optimizer offload",
                        replace(job, lora_r=16, freeze_vision=True, zero_stage=3, offload_optimizer=True)))
    sized = []
    for name, j in options:
        for more, change in (("", {}), (" and gradient checkpointing", {"gradient_checkpointing": True}),
                             (" and gradient checkpointing and micro_batch_size 1",
                              {"gradient_checkpointing": True, "micro_batch": 1})):
            if all(getattr(j, k) == v for k, v in change.items()) and more:
                continue
            e = estimate(config, replace(j, **change))
            if e.total <= cap:
                break
        sized.append((name + more, e.total, needed_gib(e, replace(j, **change))))
    fitting = [x for x in sized if x[1] <= cap]
    shown = fitting[:2] if fitting else sorted(sized, key=lambda x: x[1])[:1]
    hint = " or ".join(f"{n_} (about {g:.1f} GiB)" for n_, _, g in shown)
    more = "" if fitting else "; nothing tried fits: use more or larger GPUs, or shorter sequences"
    msg = (f"needs about {needed_gib(est, job):.1f} GiB per {unit}, {device_gib:.1f} GiB available; "
           f"use {hint}{more}")
    return Plan(False, msg, {}, est, job)


def job_from_hyperparameters(config: dict, method: str, hp: dict, ranks: int = 1, *, rows: int | None = None,
                             device: str = "gpu", prompt_tokens: int = 256, images: int | None = None,
                             image_size: tuple[int, int] = (448, 448), rollout_engine: str = "vllm") -> Job:
    """A `Job` from the job's hyperparameters as given (resolved as the trainer resolves them: trainer/hparams.py).
    `rows`: the training file's rows (for batch_size "auto"; unknown: 4096, so RFT's 8 and SFT's 8).
    `prompt_tokens`: text tokens of a prompt (SFT: of the whole example: then completion_tokens is 0)."""
    from trainer.hparams import CONFIGS

    cfg = CONFIGS[method].resolve(dict(hp), rows or 4096, ranks)
    dtype_bytes = 4 if cfg.dtype == "float32" or (cfg.dtype == "auto" and device == "cpu") else 2
    vision = bool(config.get("vision_config"))
    n_images = (1 if vision else 0) if images is None else images
    # sequences per rank: RFT G completions per prompt, DPO two answers per pair (a frozen copy as the reference
    # unless LoRA, whose reference is the base weights under the adapters)
    per_rank = cfg.batch_size // ranks * (cfg.num_generations if method == "reinforcement" else
                                          2 if method == "dpo" else 1)
    micro = cfg.micro_batch_size or per_rank
    rl = method == "reinforcement"
    completion = cfg.max_completion_length if rl else 0
    if not rl:
        prompt_tokens = min(prompt_tokens, cfg.max_length)
    seq = prompt_tokens + n_images * image_tokens(config, *image_size) + completion + 256
    seqs_at_once = max(per_rank, min(cfg.max_eval_prompts, 64) * cfg.eval_samples) if rl else 0
    return Job(
        method=method, lora_r=cfg.lora.r if cfg.lora else None,
        lora_targets=tuple(cfg.lora.target_modules) if cfg.lora else DEFAULT_LORA_TARGETS,
        freeze_vision=cfg.freeze_vision, zero_stage=cfg.zero_stage, offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params, dtype_bytes=dtype_bytes, micro_batch=micro,
        num_generations=cfg.num_generations if rl else 1, prompt_tokens=prompt_tokens, completion_tokens=completion,
        images=n_images, image_tokens=image_tokens(config, *image_size) if vision else 0,
        gradient_checkpointing=cfg.gradient_checkpointing,
        beta=cfg.beta if rl or (method == "dpo" and cfg.lora is None) else 0.0,
        rollout_engine=rollout_engine,
        rollout_seqs=min(8, cfg.batch_size // ranks) * (cfg.num_generations if rl else 1),
        # trainer/rollout.py kv_cache_bytes: x2 slack, at least 64 MiB (in tokens here)
        vllm_kv_tokens=max((64 << 20) // max(kv_bytes_per_token(config, dtype_bytes), 1),
                           2 * min(256, seqs_at_once) * seq) if rl else 0,
        vllm_share=cfg.vllm_gpu_memory_utilization if rl else 0.0, ranks=ranks, device=device)


def check_job(config: dict, method: str, hyperparameters: dict, device_gib: float | None = None, ranks: int = 1,
              **shape: Any) -> Plan:
    """The API's call at job creation: the plan for this job on `ranks` devices of `device_gib` GiB each
    (None: `default_device_gib()`). Knobs the job left "auto" or unset may be chosen (`Plan.changes`, to merge
    into the job's hyperparameters); `Plan.fits` False means refuse, with `Plan.message`. `shape`: the keyword
    arguments of `job_from_hyperparameters` (rows, device, prompt_tokens, images, image_size, rollout_engine)."""
    from trainer.hparams import is_auto

    shape.setdefault("device", default_device())
    job = job_from_hyperparameters(config, method, hyperparameters, ranks, **shape)
    free = tuple(k for k in AUTO_KNOBS if is_auto(hyperparameters.get(k)))
    if "zero_stage" in free and os.environ.get("VRFT_ZERO_STAGE") not in (None, "", "auto"):
        free = tuple(k for k in free if k != "zero_stage")  # the operator pinned it
    return plan(config, job, default_device_gib() if device_gib is None else device_gib, free)
