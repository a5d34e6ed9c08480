"""The GRPO maths against values computed by hand: advantages, the clipped surrogate, the k3 KL, each
aggregation, and micro-batch shares that add up to the whole batch."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.grpo import AGGREGATIONS, agg_dapo, agg_dr_grpo, agg_grpo, group_advantages, per_token_loss


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2], [3.0, 1.0, 2.0, 2.0]])
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: all equal -> 0; group 2: mean 2, std sqrt(2/3)
    a = group_advantages(r, "group")
    s0, s2 = math.sqrt(1 / 3), math.sqrt(2 / 3)
    expected = [[0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), 0.5 / (s0 + 1e-4)],
                [0.0, 0.0, 0.0, 0.0],
                [1 / (s2 + 1e-4), -1 / (s2 + 1e-4), 0.0, 0.0]]
    assert a.flatten().tolist() == pytest.approx(sum(expected, []), abs=1e-6)
    none = group_advantages(r, "none")
    assert none.flatten().tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1, -1, 0, 0], abs=1e-6)
    batch = group_advantages(r, "batch")
    mean_all = sum(sum(r.tolist(), [])) / 12
    std_all = math.sqrt(sum((x - mean_all) ** 2 for x in sum(r.tolist(), [])) / 11)  # one std over all rewards
    assert batch.flatten().tolist() == pytest.approx((none.flatten() / (std_all + 1e-4)).tolist(), abs=1e-6)


def test_per_token_loss_ratio_one_is_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]])
    loss, clipped, kl = per_token_loss(logp, logp.detach(), None, torch.tensor([2.0, -1.0]), 0.2, 0.2, 0.0)
    assert loss.tolist() == [[-2.0, -2.0], [1.0, 1.0]]
    assert clipped.sum() == 0 and kl.abs().sum() == 0


def test_clipping_by_hand():
    old = torch.zeros(1, 4)
    # ratios e^0.5=1.65, e^-0.5=0.61, e^0.1=1.105, e^-0.1=0.905 ; eps 0.2 -> clip to [0.8, 1.2]
    logp = torch.tensor([[0.5, -0.5, 0.1, -0.1]])
    loss_pos, clip_pos, _ = per_token_loss(logp, old, None, torch.tensor([1.0]), 0.2, 0.2, 0.0)
    # A>0: -min(r, clip(r)) -> -1.2 (clipped), -0.61 (unclipped: min picks r), -1.105, -0.905
    assert loss_pos.tolist()[0] == pytest.approx([-1.2, -math.exp(-0.5), -math.exp(0.1), -math.exp(-0.1)], abs=1e-6)
    assert clip_pos.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    loss_neg, clip_neg, _ = per_token_loss(logp, old, None, torch.tensor([-1.0]), 0.2, 0.2, 0.0)
    # A<0: -min(-r, -clip(r)) = max(r, clip(r)) -> 1.65 (unclipped), 0.8 (clipped), 1.105, 0.905
    assert loss_neg.tolist()[0] == pytest.approx([math.exp(0.5), 0.8, math.exp(0.1), math.exp(-0.1)], abs=1e-6)
    assert clip_neg.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    # clip-higher: eps_high 0.7 lets the first token's ratio 1.65 through
    loss_hi, clip_hi, _ = per_token_loss(logp, old, None, torch.tensor([1.0]), 0.2, 0.7, 0.0)
    assert loss_hi[0, 0].item() == pytest.approx(-math.exp(0.5)) and clip_hi.sum() == 0


def test_gradient_is_zero_where_clipped():
    logp = torch.tensor([[0.5, 0.1]], requires_grad=True)
    loss, _, _ = per_token_loss(logp, torch.zeros(1, 2), None, torch.tensor([1.0]), 0.2, 0.2, 0.0)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -math.exp(0.1)], abs=1e-6)


def test_k3_kl_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.3]])
    ref = torch.tensor([[-1.0, -1.5, -0.8]])
    _, _, kl = per_token_loss(logp, logp.detach(), ref, torch.tensor([0.0]), 0.2, 0.2, 0.1)
    d = [0.0, 0.5, -0.5]  # ref - logp
    assert kl.tolist()[0] == pytest.approx([math.exp(x) - x - 1 for x in d], abs=1e-6)
    assert (kl >= 0).all()
    loss, _, _ = per_token_loss(logp, logp.detach(), ref, torch.tensor([0.0]), 0.2, 0.2, 0.1)
    assert loss.tolist()[0] == pytest.approx([0.1 * (math.exp(x) - x - 1) for x in d], abs=1e-6)


LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_aggregations_by_hand():
    # grpo: mean per completion (2, 4) then over completions -> 3
    assert agg_grpo(LOSS, MASK, 2, 4, 8).item() == pytest.approx(3.0)
    # dr_grpo: masked sum 10 / (2 completions x 8 max tokens)
    assert agg_dr_grpo(LOSS, MASK, 2, 4, 8).item() == pytest.approx(10 / 16)
    # dapo: masked sum 10 / 4 tokens
    assert agg_dapo(LOSS, MASK, 2, 4, 8).item() == pytest.approx(2.5)
    assert set(AGGREGATIONS) == {"grpo", "dr_grpo", "dapo"}


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_micro_batch_shares_add_up(name):
    torch.manual_seed(0)
    loss = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    fn = AGGREGATIONS[name]
    n_tokens = mask.sum().item()
    whole = fn(loss, mask, 6, n_tokens, 5)
    parts = sum(fn(loss[i:i + 2], mask[i:i + 2], 6, n_tokens, 5) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)
