"""TimeSformer (Bertasius, Wang & Torresani 2021, "Is Space-Time Attention All You Need for Video
Understanding?") with the five self-attention schemes of the paper (Fig. 1, Sec. 3):

* ``space_only`` (S): every frame is a separate image through the ViT; the per-frame features are
  averaged at the end (the paper's space-only baseline, no temporal interaction at all);
* ``joint_space_time`` (ST): one attention over all ``T * N`` patch tokens of the clip;
* ``divided_space_time`` (T+S): temporal attention (each patch with the same patch in the other
  frames), then spatial attention (each frame alone), then the MLP;
* ``sparse_local_global`` (L+G): local attention inside ``T x H/2 x W/2`` neighbourhoods, then a sparse
  global attention over the whole clip with a stride of 2 patches in time, height and width;
* ``axial`` (T+W+H): three attentions in a row, along time, width and height.

Every attention is the zoo's one :class:`~mmzoo.layers.Attention`; a scheme is only a choice of
which tokens attend together. Patch tokens are kept as (B, T*H*W, D) in (t, h, w) order behind one
class token; a step regroups them to (B*G, L, D) sequences (G groups of L tokens) with plain reshapes,
so every group is a dense attention (the fused SDPA kernels stay usable, and L+G / axial really cost
less than joint attention). Where the class token takes part in a grouped step, it joins every group
and the G outputs are averaged back into one token, as the official code does for the spatial step
of divided attention.

Parameter names are the zoo's (``norm1/attn/norm2/mlp``), so an image ViT (timm or mmzoo) maps onto
them directly; the extra attentions are ``temporal_norm1/temporal_attn/temporal_fc`` (as in the
official code), ``height_norm1/height_attn`` (axial) and ``global_norm1/global_attn`` (L+G). Input
clips are (B, C, T, H, W).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Attention, Block, PatchEmbed, build_blocks, get_norm_layer, run_blocks
from ..layers import resample_abs_pos_embed
from ._registry import register_arch, register_model
from ..layers.activations import get_act_layer

SCHEMES = ("space_only", "joint_space_time", "divided_space_time", "sparse_local_global", "axial")
# the paper's short names are accepted too
SCHEME_ALIASES = {"S": "space_only", "ST": "joint_space_time", "T+S": "divided_space_time",
                  "L+G": "sparse_local_global", "T+W+H": "axial"}


@dataclass
class TimeSformerConfig:
    img_size: Union[int, tuple[int, int]] = 224  # frame resolution (int or (H, W))
    patch_size: int = 16  # square patch side
    in_chans: int = 3  # input channels
    num_frames: int = 8  # clip length T (the time embedding's size; other T are interpolated)
    num_classes: int = 400  # classifier outputs; 0 = no head (features only)
    attention: str = "divided_space_time"  # one of SCHEMES (or the paper's S, ST, T+S, L+G, T+W+H)
    embed_dim: int = 768  # width
    depth: int = 12  # number of blocks
    num_heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP inner width / embed_dim
    qkv_bias: bool = True  # bias on q, k, v projections
    local_size: Optional[tuple[int, int]] = None  # L+G local window in patches (h, w); None: half the grid
    global_stride: int = 2  # L+G sparse global attention stride in time, height and width
    drop_rate: float = 0.0  # dropout before the head
    pos_drop_rate: float = 0.0  # dropout after adding space / time embeddings
    proj_drop_rate: float = 0.0  # dropout after attention / MLP projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last block (linear ramp)
    norm_layer: str = "layernorm"  # see mmzoo.layers.get_norm_layer
    act_layer: str = "gelu"  # see mmzoo.models.vit.ACT_LAYERS
    pretrained_image: Optional[str] = None  # image ViT weights (mmzoo checkpoint or timm file) to start from
    # std of the time embedding's normal init; 0 = zeros, as the paper (a model built from an image ViT then
    # starts as that ViT). At zero every frame looks alike and the embedding only random-walks away from that
    # symmetric point; the tiny presets use 1.0, the scale of their patch tokens (see the presets)
    time_embed_std: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if isinstance(self.local_size, list):
            self.local_size = tuple(self.local_size)
        self.attention = SCHEME_ALIASES.get(self.attention, self.attention)
        if self.attention not in SCHEMES:
            raise ValueError(f"model.attention={self.attention!r} is not a TimeSformer attention scheme; valid "
                             f"choices: {list(SCHEMES)} (or the paper's names {list(SCHEME_ALIASES)})")


# -- token grouping ---------------------------------------------------------------------------------
# A step attends within groups. Each of T, H, W is split into (outer, inner) factors; a pattern says,
# per factor, whether it indexes the group ("g") or the position inside the sequence ("s").
def _factors(pattern: str, thw: tuple[int, int, int], local: tuple[int, int], stride: int):
    T, H, W = thw
    if pattern == "all":  # joint: one group per clip
        return [(T, "s"), (1, "s"), (H, "s"), (1, "s"), (W, "s"), (1, "s")]
    if pattern == "space":  # one group per frame
        return [(T, "g"), (1, "s"), (H, "s"), (1, "s"), (W, "s"), (1, "s")]
    if pattern == "time":  # one group per patch position
        return [(T, "s"), (1, "s"), (H, "g"), (1, "s"), (W, "g"), (1, "s")]
    if pattern == "width":  # one group per (frame, row)
        return [(T, "g"), (1, "s"), (H, "g"), (1, "s"), (W, "s"), (1, "s")]
    if pattern == "height":  # one group per (frame, column)
        return [(T, "g"), (1, "s"), (H, "s"), (1, "s"), (W, "g"), (1, "s")]
    if pattern == "local":  # one group per (H/lh x W/lw) window, all frames: T x lh x lw tokens
        lh, lw = local
        return [(T, "s"), (1, "s"), (H // lh, "g"), (lh, "s"), (W // lw, "g"), (lw, "s")]
    if pattern == "global":  # strided: tokens with the same (t, h, w) mod stride form a group
        s = stride
        return [(T // s, "s"), (s, "g"), (H // s, "s"), (s, "g"), (W // s, "s"), (s, "g")]
    raise AssertionError(pattern)


def group_tokens(x: torch.Tensor, factors) -> tuple[torch.Tensor, tuple]:
    """(B, T*H*W, D) patch tokens -> (B*G, L, D) sequences for the pattern's ``factors``."""
    B, _, D = x.shape
    sizes = [n for n, _ in factors]
    g_dims = [i + 1 for i, (_, k) in enumerate(factors) if k == "g"]
    s_dims = [i + 1 for i, (_, k) in enumerate(factors) if k == "s"]
    perm = [0, *g_dims, *s_dims, 7]
    x = x.reshape(B, *sizes, D).permute(perm)  # (B, *group factors, *sequence factors, D)
    G = math.prod([sizes[d - 1] for d in g_dims])  # a list, not a generator: torch.compile traces it
    return x.reshape(B * G, -1, D), (B, sizes, perm, x.shape)


