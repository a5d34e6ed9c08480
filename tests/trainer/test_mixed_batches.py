"""Batches that mix rows with images and text-only rows (a dataset may have both): training losses and greedy
rollouts of a mixed batch equal those of each row alone."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def mixed(tiny_model, dataset):
    from transformers import AutoModelForImageTextToText

    from trainer.data import ChatData, read_jsonl
    from trainer.model import load_processor

    processor = load_processor(str(tiny_model), True)
    rows, lines = read_jsonl(dataset["train"])
    text_row = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "red"}]}
    # text first, then two image rows, then text again: images must pair with their own rows' image tokens
    rows = [text_row, rows[0], rows[1], text_row]
    data = ChatData(rows, [1, 2, 3, 4], processor, True, "training file")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return dict(model=model, data=data, processor=processor)


def test_sft_loss_of_a_mixed_batch_is_the_sum_of_each_row_alone(mixed) -> None:
    from trainer.sft import collate, token_loss_sums

    data, model = mixed["data"], mixed["model"]
    pad = mixed["processor"].tokenizer.pad_token_id
    examples = [data.sft_example(i) for i in range(4)]
    assert [("pixel_values" in mm) for _, _, mm, _ in examples] == [False, True, True, False]
    with torch.no_grad():
        together = token_loss_sums(model, *collate(examples, pad, torch.device("cpu")))
        alone = [token_loss_sums(model, *collate([e], pad, torch.device("cpu"))) for e in examples]
    assert torch.allclose(together[0], sum(a[0] for a in alone), rtol=1e-4)
    assert int(together[2]) == sum(int(a[2]) for a in alone)


def test_greedy_rollout_of_a_mixed_batch_equals_each_prompt_alone(mixed) -> None:
    from trainer.model import placeholder_token_ids, stop_token_ids
    from trainer.rollout import HFRollout

    data, model, tok = mixed["data"], mixed["model"], mixed["processor"].tokenizer
    rollout = HFRollout(
        lambda: model,
        tok,
        stop_token_ids(str(model.name_or_path), tok),
        tok.pad_token_id,
        torch.device("cpu"),
        suppress_ids=placeholder_token_ids(model.config),
    )
    prompts = [data.prompt(i) for i in range(4)]
    together = rollout.generate(prompts, 2, 12, 0.0, 1.0, seeds=[0, 1, 2, 3])
    alone = [rollout.generate([p], 2, 12, 0.0, 1.0, seeds=[0])[0] for p in prompts]
    assert [[c.token_ids for c in g] for g in together] == [[c.token_ids for c in g] for g in alone]
