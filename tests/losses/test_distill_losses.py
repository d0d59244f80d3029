"""Distillation losses against float64 loops written from the papers' definitions, and the task=distill
options that select them."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from mmzoo.layers import Attention
from mmzoo.losses.distill import (activation_boundary_loss, attention_map_loss, gaussian_mmd2, nst_loss,
                                  rkd_angle_loss, rkd_distance_loss)
from mmzoo.tasks.distill import attention_probs
from mmzoo.training import train


def _huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_gaussian_mmd_by_hand():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0]], dtype=torch.float64)
    k = lambda d2: math.exp(-d2 / 2)  # sigma = 1
    ref = (2 * k(0) + 2 * k(1)) / 4 + k(0) - 2 * (k(4) + k(1)) / 2
    assert gaussian_mmd2(x, y).item() == pytest.approx(ref, abs=1e-14)
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ref = 0.0
    for sig in (0.5, 2.0):
        kk = lambda u, v: math.exp(-float(((u - v) ** 2).sum()) / (2 * sig * sig))
        ref += (sum(kk(u, v) for u in a for v in a) / 25 + sum(kk(u, v) for u in b for v in b) / 16
                - 2 * sum(kk(u, v) for u in a for v in b) / 20)
    assert gaussian_mmd2(a, b, [0.5, 2.0]).item() == pytest.approx(ref, abs=1e-12)
    assert gaussian_mmd2(a, a).abs().item() < 1e-12


def test_nst_compares_normalised_channels():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)
    ref = 0.0
    for b in range(2):
        fs = s[b].t() / s[b].t().norm(dim=1, keepdim=True)
        ft = t[b].t() / t[b].t().norm(dim=1, keepdim=True)
        ref += gaussian_mmd2(fs, ft).item() / 2
    assert nst_loss(s, t).item() == pytest.approx(ref, abs=1e-12)
    assert nst_loss(t, 3.0 * t).abs().item() < 1e-12  # scale-free: the same selectivity patterns
    with pytest.raises(ValueError, match="equal B and L"):
        nst_loss(s, t[:, :4])


def test_rkd_distance_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    ds = [float((s[i] - s[j]).norm()) for i, j in pairs]
    dt = [float((t[i] - t[j]).norm()) for i, j in pairs]
    ms, mt = sum(ds) / len(ds), sum(dt) / len(dt)
    ref = sum(_huber(a / ms, b / mt) for a, b in zip(ds, dt)) / len(pairs)
    assert rkd_distance_loss(s, t).item() == pytest.approx(ref, abs=1e-12)
    assert rkd_distance_loss(2.0 * t, t).abs().item() < 1e-12  # relative distances: scale-free
    s.requires_grad_(True)
    rkd_distance_loss(s, t).backward()
    assert torch.isfinite(s.grad).all()


def test_rkd_angle_by_hand():
    torch.manual_seed(1)
    s, t = torch.randn(4, 3, dtype=torch.float64), 5 * torch.randn(4, 2, dtype=torch.float64)

    def cos(e, i, j, k):
        u, v = e[i] - e[j], e[k] - e[j]
        return float(u @ v / (u.norm() * v.norm()))

    trip = [p for p in itertools.product(range(4), repeat=3) if len(set(p)) == 3]
    ref = sum(_huber(cos(s, *p), cos(t, *p)) for p in trip) / len(trip)
    assert rkd_angle_loss(s, t).item() == pytest.approx(ref, abs=1e-12)
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    assert rkd_angle_loss(3 * s @ rot + 1, s).abs().item() < 1e-12  # angles survive rotation, scale, shift


def test_attention_map_kl_by_hand():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64).softmax(-1)
    s = torch.randn(2, 3, 4, 5, dtype=torch.float64).softmax(-1)
    ref = sum(float((t[b, h, q] * (t[b, h, q].log() - s[b, h, q].log())).sum())
              for b in range(2) for h in range(3) for q in range(4)) / 24
    assert attention_map_loss(s, t).item() == pytest.approx(ref, abs=1e-12)
    s1 = torch.randn(2, 1, 4, 5, dtype=torch.float64).softmax(-1)  # other head count: head means
    tm = t.mean(1)
    ref = sum(float((tm[b, q] * (tm[b, q].log() - s1[b, 0, q].log())).sum()) for b in range(2) for q in range(4)) / 8
    assert attention_map_loss(s1, t).item() == pytest.approx(ref, abs=1e-12)


def test_activation_boundary_by_hand():
    s = torch.tensor([[2.0, 0.5, -0.2, -3.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.3, 0.0, -1.0]], dtype=torch.float64)
    # on, on, off (t = 0 is not active), off; margin 1: 0, (1 - 0.5)^2, (1 - 0.2)^2, 0
    assert activation_boundary_loss(s, t).item() == pytest.approx((0.25 + 0.64) / 4, abs=1e-15)
    assert activation_boundary_loss(3 * t.sign() + 0.0 * t, t.clamp(min=-1)).item() == pytest.approx(
        (1 - 0) ** 2 / 4, abs=1e-15)  # the t = 0 entry with s = 0 still pays the margin


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_probs_reproduce_the_module(kv_heads):
    torch.manual_seed(0)
    a = Attention(16, num_heads=4, num_kv_heads=kv_heads, fused_attn=False).eval()
    x = torch.randn(2, 5, 16)
    p = attention_probs(a, x)
    _, _, v, _ = a._project(x, None, None)
    v = v.repeat_interleave(4 // kv_heads, dim=1)
    torch.testing.assert_close(a.proj((p @ v).transpose(1, 2).reshape(2, 5, 16)), a(x))


def test_distill_task_with_every_match(train_cfg):
    teacher_cfg = train_cfg("model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=32",
                            "debug=fdr", run="teacher")
    train(teacher_cfg)
    ckpt = Path(teacher_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = train_cfg("model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=32", "debug=fdr",
                    "task=distill", f"task.teacher={ckpt}", "+model.embed_dim=32", "+model.num_heads=1",
                    "task.feature_layers=[[blocks.1,blocks.1]]", "task.feature_loss=mmd",
                    "task.rkd_distance_weight=25", "task.rkd_angle_weight=50",
                    "task.attention_layers=[[blocks.0.attn,blocks.1.attn]]", run="student")
    assert train(cfg)["global_step"] == 1
    with pytest.raises((ValueError, InstantiationException), match="feature_loss must be one of"):
        train(train_cfg("model=vit", "model.name=vit_nano_patch4_32", "data=digits", "debug=fdr", "task=distill",
                        f"task.teacher={ckpt}", "task.feature_loss=cosine", run="bad"))
