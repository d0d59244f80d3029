"""The one attention module of mmzoo.

Self- and cross-attention with multi-head (MHA), grouped-query (GQA) and multi-query (MQA) heads,
causal and key-padding masks, a KV cache for incremental decoding, optional qk-norm and rotary
positions. Two paths compute the same thing:

* fused: ``F.scaled_dot_product_attention`` (FlashAttention / memory-efficient kernels on GPU,
  the flash kernel on CPU);
* reference: the explicit ``softmax(q k^T / sqrt(d) + mask) v``, easy to read and to debug.

The path is chosen per module (``fused_attn=True/False``) or by the global default
(:func:`use_fused_attn`, :func:`set_fused_attn`, env ``MMZOO_FUSED_ATTN=0`` forces reference).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pos_embed import RotaryEmbedding

_FUSED_ATTN = os.environ.get("MMZOO_FUSED_ATTN", "1") not in ("0", "false", "False")


def use_fused_attn() -> bool:
    """Global default for :class:`Attention` modules built with ``fused_attn=None``."""
    return _FUSED_ATTN


def set_fused_attn(enable: bool) -> None:
    """Change the global default path (modules that chose a path explicitly keep it)."""
    global _FUSED_ATTN
    _FUSED_ATTN = bool(enable)


class KVCache:
    """Keys and values of past positions for one attention layer (incremental decoding).

    Self-attention appends the new keys/values at every step; cross-attention stores the keys/values
    of the (fixed) context once and reuses them (``static=True``).
    """

    def __init__(self, static: bool = False) -> None:
        self.static = static
        self.k: Optional[torch.Tensor] = None  # (B, Hkv, S, Dh)
        self.v: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.static:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (roll back rejected tokens of speculative decoding)."""
        if self.k is not None and not self.static:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


def build_attn_mask(
    q_len: int,
    k_len: int,
    is_causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    device: Optional[torch.device] = None,
) -> Optional[torch.Tensor]:
    """Combine mask kinds into one boolean mask (True = may attend), broadcastable to (B, H, Lq, Lk).

    ``key_padding_mask`` is (B, Lk) with True at *padding* positions (``nn.MultiheadAttention``'s
    convention). Causal masks are aligned bottom-right, so queries appended after ``k_len - q_len``
    cached positions see exactly the past and themselves. A float ``attn_mask`` is not combined: it is
    returned as an additive bias when it is the only mask.
    """
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            if is_causal or key_padding_mask is not None:
                raise ValueError("a float attn_mask cannot be combined with is_causal/key_padding_mask; "
                                 "pass a boolean attn_mask (True = attend)")
            return attn_mask
        mask = attn_mask
    if is_causal:
        # query i (absolute position k_len - q_len + i) sees keys j <= that position
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)
        mask = causal if mask is None else mask & causal
    if key_padding_mask is not None:
        keep = ~key_padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Lk)
        mask = keep if mask is None else mask & keep
    return mask


