"""Positional encodings: sinusoidal (1-D), 2-D sin-cos, learned (resampling helper) and RoPE."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_pos_embed(num_pos: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sin/cos table of "Attention Is All You Need" (sec. 3.5): (num_pos, dim).

    Even channels hold sin(pos / base^(2i/dim)), odd channels cos of the same angle.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal position embedding needs an even dim, got {dim}")
    pos = torch.arange(num_pos, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos * inv_freq  # (num_pos, dim/2)
    pe = torch.empty(num_pos, dim, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.float()


def sincos_2d_pos_embed(grid_size: Sequence[int], dim: int, base: float = 10000.0) -> torch.Tensor:
    """2-D sin-cos table (MAE / "Simple ViT"): half the channels encode rows, half columns.

    Returns (H*W, dim), rows in raster order.
    """
    h, w = grid_size
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    inv_freq = base ** (-torch.arange(0, dim // 2, 2, dtype=torch.float64) / (dim // 2))

    def enc(p: torch.Tensor) -> torch.Tensor:
        a = p.reshape(-1, 1) * inv_freq  # (H*W, dim/4)
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([enc(gy), enc(gx)], dim=1).float()


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: Sequence[int],
    old_size: Optional[Sequence[int]] = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Interpolate a learned (1, prefix + H*W, C) grid embedding to a new (H', W') grid.

    Prefix (class / register) tokens are kept as they are. ``old_size`` defaults to a square grid.
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.sqrt(n))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position tokens; pass old_size")
        old_size = (side, side)
    new_size, old_size = tuple(new_size), tuple(old_size)
    if new_size == old_size:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dtype = grid.dtype
    grid = grid.reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2).float()  # (1, C, H, W)
    grid = F.interpolate(grid, size=new_size, mode=mode, align_corners=False, antialias=mode != "nearest")
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], -1).to(dtype)  # (1, H'W', C)
    return torch.cat([prefix, grid], dim=1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer, Su et al. 2021) on the last dim of (B, H, L, Dh) tensors.

    Pairs channel ``i`` with ``i + Dh/2`` (the GPT-NeoX / LLaMA "rotate half" layout) and rotates
    each pair by ``pos * base^(-2i/Dh)``, so the q.k product depends only on relative position.

    Args:
        head_dim: per-head width (even).
        base: frequency base (10000 in the paper).
        max_len: positions precomputed; longer inputs extend the table on the fly.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_len: int = 2048) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_len)

    def _build(self, length: int) -> None:
        t = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(t, self.inv_freq)  # (L, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (L, Dh)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        L = x.shape[-2]
        if offset + L > self.cos_cached.shape[0]:
            self._build(max(offset + L, 2 * self.cos_cached.shape[0]))
        cos = self.cos_cached[offset:offset + L].to(x.dtype)  # (L, Dh)
        sin = self.sin_cached[offset:offset + L].to(x.dtype)
        return x * cos + self.rotate_half(x) * sin
