"""Mixture-of-experts feed-forward: top-k routing with expert capacity (GShard, Lepikhin et al. 2020;
Switch Transformer, Fedus et al. 2021).

A drop-in replacement for :class:`~mmzoo.layers.Mlp` inside :class:`~mmzoo.layers.Block` (same
constructor arguments), so every model can swap its feed-forward for ``partial(MoE, num_experts=8)``.
After each forward the layer keeps its load-balancing loss in ``aux_loss`` (a model adds it, scaled, to
the task loss) and the share of dropped token assignments in ``dropped_fraction``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from .mlp import Mlp


class MoE(nn.Module):
    """Top-k routed experts with a per-expert capacity.

    Each token picks its ``top_k`` experts by router probability. An expert takes at most
    ``capacity = ceil(capacity_factor * tokens * top_k / num_experts)`` assignments; first choices of all
    tokens are served before second choices (GShard's priority), in token order, and assignments past
    the capacity are dropped: that token gets nothing from that expert (the residual carries it).
    Outputs are summed weighted by the gate: the router probability (top-1, Switch) or the top-k
    probabilities renormalised to sum to one (top-k > 1, GShard).

    Load-balancing loss (Switch eq. 4): ``num_experts * sum_e f_e * P_e``, f_e the share of assignments
    routed to expert e (before dropping), P_e its mean router probability; 1.0 when balanced.

    Args:
        num_experts: experts.
        top_k: experts per token.
        capacity_factor: capacity slack; ``<= 0`` = unlimited (no dropping).
        expert_layer: feed-forward class of each expert (``Mlp``, ``SwiGLU`` ...).

    ``in_features``, ``hidden_features``, ``out_features``, ``act_layer``, ``bias``, ``drop``: as :class:`Mlp`, per expert.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
        num_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float = 1.25,
        expert_layer: Callable[..., nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"MoE top_k must be in [1, num_experts={num_experts}], got {top_k}")
        out_features = out_features or in_features
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.out_features = out_features
        self.router = nn.Linear(in_features, num_experts, bias=False)
        self.experts = nn.ModuleList([
            expert_layer(in_features, hidden_features, out_features, act_layer=act_layer, bias=bias, drop=drop)
            for _ in range(num_experts)])
        self.aux_loss = torch.zeros(())
        self.dropped_fraction = torch.zeros(())

    def capacity(self, num_tokens: int) -> int:
        if self.capacity_factor <= 0:
            return num_tokens
        return max(1, math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (N, D) -> expert index (N, k), gate (N, k), kept (N, k) bool, router probs (N, E)."""
        N, E, k = x.shape[0], self.num_experts, self.top_k
        probs = self.router(x).float().softmax(dim=-1)  # (N, E); routing in float32 (Switch sec. 2.4)
        gate, index = probs.topk(k, dim=-1)  # (N, k)
        if k > 1:
            gate = gate / gate.sum(dim=-1, keepdim=True)
        # slot of each assignment in its expert's queue: choice-major order (all 1st choices first)
        onehot = nn.functional.one_hot(index.t().reshape(-1), E)  # (k*N, E)
        slot = (onehot.cumsum(dim=0) - 1).mul(onehot).sum(dim=-1)  # (k*N,)
        kept = (slot < self.capacity(N)).view(k, N).t()  # (N, k)
        return index, gate, kept, probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., out_features); sets ``aux_loss`` and ``dropped_fraction``."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        index, gate, kept, probs = self.route(x)
        E = self.num_experts
        frac = torch.bincount(index.flatten(), minlength=E).float() / index.numel()  # f_e
        self.aux_loss = E * (frac * probs.mean(dim=0)).sum()
        self.dropped_fraction = (1.0 - kept.float().mean()).detach()
        out = x.new_zeros(x.shape[0], self.out_features)
        for e, expert in enumerate(self.experts):
            tok, choice = torch.nonzero((index == e) & kept, as_tuple=True)  # assignments served by e
            if tok.numel() == 0:
                continue
            y = expert(x[tok]) * gate[tok, choice, None].to(x.dtype)  # (n_e, out)
            out.index_add_(0, tok, y)
        return out.reshape(*shape[:-1], self.out_features)
