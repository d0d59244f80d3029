"""Mixture of experts: routing, capacity per sequence prefix against the written-out rule, dropless inference,\nload-balancing and z-loss, causality and KV-cached decoding of the MoE language model, learning."""
from __future__ import annotations

import math

import pytest
import torch

import mmzoo
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


def _reference_kept(index: torch.Tensor, capacity_factor: float, top_k: int, num_experts: int) -> torch.Tensor:
    """The capacity rule written out: each sequence is a queue in token order; by position t an expert
    serves at most ceil(capacity_factor * (t + 1) * top_k / num_experts) of its tokens."""
    S, L, k = index.shape
    kept = torch.zeros(S, L, k, dtype=torch.bool)
    for s in range(S):
        served = [0] * num_experts
        for t in range(L):
            cap = math.ceil(capacity_factor * (t + 1) * top_k / num_experts)
            for j in range(k):
                e = int(index[s, t, j])
                if served[e] < cap:
                    kept[s, t, j] = True
                    served[e] += 1
    return kept


@pytest.mark.parametrize("top_k,capacity_factor", [(1, 1.0), (2, 1.25), (2, 0.5), (3, 0.8)])
def test_capacity_per_sequence_prefix_matches_the_rule(top_k, capacity_factor):
    moe = _moe(num_experts=4, top_k=top_k, capacity_factor=capacity_factor).train()
    g = torch.Generator().manual_seed(top_k)
    skew = torch.tensor([4.0, 1.0, 0.5, 0.2])  # unbalanced choices: capacity binds
    index = torch.stack([torch.multinomial(skew, top_k, generator=g) for _ in range(3 * 40)]).view(3, 40, top_k)
    kept = moe.served(index)
    assert torch.equal(kept, _reference_kept(index, capacity_factor, top_k, 4))
    assert 0 < (~kept).sum() < kept.numel()
    assert moe.eval().served(index).all()  # dropless at inference


def test_dropped_tokens_get_nothing_and_eval_is_dropless():
    moe = _moe(num_experts=4, top_k=1, capacity_factor=1.0).train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # every token with x[:, 0] > 0 prefers expert 0
    x = torch.randn(16, 16)
    x[:, 0] = x[:, 0].abs() + 1
    out = moe(x)  # one sequence of 16 tokens: expert 0 may serve ceil((t + 1) / 4) tokens by position t
    index, gate, kept, _ = moe.route(x[None])
    assert (index == 0).all()
    assert kept[0, :, 0].tolist() == [t % 4 == 0 for t in range(16)]  # positions 0, 4, 8, 12
    dropped = ~kept[0, :, 0]
    assert out[dropped].abs().sum() == 0  # dropped tokens get nothing (the residual carries them)
    torch.testing.assert_close(out[~dropped], gate[0, ~dropped] * moe.experts[0](x[~dropped]))
    assert float(moe.dropped_fraction) == pytest.approx(12 / 16)
    moe.eval()
    torch.testing.assert_close(moe(x), gate[0] * moe.experts[0](x))
    assert float(moe.dropped_fraction) == 0.0


def test_router_z_loss_is_mean_squared_logsumexp():
    moe = _moe(num_experts=4, top_k=2)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    moe.double()(x)
    with torch.no_grad():
        logits = x @ moe.router.weight.t()  # (2, 5, 4)
    expected = sum(float(torch.log(torch.exp(logits[b, t]).sum())) ** 2 for b in range(2) for t in range(5)) / 10
    assert float(moe.z_loss) == pytest.approx(expected, rel=1e-6)  # the router runs in float32


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


def _moe_lm():
    torch.manual_seed(0)
    model = mmzoo.create_model("gpt_tiny_moe", vocab_size=256, context_length=48).double()
    with torch.no_grad():
        for m in model.moe_layers:
            m.router.weight.normal_(std=1.0)  # confident, unbalanced routers: capacity binds in training
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_moe_lm_is_causal_changing_the_last_token_changes_no_earlier_logit(mode):
    model = _moe_lm().train(mode == "train")
    a = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[:, -1] = (a[:, -1] + 1) % 256
    with torch.no_grad():
        la = model(a).logits
        dropped = [float(m.dropped_fraction) for m in model.moe_layers]
        lb = model(b).logits
    if mode == "train":
        assert max(dropped) > 0.05  # tokens are dropped, by a rule that looks only at the past
    else:
        assert max(dropped) == 0.0
    torch.testing.assert_close(la[:, :-1], lb[:, :-1], rtol=0, atol=1e-12)
    assert not torch.allclose(la[:, -1], lb[:, -1])


def test_moe_lm_cached_decoding_equals_the_full_forward():
    model = _moe_lm().eval()
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens).logits
        forward, _, _ = model.decoder_step_fns()
        pieces = [forward(tokens[:, :7])] + [forward(tokens[:, i:i + 1]) for i in range(7, 30)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)
    prompt = tokens[:, :5]
    assert torch.equal(model.generate(prompt, 20), model.generate(prompt, 20, use_cache=False))


def test_moe_lm_z_loss_option():
    model = _moe_lm().train()
    tokens = torch.randint(0, 256, (2, 16))
    base = model(tokens).aux_loss
    lb = sum(m.aux_loss for m in model.moe_layers) / 2
    z = sum(m.z_loss for m in model.moe_layers) / 2
    torch.testing.assert_close(base, 0.01 * lb)
    model.cfg.moe_z_loss_weight = 1e-3
    torch.testing.assert_close(model(tokens).aux_loss, 0.01 * lb + 1e-3 * z)
