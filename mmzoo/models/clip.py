"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").

An image tower (the zoo's :class:`~mmzoo.models.vit.VisionTransformer`, laid out like open_clip's ViT:
``norm_pre``, no patch bias, class-token pooling, no classifier) and a causal text tower
(:class:`~mmzoo.models.text.TextTransformer`), each projected linearly to a joint embedding, plus a
learnable temperature. The contrastive loss lives in ``mmzoo.losses``; open_clip weights are mapped by
``mmzoo.convert.open_clip``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_arch, register_model
from .text import TextConfig, TextTransformer
from .vit import VisionTransformer, ViTConfig


def clip_vision_config(**kwargs: Any) -> ViTConfig:
    """A :class:`ViTConfig` with open_clip's ViT layout; ``kwargs`` set the shape (and anything else)."""
    base = dict(num_classes=0, global_pool="token", class_token=True, pre_norm=True, patch_bias=False,
                norm_layer="layernorm_1e5")
    base.update(kwargs)
    return ViTConfig(**base)


@dataclass
class CLIPConfig:
    embed_dim: int = 512  # joint image-text embedding width (output of both projections)
    vision: ViTConfig = field(default_factory=clip_vision_config)  # image tower; num_classes must be 0
    text: TextConfig = field(default_factory=TextConfig)  # text tower
    init_logit_scale: float = math.log(1 / 0.07)  # log inverse temperature at init (CLIP sec. 2.5: tau = 0.07)
    max_logit_scale: float = math.log(100)  # clamp when used: CLIP caps the logit multiplier at 100
    init_logit_bias: Optional[float] = None  # learnable logit bias (SigLIP uses -10); None: no bias
    vision_proj_bias: bool = False  # bias on the image projection (CLIP: none)


class CLIPOutput(NamedTuple):
    """What :meth:`CLIP.forward` returns, always.

    image_features: (B, embed_dim), L2-normalised.
    text_features: (B', embed_dim), L2-normalised.
    logit_scale: scalar multiplier ``exp(clamp(logit_scale, max=max_logit_scale))``; logits are
        ``logit_scale * image_features @ text_features.T (+ logit_bias)``.
    logit_bias: scalar, or None when the model has no logit bias.
    """

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: Optional[torch.Tensor] = None


def build_vision_tower(embed_dim: int, cfg: ViTConfig,
                       proj_bias: bool = False) -> tuple[VisionTransformer, nn.Linear]:
    """The image tower and its projection to ``embed_dim`` (shared with models built on CLIP)."""
    if cfg.num_classes != 0:
        raise ValueError(f"the CLIP image tower has no classifier: set vision.num_classes=0 "
                         f"(got {cfg.num_classes}); the projection to embed_dim replaces it")
    visual = VisionTransformer(cfg)
    proj = nn.Linear(cfg.embed_dim, embed_dim, bias=proj_bias)
    nn.init.normal_(proj.weight, std=cfg.embed_dim ** -0.5)  # CLIP: width^-0.5 keeps unit-scale features
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
    return visual, proj


def build_text_tower(embed_dim: int, cfg: TextConfig) -> TextTransformer:
    """The text tower, projecting to ``embed_dim``."""
    return TextTransformer(cfg, output_dim=embed_dim)


@register_arch("clip", CLIPConfig)
class CLIP(nn.Module):
    """Contrastive image-text model.

    Args:
        cfg: a :class:`CLIPConfig`.
    """

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.visual, self.visual_proj = build_vision_tower(cfg.embed_dim, cfg.vision, cfg.vision_proj_bias)
        self.text = build_text_tower(cfg.embed_dim, cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        else:
            self.logit_bias = None

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (besides norms and biases)."""
        names = {"logit_scale"} | ({"logit_bias"} if self.logit_bias is not None else set())
        names |= {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> image embeddings (B, embed_dim)."""
        x = self.visual.forward_head(self.visual.forward_features(images), pre_logits=True)  # (B, width)
        x = self.visual_proj(x)  # (B, embed_dim)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, L), L <= text.context_length -> text embeddings (B, embed_dim)."""
        x = self.text(tokens)  # (B, embed_dim)
        return F.normalize(x, dim=-1) if normalize else x

    def get_logit_scale(self) -> torch.Tensor:
        """The logit multiplier exp(logit_scale), the exponent clamped at ``max_logit_scale``."""
        return self.logit_scale.clamp(max=self.cfg.max_logit_scale).exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CLIPOutput:
        """Images (B, C, H, W) and token ids (B', L) -> normalised features and the logit scale."""
        return CLIPOutput(self.encode_image(images, normalize=True), self.encode_text(tokens, normalize=True),
                          self.get_logit_scale(), self.logit_bias)


# -- presets (names and shapes as open_clip's model configs) ----------------------------------------
@register_model
def clip_nano() -> CLIPConfig:
    """Test-size CLIP: 32x32 images, 16 text tokens (CPU, seconds). CLIP's BPE vocabulary."""
    return CLIPConfig(
        embed_dim=64,
        vision=clip_vision_config(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
        text=TextConfig(context_length=16, embed_dim=64, depth=2, num_heads=2))


@register_model
def clip_micro() -> CLIPConfig:
    """Small CLIP for 48x48 images (6x6 patches of 8) and 32 text tokens that trains in minutes on a CPU
    (the default of ``python train.py model=clip`` on the built-in shapes_captions)."""
    return CLIPConfig(
        embed_dim=128,
        vision=clip_vision_config(img_size=48, patch_size=8, embed_dim=128, depth=4, num_heads=4),
        text=TextConfig(context_length=32, embed_dim=128, depth=4, num_heads=4))


def _clip_b(patch_size: int, act_layer: str) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=512,
        vision=clip_vision_config(img_size=224, patch_size=patch_size, embed_dim=768, depth=12, num_heads=12,
                                  act_layer=act_layer),
        text=TextConfig(context_length=77, embed_dim=512, depth=12, num_heads=8, act_layer=act_layer))


def _clip_l14(act_layer: str) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=768,
        vision=clip_vision_config(img_size=224, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                                  act_layer=act_layer),
        text=TextConfig(context_length=77, embed_dim=768, depth=12, num_heads=12, act_layer=act_layer))


@register_model
def clip_vit_b32() -> CLIPConfig:
    """open_clip ViT-B-32 (nn.GELU), 151.3M parameters."""
    return _clip_b(32, "gelu")


@register_model
def clip_vit_b32_quickgelu() -> CLIPConfig:
    """open_clip ViT-B-32-quickgelu: the shape of OpenAI's ViT-B/32 weights, QuickGELU activations."""
    return _clip_b(32, "quick_gelu")


@register_model
def clip_vit_b16() -> CLIPConfig:
    """open_clip ViT-B-16 (nn.GELU), 149.6M parameters."""
    return _clip_b(16, "gelu")


@register_model
def clip_vit_b16_quickgelu() -> CLIPConfig:
    """open_clip ViT-B-16-quickgelu (OpenAI's ViT-B/16 weights)."""
    return _clip_b(16, "quick_gelu")


@register_model
def clip_vit_l14() -> CLIPConfig:
    """open_clip ViT-L-14 (nn.GELU), 427.6M parameters."""
    return _clip_l14("gelu")


@register_model
def clip_vit_l14_quickgelu() -> CLIPConfig:
    """open_clip ViT-L-14-quickgelu (OpenAI's ViT-L/14 weights)."""
    return _clip_l14("quick_gelu")
