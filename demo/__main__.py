"""The demo through the public API: by default the learning demo (a small pretrained base, then few-shot grounding:
SFT warm start, +SFT, +RFT, scored on held-out rows); --quick, the plumbing-only run of tiny-qwen2-vl.

    python -m demo [--url http://127.0.0.1:8000] [--out DIR] [--keep-serving]
    python -m demo --quick | --plumbing [--task grounding|classification] [--steps N]

See `demo.learn` and `demo.run` for what each does.
"""
import sys

from demo.run import main

sys.exit(main())
