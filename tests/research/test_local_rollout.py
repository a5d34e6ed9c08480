"""research.learning's local model loading: loaded once per folder, and again when the folder's files change
(pretrain_base.py evaluates one folder that it rewrites between evaluations)."""

from __future__ import annotations

import synthetic
from research import learning as bl


def test_a_rewritten_model_folder_is_loaded_again(tmp_path) -> None:
    from trainer.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "m", seed=0)
    rows = synthetic.generate("grounding", 2, seed=1, short=True, sizes=((56, 56),))
    first = bl.local_rollout(folder)
    assert bl.local_rollout(folder) is first  # consecutive calls share one load
    before = bl.sample_answers(folder, rows, 8)
    build_tiny_model(folder, seed=1, force=True)  # new weights in the same folder
    assert bl.local_rollout(folder) is not first
    after = bl.sample_answers(folder, rows, 8)
    assert after != before and after == bl.sample_answers(folder, rows, 8)
