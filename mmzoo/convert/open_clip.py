"""open_clip checkpoint adapter: open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT image tower, built-in text
transformer) state dicts -> mmzoo ``CLIP``.

Layout differences handled here:

* ``nn.MultiheadAttention``'s ``in_proj_weight`` is already laid out ``[q | k | v]`` by rows, the layout
  of our fused ``attn.qkv``; ``out_proj`` is ``attn.proj``; ``mlp.c_fc/c_proj`` are ``mlp.fc1/fc2``;
  ``ln_1/ln_2`` are ``norm1/norm2``; ``ls_1/ls_2.gamma`` are ``ls1/ls2.gamma``.
* open_clip's projections are matrices (width, embed_dim) used as ``x @ proj``; ours are ``nn.Linear``
  weights (embed_dim, width), so they are transposed.
* class token (width,) and positions (N, width) gain leading singleton dims; the image positions are
  resampled when the model's grid differs, text positions are cut when the model's context is shorter.
* ``CustomTextCLIP`` nests the text tower under ``text.``; ``CLIP`` keeps it at the top level.
"""
from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn

from . import register_converter

log = logging.getLogger(__name__)

# open_clip block -> mmzoo block (same for both towers)
_BLOCK_KEYS = {
    "ln_1": "norm1", "ln_2": "norm2",
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma",
}
_BLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")

_VISUAL_KEYS = {
    "conv1.weight": "patch_embed.proj.weight",
    "ln_pre": "norm_pre", "ln_post": "norm",
}
_TEXT_KEYS = {"token_embedding.weight": "token_embed.weight", "ln_final": "norm"}

# open_clip variants mmzoo's CLIP does not implement: name them instead of failing on a key list
_UNSUPPORTED = {
    "visual.trunk.": "a timm image tower (TimmModel)",
    "visual.layer1.": "a ModifiedResNet image tower",
    "visual.attn_pool": "an attentional-pooling image tower (CoCa)",
    "text.transformer.embeddings.": "a Hugging Face text tower",
    "text.cls_emb": "a text tower with a class embedding (CoCa)",
    "text_decoder.": "a CoCa text decoder",
}


def _is_open_clip(sd: dict[str, torch.Tensor]) -> bool:
    # ViT and ResNet towers both have `visual.conv1`; timm towers live under `visual.trunk.`
    return "visual.conv1.weight" in sd or any(k.startswith("visual.trunk.") for k in sd)


def _map_tower_key(key: str, extra: dict[str, str]) -> str:
    """open_clip key inside one tower -> mmzoo key inside the same tower (raises KeyError if unknown)."""
    m = _BLOCK_RE.match(key)
    if m:
        idx, rest = m.groups()
        for old, new in _BLOCK_KEYS.items():
            if rest == old or rest.startswith(old + "."):
                return f"blocks.{idx}.{new}{rest[len(old):]}"
        raise KeyError(key)
    for old, new in extra.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    raise KeyError(key)


@register_converter("open_clip", "clip", detect=_is_open_clip)
def convert_open_clip(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """open_clip ``CLIP`` state dict -> mmzoo ``CLIP`` state dict."""
    for prefix, what in _UNSUPPORTED.items():
        if any(k.startswith(prefix) for k in sd):
            raise ValueError(f"this open_clip checkpoint has {what} (keys {prefix}*), which mmzoo's CLIP "
                             f"does not implement; supported: ViT image tower + built-in text transformer")
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in sd.items():
        if k.endswith("attn_mask"):
            continue  # causal mask buffer of old checkpoints; we attend with is_causal
        if k in ("logit_scale", "logit_bias"):
            if k not in own:
                raise ValueError(f"the open_clip checkpoint has a {k} (SigLIP-style) but the model has none; "
                                 f"build it with init_logit_bias=<float>")
            out[k] = v.reshape(own[k].shape)  # open_clip stores shape () or (1,)
            continue
        try:
            if k.startswith("visual."):
                out.update(_convert_visual(k[len("visual."):], v, model))
            else:
                out.update(_convert_text(k[len("text."):] if k.startswith("text.") else k, v, model))
        except KeyError:
            unknown.append(k)
    if unknown:
        raise ValueError(f"open_clip checkpoint has keys mmzoo's CLIP cannot map: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}")
    return out


def _convert_visual(k: str, v: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    if k == "class_embedding":
        return {"visual.cls_token": v.reshape(1, 1, -1)}  # (D,) -> (1, 1, D)
    if k == "positional_embedding":
        pos = v.unsqueeze(0)  # (1 + N, D) -> (1, 1 + N, D)
        visual = model.visual
        target = visual.pos_embed
        if target is not None and pos.shape != target.shape:
            from ..layers import resample_abs_pos_embed

            resampled = resample_abs_pos_embed(pos, visual.patch_embed.grid_size,
                                               num_prefix_tokens=visual.num_prefix_tokens)
            log.info("resampled visual positions from %s to %s", tuple(pos.shape), tuple(resampled.shape))
            pos = resampled
        return {"visual.pos_embed": pos}
    if k == "proj":
        return {"visual_proj.weight": v.t().contiguous()}  # (width, embed) used as x @ proj -> Linear weight
    return {"visual." + _map_tower_key(k, _VISUAL_KEYS): v}


def _convert_text(k: str, v: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    if k == "positional_embedding":
        context = model.text.context_length
        if v.shape[0] < context:
            raise ValueError(f"open_clip checkpoint has {v.shape[0]} text positions but the model's "
                             f"text.context_length is {context}; build it with text.context_length<={v.shape[0]}")
        if v.shape[0] > context:
            log.info("keeping the first %d of %d text positions", context, v.shape[0])
        return {"text.pos_embed": v[:context].unsqueeze(0)}  # (L, D) -> (1, L, D)
    if k == "text_projection":
        return {"text.proj.weight": v.t().contiguous()}  # matrix (width, embed) -> Linear weight
    if k.startswith("text_projection."):
        return {"text.proj." + k[len("text_projection."):]: v}  # already an nn.Linear (proj_bias=True)
    return {"text." + _map_tower_key(k, _TEXT_KEYS): v}
