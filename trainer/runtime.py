"""What SFT and GRPO share: processes, the model, DeepSpeed, checkpoints, signals, errors.

Kept out of the algorithm files so that `grpo.py` and `sft.py` read as the algorithm. Nothing here knows
about rewards or losses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from trainer.data import ChatData, read_jsonl

log = logging.getLogger("trainer")


# --------------------------------------------------------------------------------------------- errors

class TrainerError(Exception):
    """A failure a user can act on: becomes an `error` event with this code, then a non-zero exit."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Cancelled(BaseException):
    """Raised by the SIGTERM handler: stop now."""


# Exit codes (the runner reads them together with the last event).
EXIT_OK = 0          # finished (`final` event) or paused (`paused` event)
EXIT_ERROR = 1       # `error` event written
EXIT_CANCELLED = 143  # SIGTERM


# ------------------------------------------------------------------------------------------- processes

@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_environment() -> None:
    """Environment defaults for this process, before torch/vLLM/DeepSpeed are imported.

    Without a launcher (one rank) the torch.distributed variables are filled in; on a machine without
    CUDA DeepSpeed is told to use its CPU accelerator and vLLM its CPU platform.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's engine in this process (no engine-core subprocess): direct weight sync, faster start.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if "RANK" not in os.environ:  # started as plain `python -m trainer`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not _cuda_present():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        # Intra-op threads per rank: the cores split between the ranks on this machine.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(local_world, 1))))


def _cuda_present() -> bool:
    return os.path.exists("/dev/nvidia0") or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


def init_distributed() -> Dist:
    import deepspeed

    cpu = not torch.cuda.is_available()
    if cpu:
        # Compile nothing at run time on CPU: DeepSpeed's shared-memory allreduce is a JIT-built op.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cpu:
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return Dist(rank, world, local_rank, device)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(x, op=ops[op])
    return x


def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0 (rank order)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def seed_everything(*keys: int) -> None:
    """Seed python, numpy and torch from a tuple of ints (e.g. (seed, step)): same keys, same numbers."""
    import numpy as np

    s = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def derive_seed(*keys: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


# --------------------------------------------------------------------------------------------- signals

class Signals:
    """SIGUSR1 asks for a pause at the next step boundary; SIGTERM cancels at once (raises Cancelled)."""

    def __init__(self):
        self.pause_requested = False
        self.cancel_requested = False
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_usr1(self, signum, frame):
        self.pause_requested = True

    def _on_term(self, signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills outright
        # Kept for `should_pause`: code the exception lands in may swallow it (a torch.compile'd frame's
        # guard code does), and the next step boundary must still stop.
        self.cancel_requested = True
        raise Cancelled()

    def should_pause(self, device: torch.device) -> bool:
        """True on every rank when any rank was asked to pause (a collective: call it on all ranks).
        Raises Cancelled if a SIGTERM came and its exception was lost on the way."""
        if self.cancel_requested:
            raise Cancelled()
        flag = torch.tensor([1.0 if self.pause_requested else 0.0], device=device)
        return bool(all_reduce(flag, "max").item() > 0)


# ----------------------------------------------------------------------------------- hyperparameters

REASONING_EFFORT_TOKENS = {"low": 128, "medium": 256, "default": 256, "high": 1024}


def is_auto(v: Any) -> bool:
    return v is None or v == "auto"


def base_learning_rate(method: str, n_params: int, lora: bool) -> float:
    """The rate `learning_rate_multiplier` multiplies: by method and model size (full fine-tuning).

    RFT rates follow Visual-RFT / TRL (1e-6 for 2B-7B models); SFT rates are ten times larger. Tiny test
    models (< 50M parameters) learn nothing at those rates, so they get rates a random-init model needs.
    LoRA trains far fewer weights: ten times the full rate.
    """
    if n_params < 50e6:
        rate = 1e-3 if method == "supervised" else 1e-4
    elif n_params < 4e9:
        rate = 1e-5 if method == "supervised" else 1e-6
    else:
        rate = 5e-6 if method == "supervised" else 5e-7
    return rate * (10.0 if lora else 1.0)


def lr_at(step: int, total_steps: int, peak: float, schedule: str, warmup_steps: int) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warmup, then constant or linear decay.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if warmup_steps and step <= warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant":
        return peak
    if schedule == "linear":
        span = max(total_steps - warmup_steps, 1)
        return peak * max(0.0, 1.0 - (step - warmup_steps - 1) / span)
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps - 1) / span))
    raise TrainerError("invalid_hyperparameters", f"lr_scheduler must be constant, linear or cosine, not {schedule!r}")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the rows in `epoch`: a permutation fixed by (seed, epoch), so resuming needs no state."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


# -------------------------------------------------------------------------------------------- the model

@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Matched against module names of the language model (Qwen2-VL's vision blocks use other names)."""


