"""The model and its processor: loading (frozen vision tower, LoRA), the job's files, the token ids rollouts need."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.accelerator import attn_implementation, flash_attn_available
from trainer.data import ChatData, read_jsonl
from trainer.families import Family, UnsupportedModel, family_of
from trainer.hparams import LoraSpec
from trainer.job_spec import TrainerError


def model_config(model_path: str) -> dict:
    return json.loads((Path(model_path) / "config.json").read_text())


def model_family(model_path: str) -> Family:
    """The family of the model folder (trainer/families.py); a plain causal LM is CAUSAL_LM."""
    try:
        return family_of(model_config(model_path), text_ok=True)
    except UnsupportedModel as e:
        raise TrainerError("invalid_model", str(e)) from None


def is_vision_model(model_path: str) -> bool:
    return "vision_config" in model_config(model_path)


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
    family = model_family(model_path)
    # The kernel by device and dtype (trainer/accelerator.py); None keeps transformers' default.
    attn = attn_implementation("cuda" if torch.cuda.is_available() else "cpu", dtype, flash_attn_available())
    model = cls.from_pretrained(model_path, dtype=dtype, **({"attn_implementation": attn} if attn else {}))
    model.config.use_cache = False
    if vision and not any(family.is_vision_module(n) for n, _ in model.named_modules()):
        raise TrainerError("invalid_model", f"no module of {type(model).__name__} is named like a vision tower "
                           f"({', '.join(family.vision_modules)}): add its family to trainer/families.py")
    if freeze_vision:
        for name, p in model.named_parameters():
            if family.is_vision_module(name):
                p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        # The full names of the matching modules outside the vision tower (peft's own rule: name or .name).
        wanted = list(lora.target_modules) or list(family.lora_targets)
        targets = [n for n, _ in model.named_modules() if not family.is_vision_module(n)
                   and any(n == t or n.endswith("." + t) for t in wanted)]
        if not targets:
            raise TrainerError("invalid_hyperparameters",
                               f"lora.target_modules {wanted} match no module of the language model")
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
    """Image/video placeholder token ids of a model config, by its family (none for a text-only model)."""
    return family_of(config, text_ok=True).placeholder_ids(config)
