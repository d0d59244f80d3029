"""Normalisation layers by config name."""
from __future__ import annotations

from functools import partial

import torch.nn as nn

LayerNorm = nn.LayerNorm
RMSNorm = nn.RMSNorm  # fused kernel in torch >= 2.4: y = x / rms(x) * weight

NORM_LAYERS = {
    "layernorm": partial(nn.LayerNorm, eps=1e-6),  # ViT / timm eps
    "layernorm_1e5": partial(nn.LayerNorm, eps=1e-5),  # torch default, CLIP / BERT style
    "rmsnorm": partial(nn.RMSNorm, eps=1e-6),
}


def get_norm_layer(name: str):
    """Norm class by config name (valid: layernorm, layernorm_1e5, rmsnorm)."""
    try:
        return NORM_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown norm_layer {name!r}; valid choices: {sorted(NORM_LAYERS)}") from None
