"""Causal text transformer: the text tower of CLIP (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision", sec. 2.4) and of the models built on it.

Token embedding + learned positions -> causal pre-norm blocks (``mmzoo.layers.Block``) -> final norm
-> one pooled token -> linear projection to the joint embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..layers import build_blocks, get_mlp_layer, get_norm_layer, run_blocks
from ..layers.activations import get_act_layer

POOL_TYPES = ("argmax", "eot_id", "last")


@dataclass
class TextConfig:
    context_length: int = 77  # maximum number of tokens (learned positions)
    vocab_size: int = 49408  # token embedding rows (49408: CLIP's BPE vocabulary)
    embed_dim: int = 512  # width
    depth: int = 12  # number of blocks
    num_heads: int = 8  # attention heads
    mlp_ratio: float = 4.0  # MLP inner width / embed_dim
    qkv_bias: bool = True  # bias on q, k, v projections
    init_values: Optional[float] = None  # LayerScale init (None: off)
    pool_type: str = "argmax"  # "argmax" (token with the highest id: CLIP's EOT), "eot_id" (first eot_id), "last"
    eot_id: Optional[int] = None  # end-of-text id, needed by pool_type="eot_id"
    proj_bias: bool = False  # bias on the output projection (CLIP: none)
    norm_layer: str = "layernorm_1e5"  # see mmzoo.layers.get_norm_layer (CLIP: torch's eps 1e-5)
    act_layer: str = "gelu"  # see mmzoo.models.vit.ACT_LAYERS ("quick_gelu" for OpenAI weights)
    mlp_layer: str = "mlp"  # "mlp", "swiglu", "geglu"
    proj_drop_rate: float = 0.0  # dropout after attention / MLP projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last block (linear ramp)


class TextTransformer(nn.Module):
    """Text encoder: token ids (B, L) -> pooled, projected features (B, output_dim).

    Args:
        cfg: a :class:`TextConfig`.
        output_dim: width of the output projection (the joint embedding of CLIP); 0 = no projection,
            the pooled feature (B, embed_dim) is returned as it is.
    """

    def __init__(self, cfg: TextConfig, output_dim: int = 0) -> None:
        super().__init__()
        if cfg.pool_type not in POOL_TYPES:
            raise ValueError(f"text pool_type must be one of {POOL_TYPES} (got {cfg.pool_type!r})")
        if cfg.pool_type == "eot_id" and cfg.eot_id is None:
            raise ValueError("text pool_type='eot_id' needs the config key text.eot_id (the end-of-text token id)")
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.embed_dim = cfg.embed_dim
        self.output_dim = output_dim or cfg.embed_dim
        norm_layer = get_norm_layer(cfg.norm_layer)

        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.embed_dim))
        self.grad_checkpointing = False
        self.blocks = build_blocks(
            cfg.depth, cfg.drop_path_rate, dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias, init_values=cfg.init_values, proj_drop=cfg.proj_drop_rate,
            attn_drop=cfg.attn_drop_rate, norm_layer=norm_layer, act_layer=get_act_layer(cfg.act_layer),
            mlp_layer=get_mlp_layer(cfg.mlp_layer))
        self.norm = norm_layer(cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, output_dim, bias=cfg.proj_bias) if output_dim else nn.Identity()
        self.init_weights()

    # -- init ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """CLIP's text init: small embeddings, attention at width^-0.5, residual outputs scaled down by
        sqrt(2 * depth) so the residual stream keeps its variance with depth (GPT-2 style)."""
        width, depth = self.cfg.embed_dim, self.cfg.depth
        attn_std = width ** -0.5
        proj_std = attn_std * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
            nn.init.normal_(blk.attn.proj.weight, std=proj_std)
            nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if isinstance(self.proj, nn.Linear):
            nn.init.normal_(self.proj.weight, std=width ** -0.5)
            if self.proj.bias is not None:
                nn.init.zeros_(self.proj.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (besides norms and biases)."""
        return {"pos_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # -- forward ------------------------------------------------------------------------------------
    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) with L <= context_length -> normed token features (B, L, embed_dim)."""
        if tokens.dim() != 2:
            raise ValueError(f"text tokens must have shape (B, L), got {tuple(tokens.shape)}")
        L = tokens.shape[1]
        if L > self.context_length:
            raise ValueError(f"text tokens have length {L} but the text tower's context_length is "
                             f"{self.context_length}: tokenize with context_length={self.context_length} "
                             f"or build the model with text.context_length >= {L}")
        x = self.token_embed(tokens) + self.pos_embed[:, :L]  # (B, L, D)
        # Causal attention through `is_causal` (no dense mask, so SDPA keeps its flash kernel). No
        # key-padding mask is needed: padding comes after the end-of-text token, and under a causal
        # mask no position attends to later ones, so the pooled EOT feature never sees the padding.
        x = run_blocks(self.blocks, x, self.grad_checkpointing, is_causal=True)
        return self.norm(x)

    def pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Normed features (B, L, D) -> the feature at the end-of-text position (B, D)."""
        if self.cfg.pool_type == "last":
            return x[:, -1]
        if self.cfg.pool_type == "argmax":
            # CLIP's EOT has the highest id of the vocabulary, so argmax finds it (first one on ties)
            idx = tokens.argmax(dim=-1)
        else:
            is_eot = tokens == self.cfg.eot_id
            # first EOT; a sequence without one (truncated) pools its last position, without a host sync
            idx = torch.where(is_eot.any(dim=-1), is_eot.int().argmax(dim=-1), tokens.shape[1] - 1)
        return x[torch.arange(x.shape[0], device=x.device), idx]  # (B, D)

    def forward_head(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Normed features (B, L, D) -> projected pooled feature (B, output_dim)."""
        return self.proj(self.pool(x, tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> text features (B, output_dim), not normalised."""
        return self.forward_head(self.forward_features(tokens), tokens)
