"""research/learning.py's pure parts: --merge of per-seed result files, and the scene options it passes on."""

from __future__ import annotations

import argparse
import json

import pytest

from research import learning as bl


def part(seed: int, scores: dict, **extra_args) -> dict:
    args = {"tasks": ["grounding"], "seeds": [seed], "n_train": 32, "n_eval": 32, "base_model": "m", "image_size": 56,
            "plain_background": True, "max_objects": 2, "gradient_background": 96, "out": f"/tmp/x{seed}", **extra_args}
    ev = {s: {"score": v, "format_rate": 1.0} for s, v in scores.items()}
    jobs = {s: {"sequences": 1, "steps": 1, "seconds": 1.0} for s in ("warm", "sft", "rft")}
    return {"args": args, "command": f"cmd {seed}", "seconds_total": 60.0 * (seed + 1), "base_model_pretraining": None,
            "runs": [{"task": "grounding", "seed": seed, "jobs": jobs, "eval": ev}]}


def test_merge_combines_seeds_and_refuses_other_options(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(part(0, {"base": 0.1, "warm": 0.2, "sft": 0.3, "rft": 0.5})))
    b.write_text(json.dumps(part(1, {"base": 0.1, "warm": 0.2, "sft": 0.1, "rft": 0.3})))
    assert bl.main(["--merge", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    got = json.loads((tmp_path / "out" / "learning.json").read_text())
    assert got["args"]["seeds"] == [0, 1] and [r["seed"] for r in got["runs"]] == [0, 1]
    s = got["summary"]["grounding"]
    assert s["rft_minus_warm"]["mean"] == pytest.approx(0.2)
    assert s["rft_minus_sft"]["mean"] == pytest.approx(0.2) and s["rft_minus_sft"]["wins"] == 2
    assert got["seconds_total"] == 120.0 and "cmd 0" in got["command"] and "cmd 1" in got["command"]
    md = (tmp_path / "out" / "learning.md").read_text()
    assert "| grounding (mean IoU) | 0, 1 |" in md and "position ramp of 96 levels" in md
    c = tmp_path / "c.json"
    c.write_text(json.dumps(part(2, {"base": 0.1, "warm": 0.2, "sft": 0.3, "rft": 0.5}, image_size=112)))
    with pytest.raises(SystemExit, match="image_size"):
        bl.main(["--merge", str(a), str(c), "--out", str(tmp_path / "out2")])
    with pytest.raises(SystemExit, match="twice"):
        bl.main(["--merge", str(a), str(a), "--out", str(tmp_path / "out3")])


def test_task_options_pass_the_gradient_on():
    ns = argparse.Namespace(image_size=56, plain_background=True, max_objects=2, gradient_background=96)
    assert bl.task_options(ns) == {"short": True, "sizes": ((56, 56),), "noise_prob": 0.0, "max_objects": 2,
                                   "gradient": 96}
    ns.gradient_background = 0
    assert "gradient" not in bl.task_options(ns)
    ns.relation_words = "compass"
    assert bl.task_options(ns)["relation_words"] == "compass" and "'west of'" in bl.scene_note(ns)
    ns.relation_words = "plain"
    assert "relation_words" not in bl.task_options(ns) and "words" not in bl.scene_note(ns)
    ns.min_objects, ns.max_objects, ns.shape_scale = 3, 3, [0.3, 0.45]
    assert bl.task_options(ns) == {"short": True, "sizes": ((56, 56),), "noise_prob": 0.0, "max_objects": 3,
                                   "min_objects": 3, "shape_scale": (0.3, 0.45)}


def test_think_anchor_asks_for_the_think_format_and_a_longer_budget():
    ns = argparse.Namespace(image_size=56, plain_background=False, think_anchor=True)
    opts = bl.task_options(ns)
    assert opts == {"short": False, "think_anchor": True, "sizes": ((56, 56),)}
    spec, budget = bl.task_grader("grounding", opts)
    assert "<think>" in spec["graders"]["format"]["pattern"] and budget == bl.MAX_TOKENS["grounding"] + bl.THINK_TOKENS
    assert bl.task_grader("detection", opts)[1] == bl.MAX_TOKENS["detection"] + bl.THINK_TOKENS  # its <think> too
    short = bl.task_options(argparse.Namespace(image_size=56, plain_background=False))
    short_spec, short_budget = bl.task_grader("grounding", short)
    assert "<think>" not in short_spec["graders"]["format"]["pattern"] and short_budget == bl.MAX_TOKENS["grounding"]


def test_pretrain_command_passes_the_scene_on_but_not_the_benchmarks_minimum():
    """--pretrain builds the base on the benchmark's scenes, capped by --pretrain-max-objects and never with
    --min-objects (the relational benchmark asks for 3 shapes; its base learns on 2); every flag exists in
    pretrain_base.py."""
    from research import pretrain_base

    ns = argparse.Namespace(base_model="b", pretrain_size="tiny", tasks=["grounding"], pretrain_rows=100, pretrain=10,
                            pretrain_lr=5e-4, image_size=56, plain_background=True, pretrain_number_tokens=True,
                            pretrain_max_objects=2, max_objects=3, min_objects=3, shape_scale=[0.3, 0.45],
                            gradient_background=0, pretrain_stop_after=None)
    cmd = bl.pretrain_command(ns)
    assert cmd[cmd.index("--max-objects") + 1] == "2" and "--min-objects" not in cmd
    assert cmd[cmd.index("--shape-scale") + 1:cmd.index("--shape-scale") + 3] == ["0.3", "0.45"]
    assert "--number-tokens" in cmd and "--plain-background" in cmd and cmd[cmd.index("--lr") + 1] == "0.0005"
    ns.pretrain_max_objects = None
    assert bl.pretrain_command(ns)[bl.pretrain_command(ns).index("--max-objects") + 1] == "3"
    parsed = pretrain_base.parser().parse_args(cmd[2:])  # pretrain_base.py takes every flag and value
    assert (parsed.max_objects, parsed.min_objects, parsed.shape_scale, parsed.number_tokens) == (
        2, None, [0.3, 0.45], True)


def test_rft_hyperparameters_send_the_loss_options_only_when_asked_and_the_api_accepts_them():
    from api.schemas import ReinforcementHyperparameters

    ns = argparse.Namespace(rft_epochs=1, batch_size=4, num_generations=8, rft_lr_multiplier=5.0, temperature=1.0,
                            beta=0.0, freeze_vision=True, loss_type=None, scale_rewards=None)
    hp = bl.rft_hyperparameters(ns, 24)
    assert "loss_type" not in hp and "scale_rewards" not in hp and hp["freeze_vision"] is True
    ns.loss_type, ns.scale_rewards = "dr_grpo", "none"
    hp = bl.rft_hyperparameters(ns, 24)
    assert hp["loss_type"] == "dr_grpo" and hp["scale_rewards"] == "none" and hp["max_completion_length"] == 24
    parsed = ReinforcementHyperparameters.model_validate(hp)
    assert parsed.scale_rewards == "none" and parsed.loss_type == "dr_grpo"
