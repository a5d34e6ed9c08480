"""End-to-end demo through the public API (the openai SDK): by default the learning demo (`demo.learn`: a small
pretrained base, `demo.base`; few-shot grounding with new relation words, `demo.scenes`; SFT warm start, +SFT and
+RFT scored on held-out rows, `demo.learning`); ``--quick``, the plumbing-only run of tiny-qwen2-vl (`demo.run`).

    python -m demo [--url http://127.0.0.1:8000] [--out DIR] [--keep-serving]
    python -m demo --quick | --plumbing [--task grounding|classification] [--steps N] [--out DIR]
"""
