"""Checkpoints: HF model folders written atomically, the trainer state for an exact resume, retention."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.export import base_model, export_weights, write_rank_digest
from trainer.job_spec import TrainerError
from trainer.process import Dist, barrier

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
SKIP_FILES = {"config.json", "vrft_tiny_model.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def copy_processor_files(model_path: str, out: Path) -> None:
    """Tokenizer, processor, chat template and generation config of the base model, copied as they are."""
    for p in Path(model_path).iterdir():
        if p.is_file() and p.name not in SKIP_FILES and not p.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(p, out / p.name)


def save_hf_folder(model, weights: dict[str, torch.Tensor], model_path: str, out: Path) -> None:
    """An HF model folder (safetensors + config + processor files) that transformers and vLLM load."""
    base = base_model(model)
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
        layout = {"world_size": torch.distributed.get_world_size(), "zero_stage": engine.zero_optimization_stage()}
        (ckpt_dir / "trainer_state" / "state.json").write_text(json.dumps({**state.__dict__, **layout}, indent=2))


def load_trainer_state(engine, ckpt_dir: Path) -> TrainState:
    import numpy as np

    ts = Path(ckpt_dir) / "trainer_state"
    if not (ts / "ds").exists():
        raise TrainerError("invalid_resume", f"{ckpt_dir} has no trainer_state/ to resume from (only the latest "
                                             "checkpoint and paused checkpoints keep it)")
    _check_same_ranks(engine, ts)
    _, client = engine.load_checkpoint(str(ts), tag="ds", load_module_strict=False,
                                       load_optimizer_states=True, load_lr_scheduler_states=False)
    rng = client["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**client["train_state"])


def _check_same_ranks(engine, ts: Path) -> None:
    """ZeRO (stage 1 and up) splits the optimizer state into one file per rank, and DeepSpeed reloads it only into
    as many ranks as wrote it, with ZeRO again (its elastic and universal checkpoints are not used here). A resume
    on another number of ranks (a host of the hostfile lost) gets this error, which says what to do, rather than
    DeepSpeed's failure half-way through the load. (Checkpoints from before `world_size` was recorded: unchecked.)"""
    try:
        saved = json.loads((ts / "state.json").read_text())
    except (OSError, ValueError):
        return
    if "world_size" not in saved:
        return
    world, stage = torch.distributed.get_world_size(), engine.zero_optimization_stage()
    was_world, was_stage = saved["world_size"], saved["zero_stage"]
    split, was_split = stage >= 1, was_stage >= 1
    if split == was_split and (world == was_world or not split):
        return
    raise TrainerError(
        "resume_world_size_changed",
        f"The checkpoint {ts.parent.name} was written by {was_world} rank(s) with ZeRO stage {was_stage}, and this run "
        f"has {world} rank(s) with stage {stage}: its optimizer state cannot be split again. Resume it with "
        f"{was_world} rank(s) in all (a hostfile whose slots add up to {was_world}, or VRFT_TRAINER_NUM_RANKS)."
    )


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
        barrier()
        save_trainer_state(engine, state, tmp)  # every rank writes its optimizer shard
        barrier()
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
        barrier()
        return final

    def end_step(self, engine, state: TrainState, metrics: dict, *, save: bool, pause: bool) -> bool:
        """The end of a step that is not the last: a checkpoint when `save` (an epoch's end, an evaluation), and
        when the user asked to pause, the checkpoint the `paused` event names (the one just saved, unless
        retention removed it at once). True when paused: the trainer returns."""
        path = self.save(engine, state, metrics) if save else None
        if pause:
            if path is None or not path.exists():
                path = self.save(engine, state, metrics, emit=False)
            self.events.paused(state.step, str(path.relative_to(self.output_dir)))
        return pause

    def finish(self, engine, state: TrainState, metrics: dict) -> None:
        """After the last step: the ranks' weight digests, the final model and the `final` event."""
        write_rank_digest(self.output_dir, engine, self.zero_stage, state.step)
        final = self.save_final(engine)
        self.events.final(state.step, str(final.relative_to(self.output_dir)), state.trained_tokens, metrics)

    def save_final(self, engine) -> Path:
        final = self.output_dir / "final"
        weights = dict(export_weights(engine.module, self.zero_stage))
        if self.dist.main:
            tmp = atomic_dir(final)
            save_hf_folder(engine.module, weights, self.model_path, tmp)
            commit_dir(tmp, final)
        barrier()
        return final