class Attention(nn.Module):
    """Multi-head attention, self or cross, MHA / GQA / MQA.

    Args:
        dim: model width of the queries (and output).
        num_heads: query heads; ``dim`` must be divisible by it.
        num_kv_heads: key/value heads (``None`` = ``num_heads`` (MHA), 1 = MQA, else GQA).
        qkv_bias: bias on the input projections.
        qk_norm: normalise queries and keys per head (ViT-22B) with ``norm_layer``.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
        norm_layer: norm used by qk-norm.
        cross_attn: keys/values come from a context sequence instead of the input.
        context_dim: width of the context (cross-attention), default ``dim``.
        rope: rotary position embedding applied to queries and keys (self-attention).
        fused_attn: force the fused (True) or reference (False) path; ``None`` follows the global default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        num_kv_heads: Optional[int] = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        cross_attn: bool = False,
        context_dim: Optional[int] = None,
        rope: Optional[RotaryEmbedding] = None,
        fused_attn: Optional[bool] = None,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.cross_attn = cross_attn
        self.fused_attn = fused_attn
        kv_dim = self.num_kv_heads * self.head_dim
        if cross_attn:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim or dim, 2 * kv_dim, bias=qkv_bias)
        else:
            # one fused projection, laid out [q | k | v] like timm's `qkv` (checkpoint-compatible for MHA)
            self.qkv = nn.Linear(dim, dim + 2 * kv_dim, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope
        # optional learnable key/value prefixes (prefix tuning, mmzoo.peft): a module called as
        # ``prefix(k, v) -> (k, v)`` that prepends P positions to the (B, Hkv, S, Dh) keys and values
        self.prefix: Optional[nn.Module] = None

    def _use_fused(self) -> bool:
        return use_fused_attn() if self.fused_attn is None else self.fused_attn

    def _project(self, x: torch.Tensor, context: Optional[torch.Tensor], kv_cache: Optional[KVCache]):
        B, L, _ = x.shape
        if self.cross_attn:
            q = self.q(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
            if kv_cache is not None and kv_cache.static and kv_cache.k is not None:
                return q, kv_cache.k, kv_cache.v, True
            if context is None:
                raise ValueError("cross-attention needs a `context` tensor of shape (B, S, context_dim)")
            S = context.shape[1]
            kv = self.kv(context).view(B, S, 2, self.num_kv_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, Hkv, S, Dh)
            return q, k, v, False
        qkv = self.qkv(x)
        q, k, v = qkv.split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                             self.num_kv_heads * self.head_dim], dim=-1)
        q = q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
        k = k.view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, Dh)
        v = v.view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v, False

    def _add_prefix(self, k, v, key_padding_mask, attn_mask, attn_bias):
        """Prepend the prefix keys/values; masks gain P always-visible columns in front (a causal mask is
        bottom-right aligned, so every query also sees all prefix positions). An additive position bias
        (T5's relative bias) gains P zero columns: prefix positions hold no position, only content."""
        S = k.shape[2]
        k, v = self.prefix(k, v)  # (B, Hkv, P + S, Dh)
        P = k.shape[2] - S
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask.to(torch.bool), (P, 0), value=False)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (P, 0), value=True if attn_mask.dtype == torch.bool else 0.0)
        if attn_bias is not None:
            attn_bias = F.pad(attn_bias, (P, 0), value=0.0)
        return k, v, key_padding_mask, attn_mask, attn_bias

    def forward(
        self,
        x: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        kv_cache: Optional[KVCache] = None,
        position_offset: Optional[int] = None,
        attn_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, L, dim) to itself or to ``context`` (B, S, context_dim).

        Args:
            attn_mask: boolean (True = attend) or additive float mask broadcastable to (B, H, L, S).
            key_padding_mask: (B, S) boolean, True at padding keys (over the full cached length).
            is_causal: causal self-attention (bottom-right aligned when a cache holds past keys).
            kv_cache: a :class:`KVCache` updated in place (incremental decoding).
            position_offset: position of the first query for RoPE (default: the cache length).
            attn_bias: additive float bias broadcastable to (B, H, L, S) (T5's relative positions),
                combined with the boolean masks above.
        Returns:
            (B, L, dim)
        """
        if x.dim() != 3:
            raise ValueError(f"Attention expects x of shape (B, L, dim), got {tuple(x.shape)}")
        B, L, C = x.shape
        past = kv_cache.length if (kv_cache is not None and not self.cross_attn) else 0
        q, k, v, cached = self._project(x, context, kv_cache)
        q, k = self.q_norm(q), (k if cached else self.k_norm(k))
        if self.rope is not None and not self.cross_attn:
            offset = past if position_offset is None else position_offset
            q = self.rope(q, offset)
            k = self.rope(k, offset)
        if kv_cache is not None and not cached:
            k, v = kv_cache.update(k, v)
        if self.prefix is not None:
            k, v, key_padding_mask, attn_mask, attn_bias = self._add_prefix(k, v, key_padding_mask, attn_mask,
                                                                            attn_bias)
        S = k.shape[2]
        gqa = self.num_kv_heads != self.num_heads
        causal = is_causal and not self.cross_attn
        dropout_p = self.attn_drop.p if self.training else 0.0
        if attn_bias is not None:
            # fold every boolean mask into the bias: one additive mask for both paths
            mask = build_attn_mask(L, S, causal, key_padding_mask, attn_mask, device=x.device)
            bias = attn_bias.to(q.dtype)
            attn_mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
            causal, key_padding_mask = False, None

        if self._use_fused():
            # GQA/MQA: SDPA broadcasts each key/value head over its group of query heads itself
            # (enable_gqa), without materialising repeated keys/values
            if causal and attn_mask is None and key_padding_mask is None and L == S:
                # no dense mask: SDPA keeps its flash kernel
                o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
            else:
                if causal and L == 1:
                    causal = False  # one new query at the end sees every cached key
                # key padding alone stays a (B, 1, 1, S) mask, which the CPU flash kernel accepts
                mask = build_attn_mask(L, S, causal, key_padding_mask, attn_mask, device=x.device)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
        else:
            if gqa:
                # GQA/MQA: each group of query heads shares one key/value head
                rep = self.num_heads // self.num_kv_heads
                k = k.repeat_interleave(rep, dim=1)  # (B, H, S, Dh)
                v = v.repeat_interleave(rep, dim=1)
            mask = build_attn_mask(L, S, causal, key_padding_mask, attn_mask, device=x.device)
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, L, S)
            if mask is not None:
                if mask.dtype == torch.bool:
                    attn = attn.masked_fill(~mask, float("-inf"))
                else:
                    attn = attn + mask
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            o = attn @ v  # (B, H, L, Dh)
        o = o.transpose(1, 2).reshape(B, L, C)  # (B, L, dim)
        return self.proj_drop(self.proj(o))
