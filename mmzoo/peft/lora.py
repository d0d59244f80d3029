"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen ``nn.Linear`` gains a trainable low-rank update ``W + (alpha / r) B A`` with ``A`` (r, in)
Kaiming-initialised and ``B`` (out, r) zero, so the adapted model starts equal to the base model. The
update can be merged into ``W`` for zero-overhead inference and unmerged again.

:class:`LoRALinear` subclasses ``nn.Linear`` and keeps the base ``weight`` / ``bias`` parameters under
their own names, so base checkpoint keys stay valid (``blocks.0.attn.qkv.weight``) and the LoRA factors
appear next to them (``blocks.0.attn.qkv.lora_A``).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.attention import Attention


class LoRALinear(nn.Linear):
    """``nn.Linear`` with a low-rank update.

    Args:
        base: the linear layer to adapt (its parameters are reused, not copied).
        r: rank of the update.
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the input of the low-rank branch.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        if r <= 0:
            raise ValueError(f"peft.r (LoRA rank) must be positive, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and the LoRA reference code)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) B A`` (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``weight``: the forward becomes a plain linear."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged update again (restores ``weight`` up to float rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        # (..., in) -> (..., r) -> (..., out)
        return out + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


def default_lora_targets(model: nn.Module) -> list[str]:
    """Names of the attention projections of every :class:`Attention` (``qkv``, ``q``, ``kv``, ``proj``)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            for child_name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    names.append(f"{name}.{child_name}" if name else child_name)
    return names


def find_linears(model: nn.Module, patterns: Optional[Sequence[str]]) -> list[str]:
    """Module names of the ``nn.Linear`` layers matching any shell-style pattern (default: attention)."""
    if not patterns:
        return default_lora_targets(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
    names = [n for n in linears if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names:
        raise ValueError(f"peft.target={list(patterns)} matches no nn.Linear of the model; "
                         f"linear layers are named like {linears[:8]}")
    return names


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target: Optional[Sequence[str]] = None) -> list[str]:
    """Replace the targeted linears by :class:`LoRALinear` in place; returns their names."""
    names = find_linears(model, target)
    if not names:
        raise ValueError("the model has no attention projections to adapt; set peft.target to name "
                         "patterns of nn.Linear modules (e.g. ['*.mlp.fc1'])")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if isinstance(base, LoRALinear):
            continue
        # tied weights (e.g. an lm_head sharing the embedding) stay tied: the base parameter is reused
        setattr(parent, child, LoRALinear(base, r, alpha, dropout))
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update into its base weight (zero-overhead inference)."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    return model
