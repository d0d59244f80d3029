"""timm checkpoint adapters.

mmzoo's ViT uses timm's parameter names (``patch_embed.proj``, ``blocks.{i}.attn.qkv`` ...), so the
mapping is mostly the identity; what this adapter handles is the layout differences between timm
variants: classifier-free checkpoints, ``fc_norm`` vs ``norm``, LayerScale, and nested keys.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import register_converter


def _is_timm_vit(sd: dict[str, torch.Tensor]) -> bool:
    return "patch_embed.proj.weight" in sd and any(k.startswith("blocks.0.attn.qkv.") for k in sd)


@register_converter("timm", "vit", detect=_is_timm_vit)
def convert_timm_vit(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` state dict -> mmzoo ViT state dict."""
    out = {}
    for k, v in sd.items():
        if k.startswith("reg_token"):
            raise ValueError("timm ViT checkpoints with register tokens are not supported (key reg_token)")
        if k.startswith(("attn_pool.", "head.fc.")):
            raise ValueError(f"timm ViT checkpoint uses an unsupported head ({k})")
        out[k] = v
    own = model.state_dict()
    # a headless checkpoint leaves the model's fresh classifier in place (load_pretrained allows it)
    if "head.weight" in out and "head.weight" not in own:
        out.pop("head.weight"), out.pop("head.bias", None)  # model built without a head
    return out
