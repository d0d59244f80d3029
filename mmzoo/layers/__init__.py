"""Shared building blocks: one vocabulary for every modality."""
from .activations import ACT_LAYERS, QuickGELU, get_act_layer
from .attention import Attention, KVCache, build_attn_mask, set_fused_attn, use_fused_attn
from .block import Block, Transformer, build_blocks, run_blocks
from .drop import DropPath, LayerScale, drop_path
from .mlp import GEGLU, GluMlp, Mlp, SwiGLU, get_mlp_layer
from .moe import MoE
from .norm import LayerNorm, RMSNorm, get_norm_layer
from .pos_embed import (RotaryEmbedding, resample_abs_pos_embed, sincos_2d_pos_embed,
                        sinusoidal_pos_embed)
from .patch_embed import PatchEmbed
from .points import (MiniPointNet, chamfer_distance, farthest_point_sample, group_points, index_points,
                     knn)

__all__ = [
    "ACT_LAYERS", "QuickGELU", "get_act_layer",
    "Attention", "KVCache", "build_attn_mask", "set_fused_attn", "use_fused_attn",
    "Block", "Transformer", "build_blocks", "run_blocks", "DropPath", "LayerScale", "drop_path",
    "Mlp", "GluMlp", "SwiGLU", "GEGLU", "get_mlp_layer",
    "LayerNorm", "RMSNorm", "get_norm_layer",
    "RotaryEmbedding", "resample_abs_pos_embed", "sincos_2d_pos_embed", "sinusoidal_pos_embed",
    "PatchEmbed",
    "MiniPointNet", "chamfer_distance", "farthest_point_sample", "group_points", "index_points", "knn",
    "MoE",
]
