"""End-to-end demo: SFT then RFT of tiny-qwen2-vl through the public API, evaluation of base / SFT / RFT.

    python -m demo [--url http://127.0.0.1:8000] [--task grounding|classification] [--quick | --steps N] [--out DIR]

See `demo.run` for what it does.
"""
