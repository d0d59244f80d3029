"""CoCa (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models").

Image encoder (the zoo ViT, all tokens) -> two task-specific attentional poolers side by side, as in the
paper's Algorithm 1 (sec. 3.2): ``con_feature = con_attn_pool(img_feature)`` with one query gives the
contrastive image embedding, ``cap_feature = cap_attn_pool(img_feature)`` with N queries gives the tokens
the captioning decoder cross-attends to; both read the image encoder's tokens (``pooler="parallel"``).
``pooler="cascade"`` instead feeds the caption pooler's N outputs to the contrastive pooler (the
contrastive query reads the caption queries, not the image tokens); it is kept for checkpoints written
before the pooler mode was recorded, which all used it.

The text decoder is split: unimodal layers (causal, no image) produce the text embedding from a CLS
token; multimodal layers (causal + cross-attention to the caption pooler's outputs) predict the next
token. The CLS token is inserted right after each sequence's end-of-text token and gets the position
embedding of that slot like every other token (the table has ``context_length + 1`` rows, room for a CLS
after a full-length text). Under plain causal attention it sees exactly the real tokens (never the
padding), so the unimodal layers keep ``is_causal`` (SDPA's flash kernel) instead of a dense per-sample
mask, and the text outputs up to EOT are unaffected by it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Attention, KVCache, build_blocks, get_norm_layer, run_blocks
from . import generation
from ._registry import register_arch, register_model
from .clip import build_vision_tower, clip_vision_config
from .text import TextConfig
from ..layers.activations import get_act_layer
from .vit import ViTConfig


POOLERS = ("parallel", "cascade")


def _coca_vision(**kwargs: Any) -> ViTConfig:
    return clip_vision_config(global_pool="", **kwargs)  # keep every token for the poolers


@dataclass
class CoCaConfig:
    embed_dim: int = 512  # joint image-text embedding width
    vision: ViTConfig = field(default_factory=_coca_vision)  # image tower; num_classes 0, global_pool ""
    text: TextConfig = field(default_factory=lambda: TextConfig(depth=6))  # unimodal text layers
    multimodal_depth: int = 6  # causal decoder layers with cross-attention to the caption queries
    num_caption_queries: int = 256  # caption pooler queries (the paper's n_query = 256)
    pooler_heads: int = 8  # heads of the attentional poolers
    pooler: str = "parallel"  # "parallel": both poolers read the image tokens (Algorithm 1); "cascade": the
    #                           contrastive pooler reads the caption pooler's outputs (older checkpoints)
    cls_pos_embed: bool = True  # the text CLS token gets its slot's position embedding (False: none, as older
    #                             checkpoints were trained)
    tie_embeddings: bool = False  # LM head shares the token embedding matrix
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's temperature init
    max_logit_scale: float = math.log(100)  # clamp when used

    # values a stored config without these fields was trained with (checkpoints before they existed)
    missing_field_defaults: ClassVar[dict[str, Any]] = {"pooler": "cascade", "cls_pos_embed": False}


class CoCaOutput(NamedTuple):
    """What :meth:`CoCa.forward` returns, always.

    image_features, text_features: (B, embed_dim), L2-normalised (contrastive).
    logit_scale: the contrastive logit multiplier.
    logits: (B, L, vocab) next-token logits of the captioning decoder (position t predicts token t+1).
    """

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    logits: torch.Tensor


class AttentionalPooler(nn.Module):
    """``num_queries`` learned queries cross-attending to a token sequence (Lee et al. 2019, "Set
    Transformer" PMA), as CoCa's task-specific poolers."""

    def __init__(self, dim: int, context_dim: int, num_queries: int, num_heads: int, norm_layer) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * dim ** -0.5)
        self.norm_context = norm_layer(context_dim)
        self.attn = Attention(dim, num_heads, cross_attn=True, context_dim=context_dim)
        self.norm = norm_layer(dim)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """(B, S, context_dim) -> (B, num_queries, dim)."""
        q = self.queries.expand(context.shape[0], -1, -1)
        return self.norm(self.attn(q, context=self.norm_context(context)))


