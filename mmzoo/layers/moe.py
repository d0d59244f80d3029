"""Mixture-of-experts feed-forward: top-k routing with expert capacity (GShard, Lepikhin et al. 2020;
Switch Transformer, Fedus et al. 2021), causal in training and dropless at inference.

A drop-in replacement for :class:`~mmzoo.layers.Mlp` inside :class:`~mmzoo.layers.Block` (same
constructor arguments), so every model can swap its feed-forward for ``partial(MoE, num_experts=8)``.
After each forward the layer keeps its load-balancing loss in ``aux_loss``, the router z-loss in
``z_loss`` (a model adds them, scaled, to the task loss) and the share of dropped token assignments in
``dropped_fraction``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from .mlp import Mlp


class MoE(nn.Module):
    """Top-k routed experts with a per-expert capacity counted along each sequence's prefix.

    Each token picks its ``top_k`` experts by router probability. Outputs are summed weighted by the
    gate: the router probability (top-1, Switch) or the top-k probabilities renormalised to sum to one
    (top-k > 1, GShard).

    Capacity (training only): GShard and Switch queue all tokens of a batch and drop assignments past
    an expert's capacity, so whether a token is served depends on later tokens and other sequences; in
    a causal model the future would leak into the past. Here each sequence is its own queue, in token
    order, and the capacity grows with the prefix: by position ``t`` (0-based) expert ``e`` serves at
    most ``c(t) = ceil(capacity_factor * (t + 1) * top_k / num_experts)`` of the sequence's tokens; an
    assignment arriving when ``c(t)`` is used up is dropped (that token gets nothing from that expert;
    the residual carries it). A token's fate depends only on the tokens at or before it. At inference
    (``eval()``) and with ``capacity_factor <= 0`` routing is dropless, so a KV-cached decoder computes
    exactly what the full forward does.

    Losses: load balancing (Switch eq. 4): ``num_experts * sum_e f_e * P_e``, f_e the share of
    assignments routed to expert e (before dropping), P_e its mean router probability; 1.0 when
    balanced. Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): mean over tokens of
    ``logsumexp(router logits) ** 2``, which keeps router logits small (stable float32 softmax).

    Args:
        num_experts: experts.
        top_k: experts per token.
        capacity_factor: capacity slack in training; ``<= 0`` = unlimited (no dropping).
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
        self.z_loss = torch.zeros(())
        self.dropped_fraction = torch.zeros(())

    def capacity(self, length: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """``c(t)`` for t = 0..length-1 (long, (length,)): assignments an expert may have served by
        position t of a sequence."""
        t = torch.arange(1, length + 1, device=device, dtype=torch.float64)
        return torch.ceil(self.capacity_factor * t * self.top_k / self.num_experts).long()

    def served(self, index: torch.Tensor) -> torch.Tensor:
        """Expert choices ``index`` (S, L, k) of S sequences of L tokens -> kept (S, L, k) bool.

        Per sequence and expert, with ``a_t`` = 1 when token t picks the expert, the number served by
        position t follows ``S_t = min(S_{t-1} + a_t, c(t))`` (serve while the capacity lasts), whose
        closed form ``S_t = A_t + min(0, min_{u <= t} (c(u) - A_u))`` (``A`` the running count of
        assignments) is computed with a cumulative minimum instead of a loop over positions.
        """
        S, L, _ = index.shape
        if not self.training or self.capacity_factor <= 0:
            return torch.ones_like(index, dtype=torch.bool)
        picks = nn.functional.one_hot(index, self.num_experts).sum(dim=2)  # (S, L, E): a_t per expert
        A = picks.cumsum(dim=1)  # (S, L, E)
        slack = self.capacity(L, index.device)[None, :, None] - A  # c(t) - A_t
        served = A + slack.cummin(dim=1).values.clamp(max=0)  # S_t
        took = served - nn.functional.pad(served, (0, 0, 1, 0))[:, :-1]  # S_t - S_{t-1} in {0, 1}
        return took.gather(2, index).bool()  # (S, L, k): whether each choice's expert took the token

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (S, L, D) (S sequences of L tokens) -> expert index (S, L, k), gate (S, L, k),
        kept (S, L, k) bool, router logits (S, L, E) in float32."""
        logits = self.router(x).float()  # routing in float32 (Switch sec. 2.4)
        gate, index = logits.softmax(dim=-1).topk(self.top_k, dim=-1)  # (S, L, k)
        if self.top_k > 1:
            gate = gate / gate.sum(dim=-1, keepdim=True)
        return index, gate, self.served(index), logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> (..., L, out_features): the second-to-last axis is the sequence (a 2-D input is
        one sequence); sets ``aux_loss``, ``z_loss`` and ``dropped_fraction``."""
        shape = x.shape
        seqs = x.reshape(-1, shape[-2], shape[-1]) if x.dim() > 2 else x[None]  # (S, L, D)
        index, gate, kept, logits = self.route(seqs)
        E = self.num_experts
        probs = logits.softmax(dim=-1).flatten(0, 1)  # (N, E)
        frac = torch.bincount(index.flatten(), minlength=E).float() / index.numel()  # f_e
        self.aux_loss = E * (frac * probs.mean(dim=0)).sum()
        self.z_loss = logits.logsumexp(dim=-1).pow(2).mean()
        self.dropped_fraction = (1.0 - kept.float().mean()).detach()
        flat = seqs.flatten(0, 1)  # (N, D)
        index, gate, kept = index.flatten(0, 1), gate.flatten(0, 1), kept.flatten(0, 1)  # (N, k)
        out = flat.new_zeros(flat.shape[0], self.out_features)
        for e, expert in enumerate(self.experts):
            tok, choice = torch.nonzero((index == e) & kept, as_tuple=True)  # assignments served by e
            if tok.numel() == 0:
                continue
            y = expert(flat[tok]) * gate[tok, choice, None].to(flat.dtype)  # (n_e, out)
            out.index_add_(0, tok, y)
        return out.reshape(*shape[:-1], self.out_features)
