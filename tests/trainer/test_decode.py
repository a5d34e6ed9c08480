"""The HF engine's lean decode loop (trainer.rollout.decode) against transformers' `generate` on the same weights:
greedy tokens identical (image prompts, a text-only prompt, left padding, a plain causal LM), and sampled tokens
drawn from the model's distribution."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def vlm(tiny_model, dataset):
    """The tiny Qwen2-VL, its tokenizer, stop/suppress ids and the dataset's prompts plus one text-only prompt."""
    from transformers import AutoModelForImageTextToText

    from trainer.data import ChatData, read_jsonl
    from trainer.model import load_processor, placeholder_token_ids, stop_token_ids

    processor = load_processor(str(tiny_model), True)
    rows, lines = read_jsonl(dataset["train"])
    rows = rows[:3] + [{"messages": [{"role": "user", "content": "Name a colour."}], "label": "red"}]
    data = ChatData(rows, lines[:3] + [0], processor, True, "training file")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = processor.tokenizer
    return dict(
        model=model,
        tok=tok,
        stop=stop_token_ids(str(tiny_model), tok),
        suppress=placeholder_token_ids(model.config),
        prompts=[data.prompt(i) for i in range(len(rows))],
    )


def left_pad(prompts, pad_id: int, extra: int = 0):
    """ids, att [B, P + extra] and the model's extra inputs, as HFRollout batches them."""
    P = max(len(p.input_ids) for p in prompts) + extra
    ids = torch.full((len(prompts), P), pad_id)
    att = torch.zeros((len(prompts), P), dtype=torch.long)
    mm = {k: torch.zeros((len(prompts), P), dtype=torch.long) for k in prompts[0].per_token}
    for b, p in enumerate(prompts):
        L = len(p.input_ids)
        ids[b, P - L:], att[b, P - L:] = torch.tensor(p.input_ids), 1
        for k in mm:
            mm[k][b, P - L:] = torch.tensor(p.per_token[k])
    images = [p for p in prompts if p.mm]
    if images:
        mm.update({k: torch.cat([p.mm[k] for p in images]) for k in images[0].mm})
    return ids, att, mm


def lean_and_generate(model, ids, att, mm, stop, suppress, pad_id, new=24):
    from trainer.rollout import _cut, decode

    lean = decode(model, ids, att, mm, n=1, max_new_tokens=new, temperature=0.0, top_p=1.0, suppress_ids=suppress,
                  stop_ids=stop, generator=torch.Generator())
    ref = model.generate(input_ids=ids, attention_mask=att, **mm, do_sample=False, max_new_tokens=new,
                         suppress_tokens=suppress or None, eos_token_id=stop, pad_token_id=pad_id)[:, ids.shape[1]:]
    # Compare each row up to its first stop token (generate pads finished rows, decode leaves junk there).
    return [_cut(r, set(stop)) for r in lean.tolist()], [_cut(r, set(stop)) for r in ref.tolist()]


@pytest.mark.parametrize("case", ["one_image", "images_padded", "text_only", "text_and_image"])
def test_greedy_decode_equals_generate_on_the_vlm(vlm, case):
    p = vlm["prompts"]
    prompts, extra = {"one_image": ([p[0]], 0), "images_padded": (p[:3], 3), "text_only": ([p[3]], 0),
                      "text_and_image": ([p[3], p[1]], 0)}[case]
    ids, att, mm = left_pad(prompts, vlm["tok"].pad_token_id, extra)
    lean, ref = lean_and_generate(vlm["model"], ids, att, mm, vlm["stop"], vlm["suppress"], vlm["tok"].pad_token_id)
    assert lean == ref
    assert all(len(toks) > 1 for toks, _ in lean)


def test_greedy_decode_equals_generate_on_a_causal_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.data import Prompt

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [
        Prompt(i, {}, "", [], torch.randint(3, 512, (n,), generator=g).tolist()) for i, n in enumerate([5, 11, 8])
    ]
    ids, att, mm = left_pad(prompts, 0)
    lean, ref = lean_and_generate(model, ids, att, mm, [1, 2], [7], 0)
    assert lean == ref


