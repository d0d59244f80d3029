"""Quantization against hand computation: affine quantize / dequantize, k-means codebooks (Lloyd fixed point,
uint8 storage), the integer W8A8 linear against its float64 reference and the float layer within the error
bound, and SmoothQuant's exact equivalence before quantization."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from mmzoo.compress import (Int8Linear, KMeansLinear, affine_qparams, calibrate, dequantize_affine, int8_matmul,
                            kmeans_1d, model_bytes, quantize_affine, quantize_int8, quantize_kmeans, smooth_quant)
from mmzoo.compress.quantization import pack_indices, qrange, unpack_indices
from mmzoo.models import create_model


def test_affine_symmetric_per_tensor_by_hand():
    x = torch.tensor([-1.0, 0.5, 2.54, -0.02])
    s, z = affine_qparams(x, bits=8, symmetric=True)
    assert qrange(8, True) == (-127, 127)
    assert s.item() == pytest.approx(2.54 / 127) and z.item() == 0
    q = quantize_affine(x, s, z, 8, True)
    assert q.dtype == torch.int8
    assert q.tolist() == [-50, 25, 127, -1]  # -1/0.02 = -50, 0.5/0.02 = 25, -0.02/0.02 = -1
    torch.testing.assert_close(dequantize_affine(q, s, z), torch.tensor([-1.0, 0.5, 2.54, -0.02]), atol=1e-6, rtol=0)


def test_affine_asymmetric_by_hand():
    x = torch.tensor([0.0, 1.0, 2.55, 0.3])  # r_min = 0, r_max = 2.55: S = 2.55 / 255 = 0.01, Z = -128
    s, z = affine_qparams(x, bits=8, symmetric=False)
    assert s.item() == pytest.approx(0.01) and z.item() == -128
    q = quantize_affine(x, s, z, 8, False)
    assert q.tolist() == [-128, -28, 127, -98]
    # a range not containing 0 is widened to contain it; values outside the range clamp
    s, z = affine_qparams(torch.tensor([1.0, 3.0]), bits=4, symmetric=False)  # [0, 3] on [-8, 7]: S = 0.2, Z = -8
    assert s.item() == pytest.approx(0.2) and z.item() == -8
    assert quantize_affine(torch.tensor([5.0, -1.0]), s, z, 4, False).tolist() == [7, -8]
    # a negative-only range: r_max = 0, Z = round(-8 + 2 / 0.1333) = 7
    s, z = affine_qparams(torch.tensor([-2.0, -1.0]), bits=4, symmetric=False)
    assert s.item() == pytest.approx(2 / 15) and z.item() == 7


def test_affine_per_channel_by_hand():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, -0.4], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s, z = affine_qparams(w, bits=4, symmetric=True, axis=0)  # one scale per row: max|w| / 7
    assert s.shape == (3, 1) and (z == 0).all()
    torch.testing.assert_close(s.flatten().double(), torch.tensor([2 / 7, 0.4 / 7, 1.0], dtype=torch.float64),
                               rtol=1e-6, atol=0)  # an all-zero channel gets S = 1
    q = quantize_affine(w, s, z, 4, True)
    ref = torch.round(w / s.double()).clamp(-7, 7)
    assert torch.equal(q.double(), ref)
    err = (dequantize_affine(q, s, z, torch.float64) - w).abs()
    assert (err <= s.double() / 2 + 1e-9).all()
    s_asym, z_asym = affine_qparams(w, bits=8, symmetric=False, axis=0)
    assert z_asym.flatten().tolist() == [round(-128 + 2.0 / (3.0 / 255)), round(-128 + 0.4 / (0.6 / 255)), -128]


def test_kmeans_is_a_lloyd_fixed_point_with_uint8_storage():
    torch.manual_seed(0)
    w = torch.randn(32, 24)
    for bits in (1, 2, 4):
        idx, codebook = kmeans_1d(w, bits)
        assert idx.dtype == torch.uint8 and idx.shape == w.shape and codebook.numel() == 2 ** bits
        rec = codebook[idx.long()]
        assert rec.unique().numel() <= 2 ** bits
        # every weight sits at its nearest centroid, every used centroid is the mean of its weights
        nearest = (w[..., None] - codebook).abs().argmin(-1)
        assert torch.equal(codebook[nearest], rec)
        for k in idx.unique().tolist():
            torch.testing.assert_close(codebook[k].double(), w[idx == k].double().mean(), rtol=0, atol=1e-6)
    idx, codebook = kmeans_1d(torch.tensor([0.0, 0.1, 0.9, 1.0, 0.95]), 1)  # by hand: {0, 0.1}, {0.9, 1, 0.95}
    torch.testing.assert_close(codebook, torch.tensor([0.05, 0.95]))
    assert idx.tolist() == [0, 0, 1, 1, 1]


def test_kmeans_linear_stores_indices_and_fine_tunes_centroids():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    q = KMeansLinear(lin, bits=2)
    assert q.indices.dtype == torch.uint8 and q.weight.unique().numel() <= 4
    x = torch.randn(5, 16)
    torch.testing.assert_close(q(x), x @ q.weight.t() + lin.bias)
    q(x).sum().backward()
    # the centroid gradient is the sum of the gradients of the weights that share it (Han et al. 2016)
    g_w = torch.ones(5, 8).t() @ x  # d sum(x W^T) / dW
    ref = torch.zeros(4).index_add_(0, q.indices.flatten().long(), g_w.flatten())
    torch.testing.assert_close(q.codebook.grad, ref)
    assert q.packed_bytes() == 16 * 8 * 2 // 8 + 4 * 4 + 8 * 4
    for bits in (2, 3, 8):
        idx = torch.randint(0, 2 ** bits, (37,), dtype=torch.uint8)
        assert torch.equal(unpack_indices(pack_indices(idx, bits), bits, 37), idx)


def test_int8_matmul_is_exact():
    a = torch.randint(-128, 128, (5, 37), dtype=torch.int8)
    b = torch.randint(-128, 128, (37, 3), dtype=torch.int8)
    out = int8_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long())


@pytest.mark.parametrize("activations,act_symmetric,per_channel",
                         [("static", False, True), ("static", True, False), ("dynamic", False, True)])
def test_w8a8_linear_matches_reference_and_error_bound(activations, act_symmetric, per_channel):
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    x = torch.randn(3, 7, 48) * 2 + 0.5
    q = Int8Linear(lin, per_channel=per_channel, activations=activations, act_symmetric=act_symmetric)
    assert q.weight_int8.dtype == torch.int8
    if activations == "static":
        q.set_activation_range(x.min().item(), x.max().item())
    y = q(x)
    # float64 reference on the same integers: S_x S_w (q_x - Z_x) q_w^T + b
    x2 = x.reshape(-1, 48).double()
    if activations == "static":
        s_x, z_x = q.act_scale.double(), q.act_zero_point.double()
    else:
        s_x, z_x = affine_qparams(x2, 8, act_symmetric, axis=0)
        s_x, z_x = s_x.double(), z_x.double()
    q_x = torch.round(x2 / s_x + z_x).clamp(*qrange(8, act_symmetric))
    w_hat = q.weight_scale.double()[:, None] * q.weight_int8.double()
    ref = (s_x * (q_x - z_x)) @ w_hat.t() + lin.bias.double()
    torch.testing.assert_close(y.double().reshape(-1, 20), ref, rtol=1e-5, atol=1e-5)
    # against the float layer: |y - y_fp| <= sum_i |x_i| |e_w| + |w_hat| |e_x|, |e| <= S / 2 (no clamping here)
    e_x = s_x / 2
    e_w = q.weight_scale.double()[:, None] / 2
    bound = x2.abs() @ e_w.expand(-1, 48).t() + e_x * w_hat.abs().sum(1)[None]
    err = (y.double().reshape(-1, 20) - lin(x).double().reshape(-1, 20)).abs()
    assert (err <= bound + 1e-5).all()
    assert err.max() > 0  # it did quantize


def test_weight_only_int8_and_model_transforms():
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_32").eval()
    x = torch.randn(4, 3, 32, 32)
    fp_bytes = model_bytes(model)
    cal = calibrate(model, [x])
    assert set(cal) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"}
    w8 = quantize_int8(copy.deepcopy(model))
    fc1 = w8.blocks[0].mlp.fc1
    assert isinstance(fc1, Int8Linear) and fc1.weight_int8.dtype == torch.int8
    xin = torch.randn(2, 64)
    torch.testing.assert_close(fc1(xin), xin @ fc1.dequantized_weight().t() + fc1.bias, rtol=1e-5, atol=1e-5)
    assert isinstance(w8.head, nn.Linear)
    assert model_bytes(w8) < 0.4 * fp_bytes
    w8a8 = quantize_int8(copy.deepcopy(model), "static", cal)
    assert (w8a8(x).argmax(-1) == model(x).argmax(-1)).float().mean() >= 0.75
    km = quantize_kmeans(copy.deepcopy(model), 4)
    assert isinstance(km.blocks[1].attn.qkv, KMeansLinear) and model_bytes(km) < 0.3 * fp_bytes
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(copy.deepcopy(model), "static")


def test_smoothquant_keeps_the_float_function():
    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_32").double().eval()
    with torch.no_grad():  # an outlier channel, the case SmoothQuant is for
        model.blocks[0].norm1.weight[3] = 30.0
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ref = model(x)
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    act_max = calibrate(copy.deepcopy(model), [x[:2]])["blocks.0.attn.qkv"]["absmax"].double()
    factors = smooth_quant(model, [x[:2]], alpha=0.5)
    assert set(factors) == {f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "mlp.fc1")}
    torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)
    s = factors["blocks.0.attn.qkv"].double()
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, before * s[None], rtol=1e-6, atol=0)
    assert s[3] == s.max()  # the outlier channel moved most of its scale into the weights
    # s_j = max|X_j|^a / max|W_j|^(1 - a) from the calibrated maxima
    torch.testing.assert_close(s, act_max.sqrt() / before.abs().amax(0).sqrt(), rtol=1e-6, atol=0)
    # the smoothed input of qkv has a flatter channel range than the original
    smoothed_max = calibrate(model, [x[:2]])["blocks.0.attn.qkv"]["absmax"].double()
    assert smoothed_max.max() / smoothed_max.median() < act_max.max() / act_max.median()
