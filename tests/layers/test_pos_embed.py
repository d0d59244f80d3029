"""Position encodings: RoPE relative-position property, sinusoidal tables, resampling, patch embedding."""
from __future__ import annotations

import math

import pytest
import torch
from timm.layers import resample_abs_pos_embed as timm_resample

from mmzoo.layers import (Attention, PatchEmbed, RotaryEmbedding, resample_abs_pos_embed, sincos_2d_pos_embed,
                          sinusoidal_pos_embed)

# -- RoPE ---------------------------------------------------------------------------------------------


def _dot_at(rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """q.k after rotating q to position m and k to position n (vectors of shape (Dh,))."""
    return (rope(q.view(1, 1, 1, -1), offset=m) * rope(k.view(1, 1, 1, -1), offset=n)).sum()


@pytest.mark.parametrize("m, n, s", [(0, 0, 5), (3, 7, 11), (9, 2, 100), (0, 40, 3000)])
def test_rope_scores_depend_only_on_relative_position(m, n, s):
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, max_len=64)  # s = 3000 also exercises extending the table
    q, k = torch.randn(16), torch.randn(16)
    # fp32 angles: pos * freq loses ~pos * 6e-8 rad, hence the tolerance at large positions
    torch.testing.assert_close(_dot_at(rope, q, k, m, n), _dot_at(rope, q, k, m + s, n + s),
                               atol=1e-5, rtol=1e-5)
    # and it does depend on the relative position
    assert not torch.allclose(_dot_at(rope, q, k, m, n), _dot_at(rope, q, k, m, n + 1))


def test_rope_offset_shift_keeps_attention_scores():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    scores = rope(q) @ rope(k).transpose(-1, -2)
    shifted = rope(q, offset=13) @ rope(k, offset=13).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, atol=1e-4, rtol=1e-4)
    # in the attention module: the same sequence at another position_offset gives the same output
    attn = Attention(32, 4, rope=RotaryEmbedding(8), fused_attn=False).eval()
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, is_causal=True), attn(x, is_causal=True, position_offset=21),
                                   atol=1e-5, rtol=1e-5)


def test_rope_values_and_norm():
    rope = RotaryEmbedding(4, base=100.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4).expand(1, 1, 3, 4)
    y = rope(x)
    # channel i pairs with i + Dh/2; angle = pos * base^(-2i/Dh)
    for pos in range(3):
        for i, (a, b) in enumerate([(1.0, 3.0), (2.0, 4.0)]):
            theta = pos * 100.0 ** (-2 * i / 4)
            assert y[0, 0, pos, i].item() == pytest.approx(a * math.cos(theta) - b * math.sin(theta), abs=1e-5)
            assert y[0, 0, pos, i + 2].item() == pytest.approx(b * math.cos(theta) + a * math.sin(theta), abs=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0 is the identity


def test_rope_extends_its_table():
    short, long = RotaryEmbedding(8, max_len=4), RotaryEmbedding(8, max_len=64)
    x = torch.randn(1, 2, 10, 8)
    torch.testing.assert_close(short(x, offset=3), long(x, offset=3))
    assert short.cos_cached.shape[0] >= 13
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)


# -- fixed tables -------------------------------------------------------------------------------------


def test_sinusoidal_table_matches_formula():
    num_pos, dim = 12, 10
    pe = sinusoidal_pos_embed(num_pos, dim)
    assert pe.shape == (num_pos, dim) and pe.dtype == torch.float32
    for pos in range(num_pos):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_pos_embed(4, 7)


def test_sincos_2d_shape_and_values():
    h, w, dim = 3, 5, 16
    pe = sincos_2d_pos_embed((h, w), dim)
    assert pe.shape == (h * w, dim)
    q = dim // 4
    omega = [10000 ** (-k / q) for k in range(q)]
    for r in range(h):
        for c in range(w):
            row = pe[r * w + c]  # raster order
            expected = ([math.sin(r * o) for o in omega] + [math.cos(r * o) for o in omega]
                        + [math.sin(c * o) for o in omega] + [math.cos(c * o) for o in omega])
            torch.testing.assert_close(row, torch.tensor(expected), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed((2, 2), 6)


# -- resampling learned tables ------------------------------------------------------------------------


def test_resample_identity_when_same_size():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_abs_pos_embed(pe, (4, 4)) is pe
    assert resample_abs_pos_embed(pe, (4, 4), old_size=(4, 4)) is pe


@pytest.mark.parametrize("prefix, old, new", [(1, (4, 4), (6, 6)), (0, (4, 4), (2, 3)), (2, (3, 5), (6, 4))])
def test_resample_keeps_prefix_and_matches_timm(prefix, old, new):
    torch.manual_seed(0)
    pe = torch.randn(1, prefix + old[0] * old[1], 8)
    out = resample_abs_pos_embed(pe, new, old_size=old if old[0] != old[1] else None, num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + new[0] * new[1], 8)
    torch.testing.assert_close(out[:, :prefix], pe[:, :prefix])
    ref = timm_resample(pe, list(new), list(old), num_prefix_tokens=prefix)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_resample_constant_grid_stays_constant():
    pe = torch.cat([torch.zeros(1, 1, 4), torch.ones(1, 9, 4) * torch.arange(4.0)], dim=1)
    out = resample_abs_pos_embed(pe, (5, 5))
    torch.testing.assert_close(out[0, 1:], torch.arange(4.0).expand(25, 4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="square grid"):
        resample_abs_pos_embed(torch.randn(1, 1 + 6, 4), (3, 3))


# -- patch embedding ----------------------------------------------------------------------------------


def test_patch_embed_shapes_and_errors():
    pe = PatchEmbed(img_size=(16, 24), patch_size=4, in_chans=3, embed_dim=8)
    assert pe.grid_size == (4, 6) and pe.num_patches == 24
    x = torch.randn(2, 3, 16, 24)
    out = pe(x)
    assert out.shape == (2, 24, 8)
    # token order is raster order of the patch grid
    conv = pe.proj(x)  # (B, D, 4, 6)
    torch.testing.assert_close(out[:, 1 * 6 + 2], conv[:, :, 1, 2])
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 24\).*\(2, 3, 16, 16\)"):
        pe(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 24\)"):
        pe(torch.randn(2, 1, 16, 24))
    with pytest.raises(ValueError, match="divisible"):
        PatchEmbed(img_size=30, patch_size=4)
    dyn = PatchEmbed(img_size=16, patch_size=4, embed_dim=8, dynamic_img_size=True)
    assert dyn(torch.randn(1, 3, 8, 12)).shape == (1, 6, 8)
    with pytest.raises(ValueError, match="not divisible"):
        dyn(torch.randn(1, 3, 9, 12))