def test_hf_rollout_groups_and_greedy_repeats(vlm):
    """n completions per prompt, in prompt order; greedy decodes once and repeats."""
    from trainer.rollout import HFRollout

    eng = HFRollout(lambda: vlm["model"], vlm["tok"], vlm["stop"], vlm["tok"].pad_token_id, torch.device("cpu"), 0,
                    vlm["suppress"])
    prompts = vlm["prompts"][:2]
    greedy = eng.generate(prompts, 3, 16, 0.0, 1.0, seeds=[0, 1])
    assert [len(g) for g in greedy] == [3, 3] and all(len({tuple(c.token_ids) for c in g}) == 1 for g in greedy)
    sampled = eng.generate(prompts, 4, 16, 1.0, 1.0, seeds=[5, 6])
    again = eng.generate(prompts, 4, 16, 1.0, 1.0, seeds=[5, 6])
    assert [[c.token_ids for c in g] for g in sampled] == [[c.token_ids for c in g] for g in again]  # seeded
    assert len({tuple(c.token_ids) for g in sampled for c in g}) > 1
    for c in (c for g in sampled for c in g):
        assert not set(c.token_ids) & set(vlm["suppress"])
        assert c.truncated == (len(c.token_ids) == 16 and c.token_ids[-1] not in vlm["stop"])
        assert c.text == vlm["tok"].decode(c.token_ids, skip_special_tokens=True)


def test_sampler_draws_from_the_distribution():
    """Inverse-transform sampling: empirical frequencies match probs; zero-probability tokens never come up."""
    from trainer.rollout import _sample

    probs = torch.softmax(torch.randn(50, generator=torch.Generator().manual_seed(0)) * 2, dim=0)
    probs[[0, 7, 49]] = 0.0  # suppressed tokens, including the first and the last
    probs = probs / probs.sum()
    draws = 100_000
    toks = _sample(probs.expand(draws, -1), torch.Generator().manual_seed(1))
    freq = torch.bincount(toks, minlength=50).double() / draws
    assert freq[[0, 7, 49]].sum() == 0
    se = (probs.double() * (1 - probs.double()) / draws).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * se + 1e-9).all()


def test_sampled_tokens_follow_the_model_distribution(vlm):
    """First sampled token over many rows: its mean log-probability is the distribution's -entropy (within 5 se),
    at temperature 0.7 and with top_p 0.8 (the nucleus renormalised)."""
    from trainer.rollout import _top_p_filter, decode

    model = vlm["model"]
    ids, att, mm = left_pad(vlm["prompts"][:1], vlm["tok"].pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=att, **mm).logits[0, -1].float()
    logits[vlm["suppress"]] = float("-inf")
    for temperature, top_p in ((0.7, 1.0), (1.0, 0.8)):
        scaled = logits / temperature
        if top_p < 1:
            scaled = _top_p_filter(scaled[None], top_p)[0]
        logp = torch.log_softmax(scaled, dim=0).double()
        n = 2000
        toks = decode(model, ids, att, mm, n=n, max_new_tokens=1, temperature=temperature, top_p=top_p,
                      suppress_ids=vlm["suppress"], stop_ids=vlm["stop"],
                      generator=torch.Generator().manual_seed(3))[:, 0]
        assert torch.isfinite(logp[toks]).all()  # nothing outside the nucleus, no placeholder
        p = logp.exp()
        mean, var = -(p * logp.nan_to_num(neginf=0)).sum(), (p * logp.nan_to_num(neginf=0) ** 2).sum()
        var = var - mean ** 2
        assert abs(logp[toks].mean() - (-mean)).item() <= 5 * math.sqrt(var.item() / n) + 1e-6


def test_compiled_decode_steps_give_the_eager_tokens_and_follow_weight_updates(vlm):
    """`compile_steps`: the same tokens as the eager loop (greedy and seeded sampling, padded image and
    text prompts), and after an in-place update of the weights (what an optimizer step does) the compiled
    steps use the new weights, with no stale copy baked into the graph."""
    import copy

    from trainer.rollout import HFRollout

    model = copy.deepcopy(vlm["model"])
    args = (vlm["tok"], vlm["stop"], vlm["tok"].pad_token_id, torch.device("cpu"), 0, vlm["suppress"])
    eager, compiled = HFRollout(lambda: model, *args), HFRollout(lambda: model, *args, compile_steps=True)
    prompts = [vlm["prompts"][3], vlm["prompts"][0], vlm["prompts"][1]]  # text-only first: left padding

    def tokens(engine, temperature):
        return [[c.token_ids for c in g] for g in engine.generate(prompts, 3, 12, temperature, 1.0, seeds=[4, 5, 6])]

    before = {t: tokens(eager, t) for t in (0.0, 1.0)}
    for t in (0.0, 1.0):
        assert tokens(compiled, t) == before[t]
    with torch.no_grad():  # a large step, so that the samples change
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = {t: tokens(eager, t) for t in (0.0, 1.0)}
    assert after != before
    for t in (0.0, 1.0):
        assert tokens(compiled, t) == after[t]
    assert compiled._compiled is not None and compiled._compiled[0] is model