def is_vision_model(model_path: str) -> bool:
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    return "vision_config" in cfg


def load_processor(model_path: str, vision: bool):
    from transformers import AutoProcessor, AutoTokenizer

    if vision:
        return AutoProcessor.from_pretrained(model_path)
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class JobData:
    """What both trainers read before anything else: the job's processor and its files, as ChatData."""

    vision: bool
    processor: Any
    """the model's processor (vision) or tokenizer (text)"""
    tokenizer: Any
    pad_id: int
    train: ChatData
    valid: ChatData | None


def load_job_data(job) -> JobData:
    """The processor of `job.model_path` and the job's training and (optional) validation files."""
    vision = is_vision_model(job.model_path)
    processor = load_processor(job.model_path, vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def read(path: str, what: str) -> ChatData:
        rows, lines = read_jsonl(path, what)
        return ChatData(rows, lines, processor, vision, what)

    valid = read(job.validation_file, "validation file") if job.validation_file else None
    return JobData(vision, processor, tokenizer, pad_id, read(job.train_file, "training file"), valid)


def load_model(model_path: str, vision: bool, dtype: torch.dtype, *, freeze_vision: bool = False,
               lora: LoraSpec | None = None, gradient_checkpointing: bool = False):
    """The trainable model (AutoModelForImageTextToText or AutoModelForCausalLM), optionally with LoRA."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = cls.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False
    if freeze_vision:
        for name, p in model.named_parameters():
            if _is_vision_param(name):
                p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        # Only the language model's projections: a regex that no vision-tower module name matches.
        names = "|".join(lora.target_modules)
        targets = rf"^(?!.*(?:visual|vision_tower|vision_model)).*\.(?:{names})$" if vision else lora.target_modules
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                         bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return model


def _is_vision_param(name: str) -> bool:
    return any(k in name for k in ("visual.", "vision_tower.", "vision_model.", "multi_modal_projector."))


def count_parameters(model) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def deepspeed_config(*, micro_batch: int, grad_accum: int, world: int, zero_stage: int, bf16: bool,
                     lr: float, weight_decay: float, max_grad_norm: float, offload_optimizer: bool = False,
                     offload_params: bool = False, cpu: bool = True) -> dict:
    """The DeepSpeed config, built from the hyperparameters (nothing read from a file).

    `torch_adam` uses torch's AdamW instead of DeepSpeed's fused/CPU Adam, which DeepSpeed would JIT-compile
    on first use (a minute on CPU); with optimizer offload on a GPU machine DeepSpeed's CPU Adam is faster.
    """
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer and zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
    if offload_params and zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False, stage3_param_persistence_threshold=1e4)
    torch_adam = cpu or not offload_optimizer
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": max_grad_norm,
        "bf16": {"enabled": bf16},
        # torch's AdamW fused into one kernel over all parameters (same update as its per-parameter loop):
        # 5x faster on the tiny model on CPU, where the loop's overhead is most of the optimizer step.
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                   "weight_decay": weight_decay, "torch_adam": torch_adam,
                                                   **({"fused": True} if torch_adam else {})}},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def default_zero_stage(world: int, hp: dict) -> int:
    """`zero_stage` hyperparameter, else $VRFT_ZERO_STAGE, else 0 for one rank and 2 for several."""
    v = hp.get("zero_stage")
    if is_auto(v):
        v = os.environ.get("VRFT_ZERO_STAGE")
    if is_auto(v):
        return 0 if world == 1 else 2
    v = int(v)
    if v not in (0, 1, 2, 3):
        raise TrainerError("invalid_hyperparameters", f"zero_stage must be 0, 1, 2 or 3, not {v}")
    return v


def make_engine(model, ds_config: dict):
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainerError("invalid_hyperparameters", "no trainable parameters (freeze_vision on a vision-only model?)")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine


@dataclass
class Policy:
    """The model being trained, under DeepSpeed, with what the training loop needs to know about it."""

    engine: Any
    """the DeepSpeed engine (`engine.module` is the HF model)"""
    dtype: torch.dtype
    n_params: int
    peak_lr: float
    micro: int
    """sequences per forward/backward pass"""
    ds_config: dict
    state: TrainState
    """step counters: fresh, or those of the checkpoint the job resumes from"""


def prepare_policy(job, cfg, method: str, seqs_per_rank: int, vision: bool, dist, events) -> Policy:
    """Load the job's model as `cfg` (a hparams.TrainingConfig) says, wrap it in DeepSpeed with its optimizer,
    and restore the weights, optimizer and counters of `job.resume_from` when resuming. `seqs_per_rank`: the
    sequences one rank trains on per optimizer step (split into micro-batches of `cfg.micro_batch_size`)."""
    cpu = dist.device.type == "cpu"
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and not cpu and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if bf16 else torch.float32
    seed_everything(job.seed)
    model = load_model(job.model_path, vision, dtype, freeze_vision=cfg.freeze_vision, lora=cfg.lora,
                       gradient_checkpointing=cfg.gradient_checkpointing)
    n_params = count_parameters(model)
    peak_lr = cfg.learning_rate or cfg.learning_rate_multiplier * base_learning_rate(method, n_params, cfg.lora is not None)
    micro = cfg.micro_batch_size or seqs_per_rank
    ds_config = deepspeed_config(micro_batch=micro, grad_accum=math.ceil(seqs_per_rank / micro), world=dist.world,
                                 zero_stage=cfg.zero_stage, bf16=bf16, lr=peak_lr, weight_decay=cfg.weight_decay,
                                 max_grad_norm=cfg.max_grad_norm, offload_optimizer=cfg.offload_optimizer,
                                 offload_params=cfg.offload_params, cpu=cpu)
    engine = make_engine(model, ds_config)
    state = TrainState(step=0, total_steps=cfg.total_steps, seed=job.seed)
    if job.resume_from:
        state = load_trainer_state(engine, Path(job.resume_from))
        events.message(f"Resumed from {job.resume_from} at step {state.step}/{state.total_steps}")
    return Policy(engine, dtype, n_params, peak_lr, micro, ds_config, state)


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def make_reference(model_path: str, vision: bool, dtype, device, zero_stage: int, ds_config: dict):
    """The frozen reference policy for the KL term (a separate copy; ZeRO-3 shards it too)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    ref = cls.from_pretrained(model_path, dtype=dtype).eval()
    ref.requires_grad_(False)
    if zero_stage == 3:
        import deepspeed

        cfg = {k: v for k, v in ds_config.items() if k not in ("optimizer",)}
        cfg["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 1e4}
        return deepspeed.initialize(model=ref, config=cfg)[0].module
    return ref.to(device)


# --------------------------------------------------------------------------------- weights for export

def _base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def export_weights(model, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's full weights under transformers' names, LoRA merged in (W + scale * B @ A).

    Yields (name, tensor) one parameter at a time; under ZeRO-3 each is gathered from all ranks first (all
    ranks must iterate together). The tensors are fresh copies, safe to keep.
    """
    import contextlib

    base = _base_model(model)
    lora_layers = {}
    if base is not model:  # peft
        from peft.tuners.lora import LoraLayer

        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                lora_layers[name] = module
    for name, tensor in list(base.state_dict(keep_vars=True).items()):
        if "lora_" in name:
            continue
        gather = contextlib.nullcontext()
        if zero_stage == 3 and hasattr(tensor, "ds_id"):
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)
        with gather:
            value = tensor.detach().clone()
            out_name = name.replace(".base_layer.", ".")
            module_name = out_name.rsplit(".", 1)[0]
            if out_name.endswith(".weight") and module_name in lora_layers:
                layer = lora_layers[module_name]
                ctx = contextlib.nullcontext()
                if zero_stage == 3:
                    import deepspeed

                    ctx = deepspeed.zero.GatheredParameters(list(layer.parameters()), modifier_rank=None)
                with ctx:
                    for adapter in layer.active_adapters:
                        if adapter in layer.lora_A:
                            value = value + layer.get_delta_weight(adapter).to(value.dtype)
        yield out_name, value


# --------------------------------------------------------------------------------------- checkpoints

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
SKIP_FILES = {"config.json", "vrft_tiny_model.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def copy_processor_files(model_path: str, out: Path) -> None:
    """Tokenizer, processor, chat template and generation config of the base model, copied as they are."""
    for p in Path(model_path).iterdir():
        if p.is_file() and p.name not in SKIP_FILES and not p.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(p, out / p.name)


def save_hf_folder(model, weights: dict[str, torch.Tensor], model_path: str, out: Path) -> None:
    """An HF model folder (safetensors + config + processor files) that transformers and vLLM load."""
    base = _base_model(model)
    out.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out, state_dict=weights, safe_serialization=True)
    copy_processor_files(model_path, out)
    config = json.loads((out / "config.json").read_text())
    config.pop("use_cache", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def atomic_dir(final: Path) -> Path:
    """A temporary folder beside `final`; `commit_dir` renames it into place."""
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def list_checkpoints(output_dir: Path) -> list[dict]:
    """The checkpoints on disk with their metadata (`checkpoint.json`), oldest first."""
    out = []
    root = output_dir / "checkpoints"
    if not root.exists():
        return out
    for d in root.iterdir():
        meta = d / "checkpoint.json"
        if d.is_dir() and d.name.startswith("step-") and meta.exists():
            out.append({**json.loads(meta.read_text()), "dir": d})
    return sorted(out, key=lambda c: c["step"])


def retention(checkpoints: list[dict], keep_best: int, metric: str | None) -> list[dict]:
    """The checkpoints to delete: all but the `keep_best` best by `metric` (higher is better) and the last.

    With no metric (SFT) the last `keep_best` are kept. A checkpoint without the metric ranks lowest.
    """
    if not checkpoints:
        return []
    last = checkpoints[-1]
    if metric is None:
        keep = checkpoints[-keep_best:]
    else:
        def score(c):
            v = (c.get("metrics") or {}).get(metric)
            return (-math.inf if v is None else v, c["step"])

        keep = sorted(checkpoints, key=score, reverse=True)[:keep_best]
    keep_steps = {c["step"] for c in keep} | {last["step"]}
    return [c for c in checkpoints if c["step"] not in keep_steps]


@dataclass
class TrainState:
    """What a resumed run needs beyond the weights and optimizer (DeepSpeed saves those)."""

    step: int
    total_steps: int
    seed: int
    trained_tokens: int = 0
    extra: dict = field(default_factory=dict)


def save_trainer_state(engine, state: TrainState, ckpt_dir: Path) -> None:
    """DeepSpeed's checkpoint (weights, optimizer, per rank) + our counters and RNG states -> trainer_state/."""
    import numpy as np

    client = {"train_state": state.__dict__, "rng": {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    engine.save_checkpoint(str(ckpt_dir / "trainer_state"), tag="ds", client_state=client,
                           save_latest=False, exclude_frozen_parameters=True)
    if torch.distributed.get_rank() == 0:
        (ckpt_dir / "trainer_state" / "state.json").write_text(json.dumps(state.__dict__, indent=2))


def load_trainer_state(engine, ckpt_dir: Path) -> TrainState:
    import numpy as np

    ts = Path(ckpt_dir) / "trainer_state"
    if not (ts / "ds").exists():
        raise TrainerError("invalid_resume", f"{ckpt_dir} has no trainer_state/ to resume from (only the latest "
                                             "checkpoint and paused checkpoints keep it)")
    _, client = engine.load_checkpoint(str(ts), tag="ds", load_module_strict=False,
                                       load_optimizer_states=True, load_lr_scheduler_states=False)
    rng = client["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**client["train_state"])


class Checkpointer:
    """Writes checkpoints/step-N (HF folder + trainer_state/), applies retention, emits the events."""

    def __init__(self, output_dir: Path, model_path: str, events, dist: Dist, zero_stage: int,
                 keep_best: int, metric: str | None):
        self.output_dir, self.model_path, self.events, self.dist = output_dir, model_path, events, dist
        self.zero_stage, self.keep_best, self.metric = zero_stage, keep_best, metric

    def save(self, engine, state: TrainState, metrics: dict, emit: bool = True) -> Path:
        final = self.output_dir / "checkpoints" / f"step-{state.step}"
        weights = dict(export_weights(engine.module, self.zero_stage))
        tmp = final.parent / f".{final.name}.tmp"
        if self.dist.main:
            if tmp.exists():
                shutil.rmtree(tmp)
            save_hf_folder(engine.module, weights, self.model_path, tmp)
        del weights
        _barrier()
        save_trainer_state(engine, state, tmp)  # every rank writes its optimizer shard
        _barrier()
        if self.dist.main:
            (tmp / "checkpoint.json").write_text(json.dumps({"step": state.step, "metrics": metrics}, indent=2))
            commit_dir(tmp, final)
            # Only the newest checkpoint keeps the (large) optimizer state needed to resume.
            for c in list_checkpoints(self.output_dir):
                if c["step"] != state.step and (c["dir"] / "trainer_state").exists():
                    shutil.rmtree(c["dir"] / "trainer_state", ignore_errors=True)
            rel = str(final.relative_to(self.output_dir))
            if emit:
                self.events.checkpoint(state.step, rel, metrics)
            for c in retention(list_checkpoints(self.output_dir), self.keep_best, self.metric):
                shutil.rmtree(c["dir"], ignore_errors=True)
                self.events.checkpoint_deleted(c["step"], str(c["dir"].relative_to(self.output_dir)))
        _barrier()
        return final

    def save_final(self, engine) -> Path:
        final = self.output_dir / "final"
        weights = dict(export_weights(engine.module, self.zero_stage))
        if self.dist.main:
            tmp = atomic_dir(final)
            save_hf_folder(engine.module, weights, self.model_path, tmp)
            commit_dir(tmp, final)
        _barrier()
        return final


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def write_pid(output_dir: Path) -> None:
    """output_dir/trainer.pid: the process that takes SIGUSR1 (rank 0; the launcher does not forward it)."""
    (output_dir / "trainer.pid").write_text(f"{os.getpid()}\n")


def memory_stats() -> dict:
    """Peak resident memory of this process (and peak GPU memory allocated by torch), in MB."""
    import resource

    out = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def write_rank_digest(output_dir: Path, engine, zero_stage: int, step: int) -> None:
    """With VRFT_RANK_DIGESTS=1: output_dir/rank-digests/rank-N.json, a SHA-256 of this rank's full weights.

    Every rank must hold the same weights after a step; a test (and a wary operator) compares the files.
    """
    if os.environ.get("VRFT_RANK_DIGESTS") != "1":
        return
    import hashlib

    h = hashlib.sha256()
    for name, tensor in export_weights(engine.module, zero_stage):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    folder = output_dir / "rank-digests"
    folder.mkdir(exist_ok=True)
    rank = torch.distributed.get_rank()
    (folder / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "step": step, "sha256": h.hexdigest()}))
