"""Image ViT weights -> TimeSformer (the paper initialises every video model from an image ViT).

The ViT's keys are the TimeSformer's (``patch_embed``, ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1/attn/norm2/mlp``, ``norm``, ``head``); the extra attentions of each scheme start as
copies of the block's spatial attention and its norm, as the official code does for divided attention
(``temporal_attn`` <- ``attn``, ``temporal_norm1`` <- ``norm1``). The time embedding and the temporal
projections keep the model's init: zero by default (``time_embed_std=0``), so with one frame the video model computes the image model's features.
Position grids of another resolution are resampled by :func:`mmzoo.convert.fit_state_dict`.
"""
from __future__ import annotations

import os
from typing import Union

import torch
import torch.nn as nn

from . import Checkpoint, load_pretrained, read_checkpoint, register_converter

# extra sub-layers of a TimeSformer block -> the ViT sub-layer they are copied from
_COPIES = {"temporal_norm1": "norm1", "temporal_attn": "attn", "height_norm1": "norm1", "height_attn": "attn",
           "global_norm1": "norm1", "global_attn": "attn"}


def _is_image_vit(sd: dict[str, torch.Tensor]) -> bool:
    return ("patch_embed.proj.weight" in sd and any(k.startswith("blocks.0.attn.qkv.") for k in sd)
            and not any(".temporal_attn." in k for k in sd))


@register_converter("image_vit", "timesformer", detect=_is_image_vit)
def convert_image_vit(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm / mmzoo ViT state dict -> TimeSformer state dict (see the module docstring)."""
    for k in sd:
        if k.startswith(("reg_token", "attn_pool.", "head.fc.")) or k in ("fc_norm.weight",):
            raise ValueError(f"image ViT checkpoint has {k!r}, which TimeSformer does not have (it pools the "
                             "class token after a final norm); use a ViT with global_pool='token'")
    own = model.state_dict()
    out = {k: v for k, v in sd.items() if k in own or k.startswith("head.")}
    for key in own:
        if key in out:
            continue
        parts = key.split(".")
        if parts[0] == "blocks" and parts[2] in _COPIES:
            src = ".".join([parts[0], parts[1], _COPIES[parts[2]], *parts[3:]])
            if src in sd:
                out[key] = sd[src].clone()
                continue
        out[key] = own[key]  # time embedding, temporal projections: the model's own init
    if "head.weight" in out and "head.weight" not in own:
        out.pop("head.weight"), out.pop("head.bias", None)  # model built without a head
    return out


def load_image_weights(model: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Initialise a TimeSformer from an image ViT: an mmzoo ViT checkpoint / export or a timm weight file."""
    ckpt = read_checkpoint(path)
    if ckpt.format == "mmzoo":
        if ckpt.arch != "vit":
            raise ValueError(f"{path} holds a {ckpt.arch!r} model; model.pretrained_image needs an image ViT")
        ckpt = Checkpoint(ckpt.path, ckpt.state_dict, "foreign")
    elif not _is_image_vit(ckpt.state_dict):
        raise ValueError(f"{path} is not an image ViT checkpoint (no patch_embed.proj / blocks.0.attn.qkv keys; "
                         f"first keys: {list(ckpt.state_dict)[:5]})")
    return load_pretrained(model, ckpt)
