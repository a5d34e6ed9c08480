"""The policy's full weights under transformers' names, LoRA merged in: for the rollout engine, checkpoints
and the rank digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def export_weights(model, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's full weights under transformers' names, LoRA merged in (W + scale * B @ A).

    Yields (name, tensor) one parameter at a time; under ZeRO-3 each is gathered from all ranks first (all
    ranks must iterate together). The tensors are fresh copies, safe to keep.
    """
    base = base_model(model)
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


def write_rank_digest(output_dir: Path, engine, zero_stage: int, step: int) -> None:
    """With VRFT_RANK_DIGESTS=1: output_dir/rank-digests/rank-N.json, a SHA-256 of this rank's full weights.

    Every rank must hold the same weights after a step; a test (and a wary operator) compares the files.
    """
    if os.environ.get("VRFT_RANK_DIGESTS") != "1":
        return
    h = hashlib.sha256()
    for name, tensor in export_weights(engine.module, zero_stage):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    folder = output_dir / "rank-digests"
    folder.mkdir(exist_ok=True)
    rank = torch.distributed.get_rank()
    (folder / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "step": step, "sha256": h.hexdigest()}))
