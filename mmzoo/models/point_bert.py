"""Point-BERT (Yu et al., CVPR 2022, "Point-BERT: Pre-training 3D Point Cloud Transformers with Masked
Point Modeling").

Two models, trained in two stages:

* :class:`PointDVAE`, the tokenizer: clouds are split into ``num_groups`` local patches (FPS + kNN),
  each patch is embedded by a mini-PointNet, a DGCNN over the patch centres turns the embeddings into
  logits over a ``num_tokens``-entry codebook; a Gumbel-softmax sample of the codebook goes through a
  second DGCNN and a FoldingNet-style decoder that rebuilds each patch (coarse, then fine points).
* :class:`PointBERT`, the transformer: the same patches, embedded by its own mini-PointNet, plus an MLP
  embedding of the patch centres that is re-added before every block. Pre-training replaces a
  contiguous block of patches by a learned mask token and predicts the dVAE's token ids of the masked
  patches (``mmzoo.tasks.point_bert``); fine-tuning classifies ``[cls, max-pool of patches]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import MiniPointNet, build_blocks, group_points, index_points, knn, run_blocks
from ._registry import register_arch, register_model


# --------------------------------------------------------------------------------------------------
# dVAE tokenizer
# --------------------------------------------------------------------------------------------------
class DGCNN(nn.Module):
    """Edge convolutions over the patch graph (kNN of patch centres), as Point-BERT's dVAE uses them.

    Each layer concatenates ``[f_neighbour - f_centre, f_centre]`` over the ``k`` nearest centres, applies
    a 1x1 conv + GroupNorm + LeakyReLU and max-pools over the neighbours; the outputs of all layers are
    concatenated and projected to ``out_dim``.

    Args:
        in_dim: input feature width.
        out_dim: output width.
        dims: widths of the edge-conv layers (the input is first projected to dims[0] // 2).
        k: neighbours per patch.
        norm: GroupNorm after every edge conv (Point-BERT); ``False`` leaves it out.
    """

    def __init__(self, in_dim: int, out_dim: int, dims: tuple[int, ...] = (256, 512, 512, 1024), k: int = 4,
                 norm: bool = True) -> None:
        super().__init__()
        self.k = k
        self.input_trans = nn.Conv1d(in_dim, dims[0] // 2, 1)
        layers, prev = [], dims[0] // 2
        for d in dims:
            layers.append(nn.Sequential(nn.Conv2d(2 * prev, d, 1, bias=not norm),
                                        nn.GroupNorm(4, d) if norm else nn.Identity(), nn.LeakyReLU(0.2)))
            prev = d
        self.layers = nn.ModuleList(layers)
        self.proj = nn.Sequential(nn.Conv1d(sum(dims), out_dim, 1, bias=not norm),
                                  nn.GroupNorm(4, out_dim) if norm else nn.Identity(), nn.LeakyReLU(0.2))

    def forward(self, f: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """f (B, G, in_dim), centers (B, G, 3) -> (B, G, out_dim)."""
        idx = knn(centers, centers, min(self.k, centers.shape[1]))  # (B, G, k), computed once
        f = self.input_trans(f.transpose(1, 2)).transpose(1, 2)  # (B, G, C)
        feats = []
        for layer in self.layers:
            nbr = index_points(f, idx)  # (B, G, k, C)
            ctr = f.unsqueeze(2).expand_as(nbr)
            edge = torch.cat([nbr - ctr, ctr], dim=-1).permute(0, 3, 1, 2)  # (B, 2C, G, k)
            f = layer(edge).amax(dim=-1).transpose(1, 2)  # (B, G, C')
            feats.append(f)
        return self.proj(torch.cat(feats, dim=-1).transpose(1, 2)).transpose(1, 2)


class FoldingDecoder(nn.Module):
    """Rebuilds a patch from one feature (Point-BERT's dVAE ``Decoder``, after PCN / FoldingNet): an MLP
    predicts ``num_fine // 4`` coarse points, a 2x2 grid folds each coarse point into 4 fine ones.

    Args:
        dim: feature width.
        num_fine: points per rebuilt patch (a multiple of 4).
        hidden: MLP width of the coarse branch.
        fold_hidden: width of the folding convolutions.
    """

    def __init__(self, dim: int, num_fine: int, hidden: int = 1024, fold_hidden: int = 512) -> None:
        super().__init__()
        if num_fine % 4:
            raise ValueError(f"the dVAE decoder folds each coarse point into 4; group_size={num_fine} "
                             "must be a multiple of 4")
        self.num_fine, self.num_coarse = num_fine, num_fine // 4
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 3 * self.num_coarse))
        self.final_conv = nn.Sequential(
            nn.Conv1d(dim + 3 + 2, fold_hidden, 1), nn.BatchNorm1d(fold_hidden), nn.ReLU(inplace=True),
            nn.Conv1d(fold_hidden, fold_hidden, 1), nn.BatchNorm1d(fold_hidden), nn.ReLU(inplace=True),
            nn.Conv1d(fold_hidden, 3, 1))
        a = torch.linspace(-0.05, 0.05, 2)
        self.register_buffer("folding_seed", torch.stack(torch.meshgrid(a, a, indexing="ij")).reshape(2, 4),
                             persistent=False)  # (2, 4) grid offsets

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (B, G, dim) -> coarse (B, G, num_fine // 4, 3), fine (B, G, num_fine, 3)."""
        B, G, C = f.shape
        f = f.reshape(B * G, C)
        coarse = self.mlp(f).reshape(B * G, self.num_coarse, 3)
        point_feat = coarse.unsqueeze(2).expand(-1, -1, 4, -1).reshape(B * G, self.num_fine, 3)
        seed = self.folding_seed.t().unsqueeze(0).expand(B * G, self.num_coarse, 4, 2).reshape(B * G, self.num_fine, 2)
        feat = f.unsqueeze(1).expand(-1, self.num_fine, -1)
        x = torch.cat([feat, seed, point_feat], dim=-1).transpose(1, 2)  # (BG, C + 5, num_fine)
        fine = self.final_conv(x).transpose(1, 2) + point_feat
        return coarse.reshape(B, G, self.num_coarse, 3), fine.reshape(B, G, self.num_fine, 3)


@dataclass
class PointDVAEConfig:
    num_groups: int = 64  # patches per cloud (FPS centres)
    group_size: int = 32  # points per patch (kNN)
    encoder_dim: int = 256  # mini-PointNet patch embedding width
    pointnet_hidden: tuple[int, int] = (128, 256)  # widths of the mini-PointNet's first MLP
    pointnet_hidden2: int = 512  # inner width of its second MLP
    num_tokens: int = 8192  # codebook entries (the vocabulary of masked point modeling)
    tokens_dim: int = 256  # codebook vector width
    decoder_dim: int = 256  # width of the second DGCNN / decoder input
    dgcnn_dims: tuple[int, ...] = (256, 512, 512, 1024)  # edge-conv widths of both DGCNNs
    dgcnn_k: int = 4  # neighbouring patches per edge conv
    decoder_dgcnn_norm: bool = True  # GroupNorm in the decoder-side DGCNN (Point-BERT); see point_bert_dvae_tiny
    decoder_hidden: int = 1024  # coarse-branch MLP width
    fold_hidden: int = 512  # folding conv width


class DVAEOutput(NamedTuple):
    neighborhood: torch.Tensor  # (B, G, K, 3) input patches, relative to their centres
    centers: torch.Tensor  # (B, G, 3)
    logits: torch.Tensor  # (B, G, num_tokens)
    coarse: torch.Tensor  # (B, G, K // 4, 3) rebuilt coarse patches (relative)
    fine: torch.Tensor  # (B, G, K, 3) rebuilt fine patches (relative)


@register_arch("point_bert_dvae", PointDVAEConfig)
class PointDVAE(nn.Module):
    """Discrete VAE point tokenizer of Point-BERT (see the module docstring)."""

    def __init__(self, cfg: PointDVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MiniPointNet(cfg.encoder_dim, tuple(cfg.pointnet_hidden), cfg.pointnet_hidden2)
        self.dgcnn_1 = DGCNN(cfg.encoder_dim, cfg.num_tokens, tuple(cfg.dgcnn_dims), cfg.dgcnn_k)
        self.codebook = nn.Parameter(torch.randn(cfg.num_tokens, cfg.tokens_dim))
        self.dgcnn_2 = DGCNN(cfg.tokens_dim, cfg.decoder_dim, tuple(cfg.dgcnn_dims), cfg.dgcnn_k, cfg.decoder_dgcnn_norm)
        self.decoder = FoldingDecoder(cfg.decoder_dim, cfg.group_size, cfg.decoder_hidden, cfg.fold_hidden)

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3) -> neighborhood (B, G, K, 3), centers (B, G, 3)."""
        return group_points(points, self.cfg.num_groups, self.cfg.group_size)

    def encode(self, neighborhood: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Token logits (B, G, num_tokens) of grouped patches."""
        return self.dgcnn_1(self.encoder(neighborhood), centers)

    @torch.no_grad()
    def tokenize(self, neighborhood: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Token ids (B, G): the most likely codebook entry of each patch (masked point modeling targets)."""
        return self.encode(neighborhood, centers).argmax(-1)

    def decode(self, codes: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes (B, G, num_tokens) one-hot or soft -> coarse, fine patches (relative coordinates)."""
        z = codes @ self.codebook  # (B, G, tokens_dim)
        return self.decoder(self.dgcnn_2(z, centers))

    def forward(self, points: torch.Tensor, temperature: float = 1.0, noise: float = 1.0) -> DVAEOutput:
        """points (B, N, 3). Training draws a soft Gumbel-softmax sample at ``temperature``, its Gumbel noise
        scaled by ``noise`` (1: the standard sample; 0: a plain softmax); eval decodes the arg-max token of
        each patch (what the tokenizer hands to Point-BERT)."""
        neighborhood, centers = self.group(points)
        logits = self.encode(neighborhood, centers)
        if self.training:
            # drawn as F.gumbel_softmax draws them (noise=1 is its sample, bit for bit)
            gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_().log()
            codes = ((logits + noise * gumbels) / temperature).softmax(-1)
        else:
            codes = F.one_hot(logits.argmax(-1), self.cfg.num_tokens).to(logits.dtype)
        coarse, fine = self.decode(codes, centers)
        return DVAEOutput(neighborhood, centers, logits, coarse, fine)


# --------------------------------------------------------------------------------------------------
# Point-BERT transformer
# --------------------------------------------------------------------------------------------------
@dataclass
class PointBERTConfig:
    num_groups: int = 64  # patches per cloud (must match the dVAE used for pre-training)
    group_size: int = 32  # points per patch
    encoder_dim: int = 256  # mini-PointNet width before the projection to `dim`
    pointnet_hidden: tuple[int, int] = (128, 256)  # widths of the mini-PointNet's first MLP
    pointnet_hidden2: int = 512  # inner width of its second MLP
    dim: int = 384  # transformer width
    depth: int = 12  # number of blocks
    num_heads: int = 6  # attention heads
    mlp_ratio: float = 4.0  # MLP inner width / dim
    qkv_bias: bool = False  # Point-BERT's blocks have no q/k/v bias
    drop_path_rate: float = 0.1  # stochastic depth of the last block
    pos_hidden: int = 128  # hidden width of the centre-position MLP
    num_classes: int = 40  # classifier outputs; 0 = no head (pre-training, features only)
    head_hidden: int = 256  # hidden width of the classification head
    head_drop: float = 0.5  # dropout inside the head
    fused_attn: Optional[bool] = None  # force the attention path (None: global default)


def block_mask(centers: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Point-BERT's block masking: per cloud, the ``round(ratio * G)`` patches nearest to a random patch
    centre (a contiguous region, harder to fill in than scattered patches).

    Args:
        centers: (B, G, 3) patch centres.
        ratio: (B,) masking ratio of each cloud.
    Returns:
        bool mask (B, G), True = masked.
    """
    B, G, _ = centers.shape
    seed = torch.randint(G, (B,), device=centers.device)
    d = (centers - centers[torch.arange(B, device=centers.device), seed].unsqueeze(1)).norm(dim=-1)  # (B, G)
    rank = d.argsort(-1).argsort(-1)  # 0 = the seed itself
    return rank < (ratio * G).round().long().unsqueeze(1)


@register_arch("point_bert", PointBERTConfig)
class PointBERT(nn.Module):
    """Point-BERT transformer over point patches (see the module docstring)."""

    def __init__(self, cfg: PointBERTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.patch_embed = MiniPointNet(cfg.encoder_dim, tuple(cfg.pointnet_hidden), cfg.pointnet_hidden2)
        self.reduce_dim = nn.Linear(cfg.encoder_dim, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, cfg.pos_hidden), nn.GELU(), nn.Linear(cfg.pos_hidden, cfg.dim))
        self.grad_checkpointing = False  # activation checkpointing of every block
        self.blocks = build_blocks(cfg.depth, cfg.drop_path_rate, dim=cfg.dim, num_heads=cfg.num_heads,
                                   mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, fused_attn=cfg.fused_attn)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = self._build_head(cfg.num_classes)
        self.init_weights()

    def _build_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        c = self.cfg
        # Point-BERT's fine-tuning head on [cls, max-pool]: Linear-BN-ReLU-Dropout-Linear
        return nn.Sequential(nn.Linear(2 * c.dim, c.head_hidden), nn.BatchNorm1d(c.head_hidden),
                             nn.ReLU(inplace=True), nn.Dropout(c.head_drop), nn.Linear(c.head_hidden, num_classes))

    def init_weights(self) -> None:
        for t in (self.cls_token, self.cls_pos, self.mask_token):
            nn.init.trunc_normal_(t, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "cls_pos", "mask_token"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = self._build_head(num_classes)

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3) -> neighborhood (B, G, K, 3), centers (B, G, 3)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"PointBERT expects points of shape (B, N, 3), got {tuple(points.shape)}")
        return group_points(points, self.cfg.num_groups, self.cfg.group_size)

    def forward_groups(self, neighborhood: torch.Tensor, centers: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Grouped patches -> normalised tokens (B, 1 + G, dim), the class token first.

        ``mask`` (B, G) bool replaces the embeddings of masked patches by the mask token (their centre
        positions stay visible, as in the paper).
        """
        x = self.reduce_dim(self.patch_embed(neighborhood))  # (B, G, dim)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + G, dim)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(centers)], dim=1)
        for blk in self.blocks:
            # positions are re-added at every block (Point-BERT's TransformerEncoder)
            x = run_blocks([blk], x + pos, self.grad_checkpointing)
        return self.norm(x)

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) -> tokens (B, 1 + G, dim)."""
        return self.forward_groups(*self.group(points))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, 1 + G, dim) -> logits (B, num_classes), or the pooled (B, 2 dim) feature."""
        x = torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=-1)
        return x if pre_logits else self.head(x)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(points))


# --------------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------------
@register_model
def point_bert_dvae() -> PointDVAEConfig:
    """The released Point-BERT tokenizer: 64 x 32 patches, 8192 tokens of 256 dims."""
    return PointDVAEConfig()


@register_model
def point_bert_dvae_tiny() -> PointDVAEConfig:
    """A CPU-sized tokenizer for 512-point clouds: 32 x 32 patches, 512 tokens."""
    # 32 points per patch as released: the folding decoder rebuilds 8 coarse points x 4, and every point
    # lies in about two patches (64 x 32 of 1024 points there). 16-point patches (coarse 4 x 4) rebuilt to
    # only x0.61 of the initial Chamfer-L1 (docs/models/point_bert.md)
    # no GroupNorm in the decoder-side DGCNN: with it, this size's reconstructions collapsed onto the patch
    # centres within its CPU budget (benchmarks/point_bert_dvae_ablation.py, docs/models/point_bert.md)
    return PointDVAEConfig(num_groups=32, group_size=32, encoder_dim=64, pointnet_hidden=(32, 64),
                           pointnet_hidden2=128, num_tokens=512, tokens_dim=64, decoder_dim=64,
                           dgcnn_dims=(32, 64, 64, 128), decoder_hidden=128, fold_hidden=64,
                           decoder_dgcnn_norm=False)


@register_model
def point_bert() -> PointBERTConfig:
    """Point-BERT as released: 384 wide, 12 blocks, 6 heads over 64 x 32 patches."""
    return PointBERTConfig()


@register_model
def point_bert_tiny() -> PointBERTConfig:
    """A CPU-sized Point-BERT for 512-point clouds: 128 wide, 4 blocks, 4 heads, 32 x 32 patches."""
    return PointBERTConfig(num_groups=32, group_size=32, encoder_dim=64, pointnet_hidden=(32, 64),
                           pointnet_hidden2=128, dim=128, depth=4, num_heads=4, drop_path_rate=0.1,
                           pos_hidden=64, head_hidden=128)
