"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen ``nn.Linear`` gains a trainable low-rank update ``W + (alpha / r) B A`` with ``A`` (r, in)
Kaiming-initialised and ``B`` (out, r) zero, so the adapted model starts equal to the base model. The
update can be merged into ``W`` for zero-overhead inference and unmerged again.

A tied weight (a GPT ``lm_head`` sharing the token embedding matrix) is one tensor used twice: merging
an update into it would rewrite the embedding as well. :func:`apply_lora` refuses such a target with an
error naming both modules, unless ``untie=True`` first gives the target its own frozen copy of the
weight (the other user keeps the original); :func:`merge_lora` refuses to merge into a weight that is
still shared.

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


def shared_parameters(model: nn.Module) -> dict[int, list[str]]:
    """Every parameter reachable under more than one name (tied weights): ``id(param) -> names``."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {k: v for k, v in names.items() if len(v) > 1}


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target: Optional[Sequence[str]] = None, untie: bool = False) -> list[str]:
    """Replace the targeted linears by :class:`LoRALinear` in place; returns their names.

    Args:
        model: the model, adapted in place.
        r: rank of the updates.
        alpha: scaling numerator.
        dropout: dropout on the low-rank branch's input.
        target: shell patterns of ``nn.Linear`` module names (None: every attention projection).
        untie: a target whose weight is tied to another parameter (``lm_head`` and ``token_embed``) first
            gets its own frozen copy of that weight, so merging leaves the other user alone; False
            refuses such a target with an error.
    """
    names = find_linears(model, target)
    if not names:
        raise ValueError("the model has no attention projections to adapt; set peft.target to name "
                         "patterns of nn.Linear modules (e.g. ['*.mlp.fc1'])")
    shared = shared_parameters(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if isinstance(base, LoRALinear):
            continue
        for attr in ("weight", "bias"):
            p = getattr(base, attr)
            others = [] if p is None else [n for n in shared.get(id(p), []) if n != f"{name}.{attr}"]
            if not others:
                continue
            if not untie:
                raise ValueError(
                    f"peft=lora: {name}.{attr} is tied to {others} (one tensor); merging the LoRA update "
                    f"would rewrite {others[0]} as well. Set peft.untie=true to give {name} its own frozen "
                    f"copy first, or leave {name} out of peft.target")
            setattr(base, attr, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        setattr(parent, child, LoRALinear(base, r, alpha, dropout))
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update into its base weight (zero-overhead inference); refuses a weight that is
    tied to another parameter (the merge would change that one too)."""
    shared = shared_parameters(model)
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear) and not m.merged and id(m.weight) in shared:
            others = [n for n in shared[id(m.weight)] if n != f"{name}.weight"]
            raise ValueError(f"merge_lora: {name}.weight is tied to {others}; merging would rewrite them too. "
                             "Build the LoRA with untie=True (peft.untie=true)")
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