@register_arch("coca", CoCaConfig)
class CoCa(nn.Module):
    """Contrastive captioner.

    Args:
        cfg: a :class:`CoCaConfig`.
    """

    def __init__(self, cfg: CoCaConfig) -> None:
        super().__init__()
        if cfg.pooler not in POOLERS:
            raise ValueError(f"model.pooler must be one of {list(POOLERS)}, got {cfg.pooler!r}")
        self.cfg = cfg
        t = cfg.text
        width = t.embed_dim
        norm_layer = get_norm_layer(t.norm_layer)
        self.visual, _ = build_vision_tower(cfg.embed_dim, cfg.vision)
        vis_width = cfg.vision.embed_dim
        self.caption_pooler = AttentionalPooler(width, vis_width, cfg.num_caption_queries, cfg.pooler_heads,
                                                norm_layer)
        con_context = vis_width if cfg.pooler == "parallel" else width  # image tokens / caption pooler outputs
        self.contrastive_pooler = AttentionalPooler(width, con_context, 1, cfg.pooler_heads, norm_layer)
        self.visual_proj = nn.Linear(width, cfg.embed_dim, bias=False)

        self.token_embed = nn.Embedding(t.vocab_size, width)
        num_pos = t.context_length + 1 if cfg.cls_pos_embed else t.context_length  # + the CLS after a full text
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        block_kw = dict(dim=width, num_heads=t.num_heads, mlp_ratio=t.mlp_ratio, qkv_bias=t.qkv_bias,
                        norm_layer=norm_layer, act_layer=get_act_layer(t.act_layer))
        self.unimodal_blocks = build_blocks(t.depth, **block_kw)
        self.text_norm = norm_layer(width)
        self.text_proj = nn.Linear(width, cfg.embed_dim, bias=False)
        self.multimodal_blocks = build_blocks(cfg.multimodal_depth, cross_attn=True, context_dim=width, **block_kw)
        self.decoder_norm = norm_layer(width)
        self.lm_head = nn.Linear(width, t.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embed.weight
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.grad_checkpointing = False  # text decoder stacks (the image tower has its own flag)
        self.init_weights()

    def init_weights(self) -> None:
        """CLIP-style text init: small embeddings, linears trunc-normal .02."""
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        nn.init.normal_(self.cls_token, std=0.02)
        for blocks in (self.unimodal_blocks, self.multimodal_blocks):
            for m in blocks.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for lin in (self.visual_proj, self.text_proj):
            nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale", "pos_embed", "cls_token", "caption_pooler.queries", "contrastive_pooler.queries"} | {
            f"visual.{n}" for n in self.visual.no_weight_decay()}

    def get_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.cfg.max_logit_scale).exp()

    # -- towers -------------------------------------------------------------------------------------
    def _image_queries(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (caption queries (B, Q, width), contrastive embedding (B, embed_dim))."""
        tokens = self.visual.forward_features(images)  # (B, 1+N, vis_width)
        caption_q = self.caption_pooler(tokens)  # (B, Q, width)
        source = tokens if self.cfg.pooler == "parallel" else caption_q
        contrastive = self.contrastive_pooler(source)[:, 0]  # (B, width)
        return caption_q, self.visual_proj(contrastive)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self._image_queries(images)[1]
        return F.normalize(x, dim=-1) if normalize else x

    def _embed_tokens(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        L = tokens.shape[1]
        if offset + L > self.cfg.text.context_length:
            raise ValueError(f"text tokens reach position {offset + L} but the context length is "
                             f"{self.cfg.text.context_length}")
        return self.token_embed(tokens) + self.pos_embed[:, offset:offset + L]  # (B, L, width)

    def _eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.cfg.text
        if t.pool_type == "eot_id":
            return (tokens == t.eot_id).int().argmax(dim=1)
        return tokens.argmax(dim=1)  # CLIP's convention: EOT has the largest id

    def _unimodal(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L) -> (text token states (B, L, width), CLS state (B, width))."""
        x = self._embed_tokens(tokens)
        B, L, D = x.shape
        cls_at = self._eot_positions(tokens) + 1  # (B,)
        j = torch.arange(L + 1, device=x.device)[None, :]  # (1, L+1)
        src = (j - (j > cls_at[:, None]).long()).clamp(max=L - 1)  # token shifted right after the CLS
        seq = x.gather(1, src[..., None].expand(-1, -1, D))  # (B, L+1, D)
        is_cls = (j == cls_at[:, None])[..., None]
        cls = self.cls_token.expand(B, 1, D)
        if self.cfg.cls_pos_embed:
            cls = cls + self.pos_embed[0, cls_at][:, None]  # (B, 1, D): the position of its slot
        seq = torch.where(is_cls, cls.expand(B, L + 1, D), seq)
        seq = run_blocks(self.unimodal_blocks, seq, self.grad_checkpointing, is_causal=True)
        cls = seq[torch.arange(B, device=x.device), cls_at]  # (B, D)
        i = j[:, :L]  # original token positions
        text_states = seq.gather(1, (i + (i >= cls_at[:, None]).long())[..., None].expand(-1, -1, D))  # (B, L, D)
        return text_states, cls

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text_proj(self.text_norm(self._unimodal(tokens)[1]))
        return F.normalize(x, dim=-1) if normalize else x

    def _decode(self, text_states: torch.Tensor, caption_q: torch.Tensor,
                kv_caches: Optional[list[tuple[KVCache, KVCache]]] = None) -> torch.Tensor:
        x = run_blocks(self.multimodal_blocks, text_states, self.grad_checkpointing, kv_caches, context=caption_q,
                       is_causal=True)
        return self.lm_head(self.decoder_norm(x))  # (B, L, vocab)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CoCaOutput:
        """Images (B, C, H, W), tokens (B, L) -> contrastive features and next-token logits (B, L, V)."""
        caption_q, image_emb = self._image_queries(images)
        text_states, cls = self._unimodal(tokens)
        text_emb = self.text_proj(self.text_norm(cls))
        logits = self._decode(text_states, caption_q)
        return CoCaOutput(F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1), self.get_logit_scale(),
                          logits)

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, sot_token_id: int, eot_token_id: int, pad_token_id: int = 0,
                 max_new_tokens: Optional[int] = None, strategy: str = "greedy", num_beams: int = 4,
                 top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Caption images with the KV-cached decoder: ``strategy`` is "greedy", "beam" or "sample".

        Returns (B, 1 + n) token ids starting with SOT; ended sequences are padded with ``pad_token_id``.
        """
        if strategy not in ("greedy", "beam", "sample"):
            raise ValueError(f"strategy must be 'greedy', 'beam' or 'sample', got {strategy!r}")
        max_new = max_new_tokens or self.cfg.text.context_length - 1
        max_new = min(max_new, self.cfg.text.context_length - 1)
        caption_q, _ = self._image_queries(images)
        state = {"q": caption_q, "pos": 0,
                 "uni": [(KVCache(), KVCache(static=True)) for _ in self.unimodal_blocks],
                 "multi": [(KVCache(), KVCache(static=True)) for _ in self.multimodal_blocks]}

        def step(new: torch.Tensor) -> torch.Tensor:
            x = self._embed_tokens(new, state["pos"])
            state["pos"] += new.shape[1]
            x = run_blocks(self.unimodal_blocks, x, kv_caches=state["uni"], is_causal=True)
            return self._decode(x, state["q"], state["multi"])[:, -1]

        def reorder(index: torch.Tensor) -> None:
            state["q"] = state["q"].index_select(0, index)
            for cache in (*state["uni"], *state["multi"]):
                for c in cache:
                    c.reorder(index)

        prompt = torch.full((images.shape[0], 1), sot_token_id, dtype=torch.long, device=images.device)
        if strategy == "beam":
            return generation.beam_search(step, reorder, prompt, max_new, eot_token_id, pad_token_id, num_beams)
        return generation.sample(step, prompt, max_new, eot_token_id, pad_token_id, temperature, top_k, top_p,
                                 greedy=strategy == "greedy", generator=generator)


# -- presets ------------------------------------------------------------------------------------------
@register_model
def coca_nano() -> CoCaConfig:
    """Test-size CoCa: 32x32 images, 16 text tokens."""
    return CoCaConfig(embed_dim=64, vision=_coca_vision(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
                      text=TextConfig(context_length=16, embed_dim=64, depth=1, num_heads=2), multimodal_depth=1,
                      num_caption_queries=8, pooler_heads=2)


@register_model
def coca_micro() -> CoCaConfig:
    """Small CoCa for 48x48 images and 32 tokens, trainable on a CPU (default of ``model=coca``)."""
    return CoCaConfig(embed_dim=128,
                      vision=_coca_vision(img_size=48, patch_size=8, embed_dim=128, depth=4, num_heads=4),
                      text=TextConfig(context_length=32, embed_dim=128, depth=2, num_heads=4), multimodal_depth=2,
                      num_caption_queries=32, pooler_heads=4)


@register_model
def coca_vit_b32() -> CoCaConfig:
    """CoCa with a ViT-B/32 image encoder, 12 unimodal and 12 multimodal 512-wide decoder layers (the layer
    counts of open_clip's ``coca_ViT-B-32``; weights of that model do not load: its poolers and
    projections are laid out differently)."""
    return CoCaConfig(embed_dim=512, vision=_coca_vision(patch_size=32, embed_dim=768, depth=12, num_heads=12),
                      text=TextConfig(context_length=76, embed_dim=512, depth=12, num_heads=8), multimodal_depth=12,
                      num_caption_queries=256, pooler_heads=8)
