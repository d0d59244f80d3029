"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Parameter names follow the zoo vocabulary, which is also timm's, so timm checkpoints map 1:1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..layers import PatchEmbed, build_blocks, get_mlp_layer, run_blocks, get_norm_layer, resample_abs_pos_embed
from ..layers.activations import ACT_LAYERS, QuickGELU, get_act_layer  # noqa: F401  (re-exported: old imports)
from ..layers.pos_embed import sincos_2d_pos_embed
from ._registry import register_arch, register_model


@dataclass
class ViTConfig:
    img_size: Union[int, tuple[int, int]] = 224  # input resolution (int or (H, W))
    patch_size: int = 16  # square patch side
    in_chans: int = 3  # input channels
    num_classes: int = 1000  # classifier outputs; 0 = no head (features only)
    global_pool: str = "token"  # "token" (class token), "avg" (mean of patch tokens) or "" (no pooling)
    embed_dim: int = 768  # width
    depth: int = 12  # number of blocks
    num_heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP inner width / embed_dim
    qkv_bias: bool = True  # bias on q, k, v projections
    qk_norm: bool = False  # per-head q/k normalisation
    init_values: Optional[float] = None  # LayerScale init (None: off)
    class_token: bool = True  # prepend a learnable class token
    pos_embed: str = "learn"  # "learn" (trained table), "sincos" (fixed 2-D sin-cos) or "none"
    pre_norm: bool = False  # norm after the embeddings (CLIP's ln_pre)
    fc_norm: Optional[bool] = None  # norm after pooling instead of before; None: on iff global_pool == "avg"
    patch_bias: bool = True  # bias of the patch projection (CLIP: False)
    drop_rate: float = 0.0  # dropout before the head
    pos_drop_rate: float = 0.0  # dropout after adding position embeddings
    proj_drop_rate: float = 0.0  # dropout after attention / MLP projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last block (linear ramp)
    norm_layer: str = "layernorm"  # see mmzoo.layers.get_norm_layer
    act_layer: str = "gelu"  # see ACT_LAYERS
    mlp_layer: str = "mlp"  # "mlp", "swiglu", "geglu"
    dynamic_img_size: bool = False  # accept other image sizes, resampling positions on the fly

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):  # Hydra / JSON / checkpoints give lists: keep the declared type
            self.img_size = tuple(self.img_size)


