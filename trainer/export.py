"""The policy's full weights, LoRA merged in: for the rollout engine, checkpoints and the rank digests.

Two naming schemes. transformers 5 renames some checkpoints' parameters when it loads them (its "weight
conversions": llava-hf's `vision_tower.vision_model.*` becomes `model.vision_tower.*`, Qwen2-VL's `visual.*`
becomes `model.visual.*`): `names="transformers"` gives the loaded model's own names (what `save_pretrained`
takes, and reverts itself), `names="checkpoint"` the names of the checkpoint on disk, which is what vLLM's
`load_weights` reads (its weight mappers are written for the hub's files). The mapping is transformers' own
`revert_weight_conversion`, the function `save_pretrained` uses, so no family is named here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Literal

import torch


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def checkpoint_name_map(model, names: list[str]) -> dict[str, str] | None:
    """transformers' parameter names -> the checkpoint's (hub) names, one to one, for a model loaded with
    `from_pretrained` (its weight conversions reverted, as `save_pretrained` does). None when the conversions
    are not plain renamings (a converter that fuses or splits tensors): then the whole state dict must be
    reverted at once (`export_weights` does that)."""
    from transformers.core_model_loading import revert_weight_conversion

    probes = {n: torch.empty(0) for n in names}  # distinct objects: a renaming passes each one through
    owner = {id(t): n for n, t in probes.items()}
    try:
        reverted = revert_weight_conversion(base_model(model), dict(probes))
    except Exception:  # a converter that needs real tensors
        return None
    mapping = {}
    for new, tensor in reverted.items():
        old = owner.get(id(tensor))
        if old is None or old in mapping:
            return None
        mapping[old] = new
    return mapping if len(mapping) == len(names) else None


def export_weights(model, zero_stage: int, names: Literal["transformers", "checkpoint"] = "transformers"
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's full weights, LoRA merged in (W + scale * B @ A), under transformers' names or (names=
    "checkpoint", for vLLM) the checkpoint's.

    Yields (name, tensor) one parameter at a time; under ZeRO-3 each is gathered from all ranks first (all
    ranks must iterate together). The tensors are fresh copies, safe to keep. With checkpoint names and weight
    conversions that are not plain renamings, all tensors are gathered first and reverted together.
    """
    if names not in ("transformers", "checkpoint"):
        raise ValueError(f"names must be 'transformers' or 'checkpoint', not {names!r}")
    weights = _merged_weights(model, zero_stage)
    if names == "transformers":
        yield from weights
        return
    base = base_model(model)
    own = [_out_name(n) for n in base.state_dict(keep_vars=True) if "lora_" not in n]
    mapping = checkpoint_name_map(model, own)
    if mapping is not None:
        for name, value in weights:
            yield mapping[name], value
        return
    from transformers.core_model_loading import revert_weight_conversion

    yield from revert_weight_conversion(base, dict(weights)).items()


def _out_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def _merged_weights(model, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(transformers' name, full tensor) for every parameter and buffer of the state dict, LoRA merged in; a
    tensor tied to another is given once. (save_pretrained drops tied duplicates by storage, but gathered ZeRO-3
    copies share none: without this a ZeRO-3 checkpoint would hold an extra `lm_head.weight`.)"""
    base = base_model(model)
    lora_layers = {}
    if base is not model:  # peft
        from peft.tuners.lora import LoraLayer

        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                lora_layers[name] = module
    seen: set[int] = set()
    for name, tensor in list(base.state_dict(keep_vars=True).items()):
        if "lora_" in name or id(tensor) in seen:
            continue  # a tied weight (lm_head = embed_tokens) once, under its first name, as checkpoints hold it
        seen.add(id(tensor))
        gather = contextlib.nullcontext()
        if zero_stage == 3 and hasattr(tensor, "ds_id"):
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)
        with gather:
            value = tensor.detach().clone()
            out_name = _out_name(name)
            module_name = out_name.rsplit(".", 1)[0]
            if out_name.endswith(".weight") and module_name in lora_layers:
                layer = lora_layers[module_name]
                ctx = contextlib.nullcontext()
                if zero_stage == 3:
                    import deepspeed

                    # the adapters only: the base weight is gathered above, and DeepSpeed refuses overlapping gathers
                    adapters = [p for n, p in layer.named_parameters() if "lora_" in n]
                    ctx = deepspeed.zero.GatheredParameters(adapters, modifier_rank=None)
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
