"""The transformer block and encoder / decoder stacks built from it."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, KVCache
from .drop import DropPath, LayerScale
from .mlp import Mlp
from .pos_embed import RotaryEmbedding


class Block(nn.Module):
    """Transformer block: self-attention, optional cross-attention, feed-forward.

    Pre-norm (default): ``x = x + f(norm(x))`` for each sub-layer. Post-norm (original
    Transformer / BERT / wav2vec 2.0 base): ``x = norm(x + f(x))``.

    Args:
        dim: width.
        num_heads: attention heads.
        mlp_ratio: feed-forward inner width / dim.
        num_kv_heads: key/value heads (GQA / MQA), default = num_heads.
        qkv_bias: bias on attention input projections.
        qk_norm: per-head query/key normalisation.
        proj_drop: dropout after attention and MLP outputs.
        attn_drop: dropout on attention weights.
        init_values: LayerScale init (None = no LayerScale).
        drop_path: stochastic-depth probability of this block.
        act_layer: MLP activation.
        norm_layer: norm class.
        mlp_layer: feed-forward class (``Mlp``, ``SwiGLU``, ``GEGLU``...).
        cross_attn: add a cross-attention sub-layer after self-attention (decoders).
        context_dim: width of the cross-attention context, default dim.
        post_norm: post-norm residuals instead of pre-norm.
        rope: rotary embedding shared by the self-attention.
        fused_attn: force the attention path (None = global default).
        self_attn: the self-attention sub-layer; False leaves cross-attention and feed-forward only (a
            stream that attends to other streams but not within itself).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_kv_heads: Optional[int] = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: Optional[float] = None,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        mlp_layer: Callable[..., nn.Module] = Mlp,
        cross_attn: bool = False,
        context_dim: Optional[int] = None,
        post_norm: bool = False,
        rope: Optional[RotaryEmbedding] = None,
        fused_attn: Optional[bool] = None,
        self_attn: bool = True,
    ) -> None:
        super().__init__()
        if not (self_attn or cross_attn):
            raise ValueError("a Block needs self_attn or cross_attn")
        self.post_norm = post_norm
        attn_kw = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                       attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer, fused_attn=fused_attn)
        if self_attn:
            self.norm1 = norm_layer(dim)
            self.attn = Attention(dim, rope=rope, **attn_kw)
            self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
            self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        else:
            self.attn = None
        if cross_attn:
            self.norm_cross = norm_layer(dim)
            self.cross_attn = Attention(dim, cross_attn=True, context_dim=context_dim, **attn_kw)
            self.ls_cross = LayerScale(dim, init_values) if init_values else nn.Identity()
            self.drop_path_cross = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        else:
            self.cross_attn = None
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _residual(self, x: torch.Tensor, norm: nn.Module, fn: Callable, ls: nn.Module, dp: nn.Module):
        if self.post_norm:
            return norm(x + dp(ls(fn(x))))
        return x + dp(ls(fn(norm(x))))

    def forward(
        self,
        x: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        context_padding_mask: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCache] = None,
        cross_kv_cache: Optional[KVCache] = None,
        attn_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x: (B, L, dim); context: (B, S, context_dim) for cross-attention; attn_bias: additive float bias
        of the self-attention (B or 1, H, L, S). Returns (B, L, dim)."""
        if self.attn is not None:
            x = self._residual(
                x, self.norm1,
                lambda h: self.attn(h, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                    is_causal=is_causal, kv_cache=kv_cache, attn_bias=attn_bias),
                self.ls1, self.drop_path1)
        if self.cross_attn is not None:
            x = self._residual(
                x, self.norm_cross,
                lambda h: self.cross_attn(h, context=context, key_padding_mask=context_padding_mask,
                                          kv_cache=cross_kv_cache),
                self.ls_cross, self.drop_path_cross)
        x = self._residual(x, self.norm2, self.mlp, self.ls2, self.drop_path2)
        return x


def build_blocks(depth: int, drop_path_rate: float = 0.0, block_fn: Callable[..., nn.Module] = Block,
                 **block_kwargs) -> nn.ModuleList:
    """``depth`` blocks whose stochastic depth rises linearly from 0 to ``drop_path_rate`` (timm / DeiT)."""
    dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList([block_fn(drop_path=dpr[i], **block_kwargs) for i in range(depth)])


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool = False,
               kv_caches: Optional[Sequence[tuple[KVCache, KVCache]]] = None, **kwargs) -> torch.Tensor:
    """Apply blocks in order; activation checkpointing recomputes each block in backward."""
    for i, blk in enumerate(blocks):
        kw = dict(kwargs)
        if kv_caches is not None:
            kw.update(kv_cache=kv_caches[i][0], cross_kv_cache=kv_caches[i][1])
        if grad_checkpointing and blk.training and kv_caches is None and torch.is_grad_enabled():
            x = checkpoint(blk, x, use_reentrant=False, **kw)
        else:
            x = blk(x, **kw)
    return x


class Transformer(nn.Module):
    """A stack of :class:`Block` s: encoder (bidirectional), decoder (causal, optional cross-attention).

    Stochastic depth rises linearly from 0 to ``drop_path_rate`` over the depth (timm / DeiT).

    Args:
        dim: width.
        depth: number of blocks.
        num_heads: attention heads.
        causal: every block attends causally (decoder).
        drop_path_rate: stochastic depth of the last block.
        block_fn: block class; remaining keyword arguments go to it.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        causal: bool = False,
        drop_path_rate: float = 0.0,
        block_fn: Callable[..., nn.Module] = Block,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.grad_checkpointing = False
        self.blocks = build_blocks(depth, drop_path_rate, block_fn, dim=dim, num_heads=num_heads, **block_kwargs)

    def new_kv_caches(self) -> list[tuple[KVCache, KVCache]]:
        """Fresh (self, cross) caches, one pair per block, for incremental decoding."""
        return [(KVCache(), KVCache(static=True)) for _ in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        context_padding_mask: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        kv_caches: Optional[Sequence[tuple[KVCache, KVCache]]] = None,
    ) -> torch.Tensor:
        """x: (B, L, dim) -> (B, L, dim)."""
        return run_blocks(self.blocks, x, self.grad_checkpointing, kv_caches, context=context,
                          attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=self.causal,
                          context_padding_mask=context_padding_mask)
