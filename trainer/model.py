"""The model and its processor: loading (frozen vision tower, LoRA), the job's files, the token ids rollouts need."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.data import ChatData, read_jsonl
from trainer.hparams import LoraSpec
from trainer.job_spec import TrainerError

VISION_MODULES = ("visual", "vision_tower", "vision_model", "multi_modal_projector")
"""The vision tower's module names in the families we load: Qwen2/2.5/3-VL `visual` (its patch mergers inside),
LLaVA-style `vision_tower` + `multi_modal_projector`, others `vision_model`."""


def is_vision_module(name: str) -> bool:
    """Whether a module or parameter name lies in the vision tower: one of its dotted parts is in VISION_MODULES."""
    return any(part in VISION_MODULES for part in name.split("."))


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
    """What both trainers read before anything else: the tokenizer and the job's files, as ChatData."""

    vision: bool
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
    return JobData(vision, tokenizer, pad_id, read(job.train_file, "training file"), valid)


def load_model(model_path: str, vision: bool, dtype: torch.dtype, *, freeze_vision: bool = False,
               lora: LoraSpec | None = None, gradient_checkpointing: bool = False):
    """The trainable model (AutoModelForImageTextToText or AutoModelForCausalLM), optionally with LoRA."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = cls.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False
    if freeze_vision:
        for name, p in model.named_parameters():
            if is_vision_module(name):
                p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        # The full names of the matching modules outside the vision tower (peft's own rule: name or .name).
        targets = [n for n, _ in model.named_modules() if not is_vision_module(n)
                   and any(n == t or n.endswith("." + t) for t in lora.target_modules)]
        if not targets:
            raise TrainerError("invalid_hyperparameters",
                               f"lora.target_modules {lora.target_modules} match no module of the language model")
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                         bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return model


def count_parameters(model) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def stop_token_ids(model_path: str, tokenizer) -> list[int]:
    """End-of-turn tokens: the generation config's eos ids, else the tokenizer's eos."""
    from transformers import GenerationConfig

    ids: list[int] = []
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    except OSError:
        pass
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def placeholder_token_ids(config) -> list[int]:
    """Image/video/vision placeholder token ids of a multimodal config (none for a text-only model)."""
    ids = set()
    for cfg in (config, getattr(config, "text_config", None)):
        for key, value in (vars(cfg).items() if cfg is not None else ()):
            if key.endswith("_token_id") and isinstance(value, int) and any(
                    w in key for w in ("image", "video", "vision", "audio")):
                ids.add(value)
    return sorted(ids)
