"""Mixture of experts: routing, capacity and dropping, load-balancing loss, equivalence and learning."""
from __future__ import annotations

import math

import pytest
import torch

from mmzoo.layers import Mlp, MoE


def _moe(**kw):
    torch.manual_seed(0)
    return MoE(16, 32, **kw)


def test_single_expert_is_the_dense_mlp():
    moe = _moe(num_experts=1, top_k=1, capacity_factor=0)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(moe(x), moe.experts[0](x))
    assert isinstance(moe.experts[0], Mlp)


def test_top_k_routing_and_gates_match_a_manual_mixture():
    moe = _moe(num_experts=4, top_k=2, capacity_factor=0)
    x = torch.randn(10, 16)
    probs = moe.router(x).softmax(-1)
    gate, idx = probs.topk(2, dim=-1)
    gate = gate / gate.sum(-1, keepdim=True)
    expected = torch.stack([sum(gate[n, j] * moe.experts[int(idx[n, j])](x[n]) for j in range(2))
                            for n in range(10)])
    torch.testing.assert_close(moe(x), expected)
    assert float(moe.dropped_fraction) == 0.0


def test_capacity_drops_overflowing_tokens_first_choices_first():
    moe = _moe(num_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # every token with x[:, 0] > 0 prefers expert 0
    x = torch.randn(16, 16)
    x[:, 0] = x[:, 0].abs() + 1
    cap = moe.capacity(16)
    assert cap == math.ceil(1.0 * 16 * 1 / 4) == 4
    out = moe(x)
    index, gate, kept, _ = moe.route(x)
    assert (index[:, 0] == 0).all()
    assert kept[:, 0].tolist() == [True] * 4 + [False] * 12  # token order within a choice rank
    assert out[4:].abs().sum() == 0  # dropped tokens get nothing (the residual carries them)
    torch.testing.assert_close(out[:4], gate[:4, :1] * moe.experts[0](x[:4]))
    assert float(moe.dropped_fraction) == pytest.approx(12 / 16)

    # top-2: second choices queue behind every first choice
    moe2 = _moe(num_experts=2, top_k=2, capacity_factor=1.0)
    index, _, kept, _ = moe2.route(torch.randn(8, 16))  # capacity 8 per expert = all 16 assignments fit
    assert kept.all()
    moe2.capacity_factor = 0.5  # capacity 4: each expert serves only first choices
    idx, _, kept, _ = moe2.route(torch.randn(8, 16))
    for e in range(2):
        served = kept & (idx == e)
        assert served.sum() <= 4
        if (idx[:, 0] == e).sum() >= 4:
            assert not served[:, 1].any()


def test_load_balancing_loss():
    moe = _moe(num_experts=4, top_k=1, capacity_factor=0)
    x = torch.randn(64, 16)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, 0] = torch.tensor([100.0, 0, 0, 0])
    x[:, 0] = 1.0
    moe(x)  # everything to expert 0 with probability ~1: f = P = (1, 0, 0, 0) -> loss = E
    assert float(moe.aux_loss) == pytest.approx(4.0, rel=1e-4)
    # training the router on the auxiliary loss alone balances the experts
    torch.manual_seed(0)
    moe = _moe(num_experts=4, top_k=1, capacity_factor=0)
    with torch.no_grad():
        moe.router.weight.add_(torch.randn(4, 16))  # an unbalanced start
    opt = torch.optim.SGD(moe.router.parameters(), lr=0.5)
    x = torch.randn(256, 16)
    moe(x)
    start = float(moe.aux_loss)
    for _ in range(100):
        opt.zero_grad()
        moe(x)
        moe.aux_loss.backward()
        opt.step()
    moe(x)
    assert float(moe.aux_loss) < min(start, 1.05)  # 1.0 = perfectly balanced


def test_moe_learns_a_regression():
    torch.manual_seed(0)
    moe = MoE(8, 32, num_experts=4, top_k=2, capacity_factor=1.5)
    x = torch.randn(256, 8)
    y = torch.sin(3 * x) * (x[:, :1] > 0)
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = (moe(x) - y).pow(2).mean() + 0.01 * moe.aux_loss
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]
    assert all(p.grad is not None for p in moe.parameters())


def test_bad_top_k():
    with pytest.raises(ValueError, match="top_k"):
        MoE(8, num_experts=2, top_k=3)
