"""Feed-forward blocks: the transformer MLP and gated (GLU) variants (SwiGLU, GEGLU)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class Mlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop (the ViT / BERT feed-forward).

    Args:
        in_features: input width.
        hidden_features: inner width (default ``in_features``).
        out_features: output width (default ``in_features``).
        act_layer: activation class.
        bias: biases on both linears.
        drop: dropout probability.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class GluMlp(nn.Module):
    """Gated feed-forward (Shazeer 2020, "GLU Variants Improve Transformer").

    ``fc1`` projects to ``2 * hidden``: the first half is the value, the second the gate;
    out = fc2(value * act(gate)). ``act_layer=nn.SiLU`` gives SwiGLU, ``nn.GELU`` gives GEGLU.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: type[nn.Module] = nn.SiLU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.drop2(self.fc2(self.drop1(value * self.act(gate))))


def SwiGLU(in_features: int, hidden_features: Optional[int] = None, **kwargs) -> GluMlp:
    """GluMlp with a SiLU gate (PaLM, LLaMA). The gate is fixed by the name: an ``act_layer`` argument
    (``Block`` always passes one) is ignored."""
    kwargs.pop("act_layer", None)
    return GluMlp(in_features, hidden_features, act_layer=nn.SiLU, **kwargs)


def GEGLU(in_features: int, hidden_features: Optional[int] = None, **kwargs) -> GluMlp:
    """GluMlp with a GELU gate (T5 v1.1). The gate is fixed by the name: ``act_layer`` is ignored."""
    kwargs.pop("act_layer", None)
    return GluMlp(in_features, hidden_features, act_layer=nn.GELU, **kwargs)


MLP_LAYERS = {"mlp": Mlp, "swiglu": SwiGLU, "geglu": GEGLU}


def get_mlp_layer(name: str):
    """Feed-forward class by config name (valid: mlp, swiglu, geglu)."""
    try:
        return MLP_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown mlp_layer {name!r}; valid choices: {sorted(MLP_LAYERS)}") from None
