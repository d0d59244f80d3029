"""Activation layers by config name (``act_layer`` in every family's config)."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation of OpenAI's CLIP weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACT_LAYERS = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh"), "quick_gelu": QuickGELU,
              "silu": nn.SiLU, "relu": nn.ReLU}


def get_act_layer(name: str):
    """Activation class by config name.

    Args:
        name: one of :data:`ACT_LAYERS`.
    """
    try:
        return ACT_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown act_layer {name!r}; valid choices: {sorted(ACT_LAYERS)}") from None
