"""Point-BERT's point patch mixing (section 3.3): the mixing of patches, and the mixing contrast against
its formula written out term by term in float64 (r = 1 is MoCo's InfoNCE)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmzoo.losses import PointPatchMixLoss, mix_point_patches, moco_infonce

DT = torch.float64


def _unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=DT), dim=-1)


def _infonce_by_hand(q, k, queue, t) -> float:
    """-log exp(q.k / t) / (exp(q.k / t) + sum_n exp(q.n / t)), one query, plain floats."""
    dot = lambda a, b: sum(float(x) * float(y) for x, y in zip(a, b))  # noqa: E731
    pos = math.exp(dot(q, k) / t)
    return -math.log(pos / (pos + sum(math.exp(dot(q, n) / t) for n in queue)))


def test_moco_infonce_matches_formula():
    q, k, queue = _unit(3, 4, seed=0), _unit(3, 4, seed=1), _unit(5, 4, seed=2)
    per = moco_infonce(q, k, queue, 0.2, reduction="none")
    ref = [_infonce_by_hand(q[i], k[i], queue, 0.2) for i in range(3)]
    torch.testing.assert_close(per, torch.tensor(ref, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(moco_infonce(q, k, queue, 0.2), torch.tensor(sum(ref) / 3, dtype=DT), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="queue"):
        moco_infonce(q, k, queue[:, :3], 0.2)


def test_mixing_contrast_matches_formula():
    """r * InfoNCE(q, k_A) + (1 - r) * InfoNCE(q, k_B), averaged, both over the same queue."""
    q, ka, kb, queue = _unit(3, 4, seed=3), _unit(3, 4, seed=4), _unit(3, 4, seed=5), _unit(5, 4, seed=6)
    r = torch.tensor([0.25, 0.5, 0.875], dtype=DT)
    t = 0.1
    loss = PointPatchMixLoss(t)(q, ka, kb, r, queue)
    ref = sum(float(r[i]) * _infonce_by_hand(q[i], ka[i], queue, t)
              + (1 - float(r[i])) * _infonce_by_hand(q[i], kb[i], queue, t) for i in range(3)) / 3
    torch.testing.assert_close(loss, torch.tensor(ref, dtype=DT), rtol=0, atol=1e-12)


def test_ratio_one_is_the_moco_term():
    q, ka, kb, queue = _unit(4, 8, seed=7), _unit(4, 8, seed=8), _unit(4, 8, seed=9), _unit(6, 8, seed=10)
    mix = PointPatchMixLoss(0.07)
    ones, zeros = torch.ones(4, dtype=DT), torch.zeros(4, dtype=DT)
    ref_a = sum(_infonce_by_hand(q[i], ka[i], queue, 0.07) for i in range(4)) / 4
    ref_b = sum(_infonce_by_hand(q[i], kb[i], queue, 0.07) for i in range(4)) / 4
    torch.testing.assert_close(mix(q, ka, kb, ones, queue), torch.tensor(ref_a, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(mix(q, ka, kb, ones, queue), moco_infonce(q, ka, queue, 0.07), rtol=0, atol=0)
    torch.testing.assert_close(mix(q, ka, kb, zeros, queue), torch.tensor(ref_b, dtype=DT), rtol=0, atol=1e-12)


def test_mix_point_patches_moves_patches_with_centres_and_tokens():
    B, G, K = 5, 8, 4
    g = torch.Generator().manual_seed(0)
    nb = torch.randn(B, G, K, 3, generator=g)
    ce = torch.randn(B, G, 3, generator=g)
    tok = torch.randint(0, 100, (B, G), generator=g)
    ratio = torch.tensor([0.0, 0.3, 0.5, 0.8, 1.0])
    mix = mix_point_patches(nb, ce, ratio, tokens=tok, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mix.partner, torch.tensor([4, 3, 2, 1, 0]))  # the batch reversed
    keep = torch.tensor([0, 2, 4, 6, 8])  # round(r * G)
    assert torch.equal(mix.from_self.sum(1), keep)
    torch.testing.assert_close(mix.ratio, keep / G)
    for i in range(B):
        for j in range(G):
            src = i if mix.from_self[i, j] else int(mix.partner[i])
            assert torch.equal(mix.neighborhood[i, j], nb[src, j])
            assert torch.equal(mix.centers[i, j], ce[src, j])
            assert mix.tokens[i, j] == tok[src, j]
    # r = 1 is the cloud itself, r = 0 its partner
    assert torch.equal(mix.neighborhood[4], nb[4]) and torch.equal(mix.neighborhood[0], nb[4])
    # which patches a cloud keeps is random
    other = mix_point_patches(nb, ce, ratio, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other.from_self, mix.from_self) and other.tokens is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_point_patches(nb, ce, torch.full((B,), 1.5))
