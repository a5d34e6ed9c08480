"""The learning studies beside the product: does RFT learn here, and why (not)?

Run from the repository root (by path, or ``python -m research.<module>``); not part of the installed package.

* `research.learning`: the learning benchmark (SFT warm start, then +SFT against +RFT, through the service's API);
* `research.pretrain_base`: pretraining of the tiny bases the benchmark starts from;
* `research.grounding_picks`, `research.probe_image_tokens`: probes of what a grounding model picks and sees;
* `research.scenes`: the studies' scene options, through `synthetic.Options`'s hooks;
* `research.models`: larger tiny models and number tokens, through `trainer.tiny_model.build_tiny_model`;
* research/results/: the headline result (`learning.vocabulary.md`) and a summary of the earlier tries.

Imports only public names of the product packages.
"""