@register_arch("vit", ViTConfig)
class VisionTransformer(nn.Module):
    """ViT image classifier / feature extractor.

    Args:
        cfg: a :class:`ViTConfig`.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be one of 'token', 'avg', '' (got {cfg.global_pool!r})")
        if cfg.global_pool == "token" and not cfg.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        norm_layer = get_norm_layer(cfg.norm_layer)
        use_fc_norm = cfg.global_pool == "avg" if cfg.fc_norm is None else cfg.fc_norm
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.embed_dim = self.num_features = cfg.embed_dim
        self.num_prefix_tokens = 1 if cfg.class_token else 0

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim,
                                      bias=cfg.patch_bias, dynamic_img_size=cfg.dynamic_img_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None
        if cfg.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, cfg.embed_dim))
        elif cfg.pos_embed == "sincos":
            table = sincos_2d_pos_embed(self.patch_embed.grid_size, cfg.embed_dim)
            table = torch.cat([torch.zeros(self.num_prefix_tokens, cfg.embed_dim), table])[None]
            self.register_buffer("pos_embed", table, persistent=False)
        elif cfg.pos_embed == "none":
            self.pos_embed = None
        else:
            raise ValueError(f"pos_embed must be 'learn', 'sincos' or 'none' (got {cfg.pos_embed!r})")
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.norm_pre = norm_layer(cfg.embed_dim) if cfg.pre_norm else nn.Identity()
        self.grad_checkpointing = False
        self.blocks = build_blocks(
            cfg.depth, cfg.drop_path_rate, dim=cfg.embed_dim, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, init_values=cfg.init_values,
            proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, norm_layer=norm_layer,
            act_layer=get_act_layer(cfg.act_layer), mlp_layer=get_mlp_layer(cfg.mlp_layer))
        self.norm = norm_layer(cfg.embed_dim) if not use_fc_norm else nn.Identity()
        self.fc_norm = norm_layer(cfg.embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- init ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal (std .02) for linears and positions, tiny class token."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (besides norms and biases)."""
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's API)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head (e.g. for fine-tuning on another label set)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.cfg.num_classes = num_classes

    # -- forward ------------------------------------------------------------------------------------
    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if grid != self.patch_embed.grid_size:
                pos = resample_abs_pos_embed(pos, grid, self.patch_embed.grid_size, self.num_prefix_tokens)
            x = x + pos
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normed tokens (B, prefix + N, D)."""
        grid = (x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1])
        x = self.patch_embed(x)  # (B, N, D)
        x = self._pos_embed(x, grid)
        x = self.norm_pre(x)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, Sequence[int], None] = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """The outputs of chosen blocks, as timm's ``forward_intermediates`` returns them.

        Args:
            x: images (B, C, H, W).
            indices: an int n takes the last n blocks; a sequence takes those block indices (negative
                ones count from the end); None takes every block.
            norm: apply the final norm to each intermediate.
            output_fmt: ``"NCHW"`` feature maps (B, D, H/p, W/p) without prefix tokens, or ``"NLC"`` tokens
                (B, N, D) without prefix tokens.
            intermediates_only: return only the intermediates, not the final normed tokens as well.

        Returns:
            The intermediates, or ``(final tokens, intermediates)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = feature_indices(len(self.blocks), indices)
        gh, gw = x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1]
        x = self.patch_embed(x)  # (B, N, D)
        x = self.norm_pre(self._pos_embed(x, (gh, gw)))
        out = []
        for i, blk in enumerate(self.blocks[: max(take) + 1] if intermediates_only else self.blocks):
            x = blk(x)
            if i in take:
                y = self.norm(x) if norm else x
                y = y[:, self.num_prefix_tokens:]  # (B, N, D)
                if output_fmt == "NCHW":
                    y = y.reshape(y.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()  # (B, D, gh, gw)
                out.append(y)
        return out if intermediates_only else (self.norm(x), out)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, D) -> (B, D) by the configured pooling."""
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        if self.global_pool == "token":
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits (B, num_classes), or pooled features (B, D) when ``pre_logits``."""
        x = self.fc_norm(self.pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes) (pooled features when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


def feature_indices(depth: int, indices: Union[int, Sequence[int], None]) -> list[int]:
    """Block indices in ``range(depth)`` from timm's forms: None (all), n (the last n), or a list (negative
    indices count from the end)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices}: take the last n blocks with 0 < n <= depth ({depth})")
        return list(range(depth - indices, depth))
    out = []
    for i in indices:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"block index {i} is out of range for a model of depth {depth}")
        out.append(j)
    return sorted(set(out))


class FeatureExtractor(nn.Module):
    """A ViT that returns feature maps of chosen blocks, as ``timm.create_model(..., features_only=True)``:
    ``forward(x)`` is a list of (B, D, H/p, W/p) tensors; ``feature_info`` lists each output's block,
    channels and reduction (the patch size).

    Args:
        model: the ViT.
        out_indices: blocks to return (timm's forms: n for the last n, or a list); default the last 3.
        norm: apply the final norm to each output.
    """

    def __init__(self, model: "VisionTransformer", out_indices: Union[int, Sequence[int]] = 3, norm: bool = False) -> None:
        super().__init__()
        self.model = model
        self.out_indices = feature_indices(len(model.blocks), out_indices)
        self.norm = norm
        self.feature_info = [{"module": f"blocks.{i}", "num_chs": model.embed_dim,
                              "reduction": model.patch_embed.patch_size[0]} for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=self.norm, intermediates_only=True)


# -- presets (shapes and names as timm) ------------------------------------------------------------
@register_model
def vit_nano_patch4_32() -> ViTConfig:
    """Test-size ViT for 32x32 images (CPU, seconds)."""
    return ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10)


@register_model
def vit_micro_patch4_32() -> ViTConfig:
    """Small ViT for 32x32 images that trains in minutes on a laptop CPU."""
    return ViTConfig(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, num_classes=10)


@register_model
def vit_tiny_patch16_224() -> ViTConfig:
    """ViT-Ti/16 (DeiT-Ti shape), 5.7M parameters."""
    return ViTConfig(embed_dim=192, depth=12, num_heads=3)


@register_model
def vit_small_patch16_224() -> ViTConfig:
    """ViT-S/16, 22M parameters."""
    return ViTConfig(embed_dim=384, depth=12, num_heads=6)


@register_model
def vit_small_patch32_224() -> ViTConfig:
    """ViT-S/32."""
    return ViTConfig(patch_size=32, embed_dim=384, depth=12, num_heads=6)


@register_model
def vit_base_patch16_224() -> ViTConfig:
    """ViT-B/16, 86M parameters."""
    return ViTConfig(embed_dim=768, depth=12, num_heads=12)


@register_model
def vit_base_patch32_224() -> ViTConfig:
    """ViT-B/32, 88M parameters."""
    return ViTConfig(patch_size=32, embed_dim=768, depth=12, num_heads=12)


@register_model
def vit_large_patch16_224() -> ViTConfig:
    """ViT-L/16, 304M parameters."""
    return ViTConfig(embed_dim=1024, depth=24, num_heads=16)


@register_model
def vit_huge_patch14_224() -> ViTConfig:
    """ViT-H/14, 632M parameters."""
    return ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16)
