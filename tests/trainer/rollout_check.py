"""Run as a script (a clean process for vLLM): the vLLM and HF rollout engines on the same weights.

    python tests/trainer/rollout_check.py MODEL_DIR TRAIN_JSONL WORK_DIR  -> WORK_DIR/result.json

1. greedy: both engines give the same tokens, texts and rewards;
2. sampling: the log-probs vLLM reports for its sampled tokens equal the trainer's log-probs of them;
3. sync: after the weights change and `VLLMRollout.load_weights`, greedy outputs equal HF's on the new weights
   (stale encoder/prefix caches would replay the old outputs) and differ from the old ones.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(model_dir: str, train_file: str, work: str) -> None:
    from trainer.process import setup_environment

    setup_environment()
    import torch

    torch.set_num_threads(2)
    from transformers import AutoModelForImageTextToText

    import grader as graders
    from tests.trainer.synth import MULTI_GRADER
    from trainer.checkpoints import save_hf_folder
    from trainer.data import ChatData, read_jsonl
    from trainer.export import export_weights
    from trainer.grpo import Sequence, completion_logprobs, make_microbatches
    from trainer.model import load_processor, placeholder_token_ids, stop_token_ids
    from trainer.rollout import HFRollout, VLLMRollout

    work_dir = Path(work)
    processor = load_processor(model_dir, True)
    tok = processor.tokenizer
    rows, lines = read_jsonl(train_file)
    data = ChatData(rows, lines, processor, True, "training file")
    prompts = [data.prompt(i) for i in range(len(rows))]
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    stop, suppress = stop_token_ids(model_dir, tok), placeholder_token_ids(model.config)
    hf = HFRollout(lambda: model, tok, stop, tok.pad_token_id, torch.device("cpu"), 0, suppress)
    t = time.monotonic()
    vl = VLLMRollout(model_dir, tokenizer=tok, stop_ids=stop, suppress_ids=suppress, dtype=torch.float32,
                     max_model_len=512, max_num_seqs=32, seed=0, images_per_prompt=1, world_size=1, cpu=True)
    load_s = time.monotonic() - t
    grade = graders.compile(MULTI_GRADER)
    seeds = list(range(len(prompts)))

    def greedy(engine):
        groups = engine.generate(prompts, 2, 16, 0.0, 1.0, seeds)
        texts = [c.text for g in groups for c in g]
        rewards = grade.grade([{"output_text": x} for x in texts], [p.row for p in prompts for _ in range(2)]).rewards
        return [[c.token_ids for c in g] for g in groups], texts, rewards

    result = {"load_s": load_s}
    result["hf_greedy"], result["hf_texts"], result["hf_rewards"] = greedy(hf)
    result["vllm_greedy"], result["vllm_texts"], result["vllm_rewards"] = greedy(vl)

    # Sampled tokens: vLLM's log-probs vs the trainer's. vLLM reports raw log-probs (before its logit bias
    # removes the placeholder tokens), so the trainer's are taken without that mask here.
    from vllm import SamplingParams

    outs = vl.llm.generate([{"prompt": p.text, "multi_modal_data": {"image": p.images}} for p in prompts],
                           SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=3, logprobs=0,
                                          stop_token_ids=stop, logit_bias=vl.logit_bias), use_tqdm=False)
    diffs = []
    for p, o in zip(prompts, outs):
        for c in o.outputs:
            toks = list(c.token_ids)
            v = [lp[t].logprob for lp, t in zip(c.logprobs, toks)]
            (mb,) = make_microbatches([Sequence(p, toks, 0.0, False)], 1, tok.pad_token_id, "cpu")
            with torch.no_grad():
                h = completion_logprobs(model, mb, 1.0)[0, :len(toks)].tolist()
            diffs.append(max(abs(a - b) for a, b in zip(v, h)))
    result["sampled_logprob_max_diff"] = max(diffs)
    result["sampled_sequences"] = len(diffs)

    # Weight sync: change the weights, save them as a checkpoint folder, push them into vLLM in place.
    torch.manual_seed(1)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    weights = dict(export_weights(model, 0))
    save_hf_folder(model, weights, model_dir, work_dir / "perturbed")
    t = time.monotonic()
    vl.load_weights(weights.items())
    result["sync_s"] = time.monotonic() - t
    result["hf_greedy_2"], _, result["hf_rewards_2"] = greedy(hf)
    result["vllm_greedy_2"], _, result["vllm_rewards_2"] = greedy(vl)
    reloaded = AutoModelForImageTextToText.from_pretrained(work_dir / "perturbed", dtype=torch.float32)
    result["checkpoint_roundtrip"] = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                           reloaded.state_dict().values()))
    (work_dir / "result.json").write_text(json.dumps(result))
    vl.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(*sys.argv[1:4])
