"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

After the attention and after the MLP of every :class:`~mmzoo.layers.Block`, before the residual sum:
``h + up(act(down(h)))``. The up-projection starts at zero, so the adapted model starts equal to the
base model. Adapters are attached as block submodules (``blocks.3.adapter_attn``, ``adapter_mlp``) and
applied by forward hooks on ``attn`` / ``mlp``, so the base parameter names do not change.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.block import Block


class Adapter(nn.Module):
    """Residual bottleneck ``h + up(act(down(h)))``.

    Args:
        dim: width of the adapted features.
        bottleneck: inner width.
    """

    def __init__(self, dim: int, bottleneck: int = 16) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # identity at init
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class _ApplyAdapter:
    """Forward hook: replace a sub-layer's output by ``adapter(output)``."""

    def __init__(self, block: Block, name: str) -> None:
        self.block, self.name = block, name

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return getattr(self.block, self.name)(output)


def apply_adapters(model: nn.Module, bottleneck: int = 16) -> int:
    """Add adapters after ``attn`` and ``mlp`` of every :class:`Block`; returns the number of blocks."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"peft=adapter needs mmzoo.layers.Block modules; {type(model).__name__} has none")
    for blk in blocks:
        if hasattr(blk, "adapter_attn"):
            continue
        dim = blk.attn.proj.out_features
        ref = blk.attn.proj.weight
        blk.adapter_attn = Adapter(dim, bottleneck).to(device=ref.device, dtype=ref.dtype)
        blk.adapter_mlp = Adapter(dim, bottleneck).to(device=ref.device, dtype=ref.dtype)
        blk.attn.register_forward_hook(_ApplyAdapter(blk, "adapter_attn"))
        blk.mlp.register_forward_hook(_ApplyAdapter(blk, "adapter_mlp"))
    return len(blocks)