def ungroup_tokens(x: torch.Tensor, state: tuple) -> torch.Tensor:
    """Inverse of :func:`group_tokens`: (B*G, L, D) -> (B, T*H*W, D)."""
    B, sizes, perm, grouped_shape = state
    inv = [perm.index(i) for i in range(len(perm))]
    x = x.reshape(grouped_shape).permute(inv)  # (B, T1, T2, H1, H2, W1, W2, D)
    return x.reshape(B, math.prod(sizes), x.shape[-1])


class SpaceTimeBlock(Block):
    """A TimeSformer block: the scheme's attention steps (each a pre-norm residual), then the MLP.

    It is a :class:`~mmzoo.layers.Block` (whose ``norm1/attn/norm2/mlp`` are its spatial step and MLP,
    under the same names), so ``model.compile`` compiles it, FSDP wraps it and the speed tests find it;
    its ``forward`` takes the patch grid instead of masks.

    Steps per scheme (norm, attention, optional zero-init projection, grouping, class token joins):

    * space_only / joint_space_time: ``norm1/attn`` over everything it is given (a frame, or the clip);
    * divided_space_time: ``temporal_norm1/temporal_attn/temporal_fc`` along time (class token left
      out), then ``norm1/attn`` per frame with the class token;
    * axial: the temporal step of divided attention, then ``norm1/attn`` along width and
      ``height_norm1/height_attn`` along height, the class token joining both spatial steps;
    * sparse_local_global: ``norm1/attn`` in local windows, then ``global_norm1/global_attn`` over
      the strided global groups, the class token joining both.

    ``temporal_fc`` starts at zero, so a block built from an image ViT is that ViT's block at first.

    Args:
        attention: the scheme (see :data:`SCHEMES`).
        local_size: L+G local window (patches).
        global_stride: L+G stride of the global lattice.
        proj_drop: dropout after the projections.
        attn_drop: attention-probability dropout.
        drop_path: stochastic depth.
        act_layer: MLP activation class.
        norm_layer: norm class.
        fused_attn: force the attention path (None = global default).

    ``dim``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``: as :class:`mmzoo.layers.Block`.
    """

    def __init__(self, dim: int, num_heads: int, attention: str, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 local_size: Optional[tuple[int, int]] = None, global_stride: int = 2, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, fused_attn: Optional[bool] = None) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                         drop_path=drop_path, act_layer=act_layer, norm_layer=norm_layer, fused_attn=fused_attn)
        self.attention = attention
        self.local_size = local_size
        self.global_stride = global_stride
        attn = lambda: Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                                 fused_attn=fused_attn)
        # (norm name, attention name, projection name or None, grouping pattern, class token joins)
        if attention in ("space_only", "joint_space_time"):
            steps = [("norm1", "attn", None, "all", True)]
        elif attention == "divided_space_time":
            steps = [("temporal_norm1", "temporal_attn", "temporal_fc", "time", False),
                     ("norm1", "attn", None, "space", True)]
        elif attention == "axial":
            steps = [("temporal_norm1", "temporal_attn", "temporal_fc", "time", False),
                     ("norm1", "attn", None, "width", True),
                     ("height_norm1", "height_attn", None, "height", True)]
        elif attention == "sparse_local_global":
            steps = [("norm1", "attn", None, "local", True),
                     ("global_norm1", "global_attn", None, "global", True)]
        else:
            raise ValueError(f"unknown attention scheme {attention!r}; valid choices: {list(SCHEMES)}")
        self.steps = steps
        for norm_name, attn_name, fc_name, _, _ in steps:
            if attn_name != "attn":  # norm1 / attn / norm2 / mlp come from Block
                setattr(self, norm_name, norm_layer(dim))
                setattr(self, attn_name, attn())
            if fc_name is not None:
                setattr(self, fc_name, nn.Linear(dim, dim))
        self.drop_path = self.drop_path1  # one stochastic-depth module for every residual

    def _step(self, x: torch.Tensor, thw: tuple[int, int, int], norm: nn.Module, attn: nn.Module,
              fc: Optional[nn.Module], pattern: str, with_cls: bool) -> torch.Tensor:
        """One residual attention step on (B, 1 + T*H*W, D)."""
        cls, tokens = x[:, :1], x[:, 1:]  # (B, 1, D), (B, THW, D)
        B = x.shape[0]
        local = self.local_size or (thw[1] // 2, thw[2] // 2)
        seqs, state = group_tokens(tokens, _factors(pattern, thw, local, self.global_stride))  # (B*G, L, D)
        G = seqs.shape[0] // B
        if with_cls:
            # the class token joins every group; its G outputs are averaged back into one token
            seqs = torch.cat([cls.repeat_interleave(G, dim=0), seqs], dim=1)  # (B*G, 1+L, D)
        out = attn(norm(seqs))
        if with_cls:
            cls_out = out[:, 0].reshape(B, G, -1).mean(dim=1, keepdim=True)  # (B, 1, D)
            out = out[:, 1:]
        else:
            cls_out = torch.zeros_like(cls)
        out = ungroup_tokens(out, state)  # (B, THW, D)
        if fc is not None:
            out = fc(out)  # zero-init projection of the temporal residual (patch tokens only, as the official code)
        return x + self.drop_path(torch.cat([cls_out, out], dim=1))

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
        """x: (B, 1 + T*H*W, D) class token + patch tokens in (t, h, w) order; thw = (T, H, W) patch grid."""
        if x.shape[1] != 1 + thw[0] * thw[1] * thw[2]:
            raise ValueError(f"SpaceTimeBlock expects 1 + T*H*W = {1 + thw[0] * thw[1] * thw[2]} tokens for the "
                             f"grid {tuple(thw)}, got {x.shape[1]} (extra tokens, e.g. peft=prompt, do not fit "
                             "the space-time grouping; use peft=adapter or peft=lora)")
        for norm_name, attn_name, fc_name, pattern, with_cls in self.steps:
            fc = getattr(self, fc_name) if fc_name is not None else None
            x = self._step(x, thw, getattr(self, norm_name), getattr(self, attn_name), fc, pattern, with_cls)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_arch("timesformer", TimeSformerConfig)
class TimeSformer(nn.Module):
    """Video classifier: per-frame ViT patch embedding, space and time embeddings, space-time blocks.

    Args:
        cfg: a :class:`TimeSformerConfig`.
    """

    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        norm_layer = get_norm_layer(cfg.norm_layer)
        self.num_classes = cfg.num_classes
        self.attention = cfg.attention
        self.num_frames = cfg.num_frames
        self.embed_dim = self.num_features = cfg.embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim,
                                      dynamic_img_size=True)
        gh, gw = self.patch_embed.grid_size
        if cfg.attention == "sparse_local_global":
            lh, lw = cfg.local_size or (gh // 2, gw // 2)
            s = cfg.global_stride
            if lh < 1 or lw < 1 or gh % lh or gw % lw or gh % s or gw % s or cfg.num_frames % s:
                raise ValueError(f"sparse_local_global needs the patch grid {(gh, gw)} divisible by "
                                 f"model.local_size={(lh, lw)} and the grid and model.num_frames="
                                 f"{cfg.num_frames} divisible by model.global_stride={s}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, cfg.embed_dim))
        # space-only never mixes frames, so it has no time embedding (nothing would train it)
        self.time_embed = (nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.embed_dim))
                           if cfg.attention != "space_only" else None)
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        self.grad_checkpointing = False
        self.blocks = build_blocks(
            cfg.depth, cfg.drop_path_rate, block_fn=SpaceTimeBlock, dim=cfg.embed_dim, num_heads=cfg.num_heads,
            attention=cfg.attention, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, local_size=cfg.local_size,
            global_stride=cfg.global_stride, proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate,
            act_layer=get_act_layer(cfg.act_layer), norm_layer=norm_layer)
        self.norm = norm_layer(cfg.embed_dim)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()
        if cfg.pretrained_image:
            from ..convert.timesformer import load_image_weights

            load_image_weights(self, cfg.pretrained_image)
            # the weights now live in this model: its checkpoints must not need the image file again
            self.init_source, self.cfg.pretrained_image = cfg.pretrained_image, None

    # -- init ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """ViT init (truncated normal .02), time embedding of ``cfg.time_embed_std`` (zero by default), and
        zero temporal projections so that temporal attention starts as an identity residual (the official
        code zeroes it in every block but the first; mmzoo zeroes all, which keeps the image-model
        equivalence exact)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.time_embed is not None and self.cfg.time_embed_std > 0:
            nn.init.trunc_normal_(self.time_embed, std=self.cfg.time_embed_std,
                                  a=-2 * self.cfg.time_embed_std, b=2 * self.cfg.time_embed_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:
            if hasattr(blk, "temporal_fc"):
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = self.cfg.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # -- forward ------------------------------------------------------------------------------------
    def _time_embed(self, T: int) -> torch.Tensor:
        """(1, T, D); nearest-neighbour resampled along time when T differs from the configured one, as
        the official code does."""
        te = self.time_embed
        if T != te.shape[1]:
            te = F.interpolate(te.transpose(1, 2), size=T, mode="nearest").transpose(1, 2)
        return te

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, C, T, H, W) -> normed tokens (B, 1 + N, D) (space-only: per-frame tokens averaged
        over time) or (B, 1 + T*N, D)."""
        if x.dim() != 5 or x.shape[1] != self.patch_embed.in_chans:
            raise ValueError(f"expected clips of shape (B, {self.patch_embed.in_chans}, T, H, W), got "
                             f"{tuple(x.shape)}")
        B, C, T, H, W = x.shape
        ph, pw = self.patch_embed.patch_size
        grid = (H // ph, W // pw)
        x = x.transpose(1, 2).reshape(B * T, C, H, W)  # frames as images
        x = self.patch_embed(x)  # (B*T, N, D)
        x = torch.cat([self.cls_token.expand(B * T, -1, -1), x], dim=1)  # (B*T, 1+N, D)
        pos = self.pos_embed
        if grid != self.patch_embed.grid_size:
            pos = resample_abs_pos_embed(pos, grid, self.patch_embed.grid_size, num_prefix_tokens=1)
        x = self.pos_drop(x + pos)
        if self.attention == "space_only":
            x = run_blocks(self.blocks, x, self.grad_checkpointing, thw=(1, *grid))  # frames are independent
            x = x.reshape(B, T, *x.shape[1:]).mean(dim=1)  # (B, 1+N, D): average over frames
            return self.norm(x)
        D = x.shape[-1]
        cls = x[::T, :1]  # (B, 1, D): frame 0's class token (all frames hold the same one)
        tokens = x[:, 1:].reshape(B, T, -1, D) + self._time_embed(T)[:, :, None]  # (B, T, N, D)
        x = torch.cat([cls, self.pos_drop(tokens).reshape(B, -1, D)], dim=1)  # (B, 1+T*N, D) in (t, h, w)
        x = run_blocks(self.blocks, x, self.grad_checkpointing, thw=(T, *grid))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits (B, num_classes), or the class-token features (B, D) when ``pre_logits``."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, C, T, H, W) -> logits (B, num_classes) (features when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


# -- presets ----------------------------------------------------------------------------------------
def _base(**kw) -> TimeSformerConfig:
    return TimeSformerConfig(**{**dict(embed_dim=768, depth=12, num_heads=12), **kw})


@register_model
def timesformer_base() -> TimeSformerConfig:
    """TimeSformer: ViT-B/16, 8 frames of 224x224, divided space-time attention (121.6M parameters)."""
    return _base(num_frames=8, img_size=224)


@register_model
def timesformer_hr() -> TimeSformerConfig:
    """TimeSformer-HR: 16 frames of 448x448."""
    return _base(num_frames=16, img_size=448)


@register_model
def timesformer_l() -> TimeSformerConfig:
    """TimeSformer-L: 96 frames of 224x224."""
    return _base(num_frames=96, img_size=224)


def _tiny(attention: str) -> TimeSformerConfig:
    # 8 frames of 32x32, 8x8 patches (a 4x4 grid): trains on moving_shapes in minutes on a CPU. The time
    # embedding starts at the scale of the patch tokens (time_embed_std=1): with the paper's zero init,
    # divided attention stayed at chance on moving_shapes for 3,000 steps from scratch and for 1,000 steps
    # when built from an image ViT
    return TimeSformerConfig(img_size=32, patch_size=8, num_frames=8, num_classes=6, embed_dim=64, depth=4,
                             num_heads=4, mlp_ratio=2.0, attention=attention, time_embed_std=1.0)


@register_model
def timesformer_tiny() -> TimeSformerConfig:
    """CPU-size TimeSformer, divided space-time attention."""
    return _tiny("divided_space_time")


@register_model
def timesformer_tiny_space_only() -> TimeSformerConfig:
    """CPU-size TimeSformer, space-only attention (S)."""
    return _tiny("space_only")


@register_model
def timesformer_tiny_joint() -> TimeSformerConfig:
    """CPU-size TimeSformer, joint space-time attention (ST)."""
    return _tiny("joint_space_time")


@register_model
def timesformer_tiny_divided() -> TimeSformerConfig:
    """CPU-size TimeSformer, divided space-time attention (T+S)."""
    return _tiny("divided_space_time")


@register_model
def timesformer_tiny_local_global() -> TimeSformerConfig:
    """CPU-size TimeSformer, sparse local-global attention (L+G)."""
    return _tiny("sparse_local_global")


@register_model
def timesformer_tiny_axial() -> TimeSformerConfig:
    """CPU-size TimeSformer, axial attention (T+W+H)."""
    return _tiny("axial")
