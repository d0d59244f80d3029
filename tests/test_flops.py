"""mmzoo.flop_counter counts the fused CPU attention kernel like the reference path's matmuls."""
from __future__ import annotations

import torch

from mmzoo.flops import flop_counter
from mmzoo.layers import Attention


def _forward_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), flop_counter() as fc:
        module(x)
    return fc.get_total_flops()


def test_fused_attention_flops_equal_reference_path():
    torch.manual_seed(0)
    B, L, dim, heads = 2, 96, 64, 4
    x = torch.randn(B, L, dim)
    fused = Attention(dim, heads, fused_attn=True).eval()
    ref = Attention(dim, heads, fused_attn=False).eval()
    ref.load_state_dict(fused.state_dict())
    f_fused, f_ref = _forward_flops(fused, x), _forward_flops(ref, x)
    projections = 2 * B * L * dim * (3 * dim) + 2 * B * L * dim * dim  # qkv + proj
    attention = 2 * 2 * B * L * L * dim  # q k^T and p v over all heads
    assert f_ref == projections + attention
    assert f_fused == f_ref  # the CPU flash kernel is not counted as zero


def test_fused_attention_backward_is_counted():
    q = torch.randn(1, 2, 64, 32, requires_grad=True)
    with flop_counter() as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    forward = 4 * 2 * 64 * 64 * 32
    assert fc.get_total_flops() > 2 * forward  # backward (2.5x forward in torch's formula) included
