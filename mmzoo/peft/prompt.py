"""Prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021 / VPT-shallow, Jia et al. 2022).

* **prefix**: every self-attention gets ``P`` learnable key and value vectors per key/value head,
  prepended to its keys and values (``Attention.prefix``; masks gain ``P`` always-visible columns, a
  causal mask lets every query see all of them). Works wherever the zoo's :class:`Attention` is used.
* **prompt**: ``P`` learnable tokens are prepended to the input of each transformer stack (a
  ``ModuleList`` of :class:`Block` s run in order: ViT, both CLIP towers, CoCa, wav2vec 2.0) and removed
  after its last block, so everything outside the stack (pooling, heads) sees the usual sequence.
  Key-padding masks are extended; dense ``attn_mask`` s and KV-cache decoding are refused with an error.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.attention import Attention
from ..layers.block import Block


class PrefixKV(nn.Module):
    """Learnable key/value prefixes for one attention layer.

    Args:
        num_kv_heads: key/value heads of the attention.
        length: number of prefix positions ``P``.
        head_dim: per-head width.
    """

    def __init__(self, num_kv_heads: int, length: int, head_dim: int) -> None:
        super().__init__()
        if length <= 0:
            raise ValueError(f"peft.num_tokens (prefix length) must be positive, got {length}")
        self.k = nn.Parameter(torch.randn(num_kv_heads, length, head_dim) * 0.02)  # (Hkv, P, Dh)
        self.v = nn.Parameter(torch.randn(num_kv_heads, length, head_dim) * 0.02)

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Hkv, S, Dh) keys and values -> (B, Hkv, P + S, Dh)."""
        B = k.shape[0]
        pk = self.k.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        pv = self.v.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


def apply_prefix(model: nn.Module, num_tokens: int = 8) -> int:
    """Attach a :class:`PrefixKV` to every self-attention; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, Attention) and not m.cross_attn and m.prefix is None:
            ref = m.proj.weight
            m.prefix = PrefixKV(m.num_kv_heads, num_tokens, m.head_dim).to(device=ref.device, dtype=ref.dtype)
            count += 1
    if not count:
        raise ValueError(f"peft=prefix needs mmzoo.layers.Attention self-attention; {type(model).__name__} has none")
    return count


class SoftPrompt(nn.Module):
    """``P`` learnable input tokens of width ``dim`` for one transformer stack."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        if num_tokens <= 0:
            raise ValueError(f"peft.num_tokens (prompt length) must be positive, got {num_tokens}")
        self.tokens = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)  # (1, P, D)


def block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ``ModuleList`` whose children are all :class:`Block` s (a transformer stack), by name."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) and all(isinstance(b, Block) for b in m)]


class _PromptIn:
    """Forward pre-hook on every block of a stack: the first block prepends the prompt; every block gets
    its key-padding mask extended by ``P`` visible positions."""

    def __init__(self, prompt: SoftPrompt, first: bool, where: str) -> None:
        self.prompt, self.first, self.where = prompt, first, where

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if kwargs.get("kv_cache") is not None:
            raise ValueError(f"peft=prompt does not support KV-cache decoding ({self.where}); "
                             "use peft=prefix for generation")
        if kwargs.get("attn_mask") is not None:
            raise ValueError(f"peft=prompt cannot extend a dense attn_mask ({self.where}); use peft=prefix")
        x, rest = args[0], args[1:]
        P = self.prompt.tokens.shape[1]
        if self.first:
            x = torch.cat([self.prompt.tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)  # (B, P+L, D)
        kpm = kwargs.get("key_padding_mask")
        if kpm is not None:
            kwargs = dict(kwargs, key_padding_mask=F.pad(kpm.to(torch.bool), (P, 0), value=False))
        return (x, *rest), kwargs


class _PromptOut:
    """Forward hook on the last block: drop the prompt positions."""

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.num_tokens:]


def apply_prompt(model: nn.Module, num_tokens: int = 8, stacks: Optional[Sequence[str]] = None) -> list[str]:
    """Add soft prompts to the transformer stacks (all, or those named in ``stacks``); returns their names."""
    found = block_stacks(model)
    if stacks:
        missing = set(stacks) - {n for n, _ in found}
        if missing:
            raise ValueError(f"peft.stacks names {sorted(missing)}, but the transformer stacks of "
                             f"{type(model).__name__} are {[n for n, _ in found]}")
        found = [(n, s) for n, s in found if n in stacks]
    if not found:
        raise ValueError(f"peft=prompt needs a ModuleList of mmzoo.layers.Block (a transformer stack); "
                         f"{type(model).__name__} has none")
    for name, blocks in found:
        first = blocks[0]
        if hasattr(first, "prompt"):
            continue
        ref = first.attn.proj.weight
        first.prompt = SoftPrompt(first.attn.proj.out_features, num_tokens).to(device=ref.device, dtype=ref.dtype)
        for i, blk in enumerate(blocks):
            blk.register_forward_pre_hook(_PromptIn(first.prompt, i == 0, name), with_kwargs=True)
        blocks[-1].register_forward_hook(_PromptOut(num_tokens))
    return [n for n, _ in found]
