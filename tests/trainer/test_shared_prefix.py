"""The shared-prefix forward of GRPO training (a prompt's pass once, its G completions on copies of its KV
cache) gives the log-probs and the gradient of full sequences: same loss, same update, less compute."""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(scope="module")
def setup(tiny_model, dataset):
    from transformers import AutoModelForImageTextToText

    from trainer.data import ChatData, read_jsonl
    from trainer.model import load_processor

    processor = load_processor(str(tiny_model), True)
    rows, lines = read_jsonl(dataset["train"])
    text_row = {"messages": [{"role": "user", "content": "Name a colour, any colour you like."}]}
    # image prompts of different lengths, and a text-only prompt between them (left padding, mixed images)
    rows = [rows[0], text_row, rows[1], rows[2]]
    data = ChatData(rows, [1, 2, 3, 4], processor, True, "training file")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    return dict(model=model, data=data, pad=processor.tokenizer.pad_token_id)


def _sequences(data, G: int, seed: int = 0):
    """G random completions of varied lengths (1..9 tokens) for each prompt, advantages +-1."""
    from trainer.grpo import Sequence

    rng = random.Random(seed)
    prompts = [data.prompt(i) for i in range(len(data))]
    assert len({len(p.input_ids) for p in prompts}) > 1, "prompts of one length would not test the padding"
    assert [("pixel_values" in p.mm) for p in prompts] == [True, False, True, True]
    return [Sequence(p, [rng.randrange(10, 200) for _ in range(rng.randint(1, 9))], rng.choice([-1.0, 1.0]), False)
            for p in prompts for _ in range(G)]


def _loss_and_grads(model, mb, shared: bool):
    from trainer.grpo import agg_grpo, completion_logprobs, per_token_loss

    model.zero_grad()
    logp = completion_logprobs(model, mb, 0.7, [], shared_prefix=shared)  # [b, C]
    loss_tok, _, _ = per_token_loss(logp, logp.detach(), None, mb.advantages, 0.2, 0.2, 0.0)
    loss = agg_grpo(loss_tok, mb.mask, len(mb.advantages), 0, 0) + 0.1 * (logp * mb.mask).sum()
    loss.backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("micro", [12, 5])  # whole groups per micro-batch, and groups split across micro-batches
def test_shared_prefix_gives_the_logprobs_and_gradients_of_full_sequences(setup, micro) -> None:
    from trainer.grpo import make_microbatches

    model, data = setup["model"], setup["data"]
    model.train()
    seqs = _sequences(data, G=3)
    batches = make_microbatches(seqs, micro, setup["pad"], "cpu")
    assert sum(len(mb.owner) for mb in batches) == len(seqs)
    assert batches[0].prompt_ids.shape[0] < len(batches[0].owner)  # prompts run fewer times than completions
    for mb in batches:
        full_logp, full_grads = _loss_and_grads(model, mb, shared=False)
        logp, grads = _loss_and_grads(model, mb, shared=True)
        m = mb.mask.bool()
        assert torch.allclose(logp[m], full_logp[m], atol=2e-5), (logp[m] - full_logp[m]).abs().max()
        assert grads.keys() == full_grads.keys()
        assert any(n.startswith("model.visual") or ".visual." in n for n in grads)  # the vision tower is trained too
        for n in grads:
            assert torch.allclose(grads[n], full_grads[n], rtol=1e-3, atol=1e-6), n


def test_full_sequence_logprobs_equal_one_sequence_at_a_time(setup) -> None:
    """The reference itself: the batched full-sequence path equals each sequence alone (no padding leaks)."""
    from trainer.grpo import completion_logprobs, make_microbatches

    model, data = setup["model"], setup["data"]
    model.eval()
    seqs = _sequences(data, G=2, seed=1)
    with torch.no_grad():
        (mb,) = make_microbatches(seqs, len(seqs), setup["pad"], "cpu")
        together = completion_logprobs(model, mb, 1.0, [], shared_prefix=False)
        for i, s in enumerate(seqs):
            (one,) = make_microbatches([s], 1, setup["pad"], "cpu")
            alone = completion_logprobs(model, one, 1.0, [], shared_prefix=False)[0]
            n = len(s.completion_ids)
            assert torch.allclose(together[i, :n], alone[:n], atol=2e-5)


def test_prompts_are_rendered_once_and_the_cache_keeps_to_its_budget(setup) -> None:
    from trainer.data import ChatData

    data = setup["data"]
    fresh = ChatData(data.rows, data.lines, data.processor, True, "training file")
    first = fresh.prompt(0)
    assert fresh.prompt(0) is first  # a later epoch gets the same rendering, not a new one
    assert first.input_ids == data._render_prompt(0).input_ids
    size = fresh._prompt_bytes
    assert size > 56 * 56 * 3  # the image and its pixel tensors are counted
    fresh.prompt_cache_bytes = 2 * size  # room for about two image prompts
    for i in (1, 2, 3):
        fresh.prompt(i)
    assert fresh._prompt_bytes <= fresh.prompt_cache_bytes
    assert 0 not in fresh._prompts  # the least recently used went first
    assert fresh.prompt(3) is fresh.prompt(3)
