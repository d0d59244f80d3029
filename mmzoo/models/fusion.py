"""Cross-modal fusion: one model, six ways of letting token streams of different modalities interact.

The variants follow the taxonomy of multimodal interactions in Xu, Zhu & Clifton, "Multimodal Learning
with Transformers: A Survey" (TPAMI 2023, sec. 4.2 / fig. 3). With streams ``Z_1 .. Z_M`` (image
patches, question tokens, or any encoder's tokens) projected to a common width ``dim``:

* ``early_sum`` (a): token-wise weighted sum ``sum_m w_m Z_m`` -> one transformer. Streams have
  different lengths; they are aligned by position (token ``i`` of every stream is added together) after
  zero-padding to the longest one, and a summed position is padding only where every stream is padding.
* ``early_concat`` (b): ``[Z_1; ...; Z_M]`` -> one transformer (VisualBERT, ViLT, "one-stream").
* ``multi_to_one`` (c): each stream through its own blocks, then concatenated into shared blocks.
* ``one_to_multi`` (d): shared blocks over the concatenation, then split back into per-stream blocks.
* ``cross_attention`` (e): two-stream co-attention: in each layer every stream's queries attend to the
  other streams (of the previous layer) as keys/values. ``co_attention="self_cross"`` (default) runs
  ViLBERT's co-attention block: self-attention within the stream, then that cross-attention, then the
  MLP; ``co_attention="cross"`` is the survey's diagram: cross-attention and MLP only, no attention
  within a stream.
* ``cross_attention_concat`` (f): co-attention layers (either form), then the streams are concatenated
  and go through shared self-attention blocks.

Every stream gets a modality (segment) embedding and its own learned summary token (``cls_tokens``),
and padding masks follow the tokens through every concatenation / split. The answer head reads the
summary token of every output stream (one for ``early_sum``, where the streams are merged). All blocks
are the shared :class:`mmzoo.layers.Block` (``cross_attn=True`` for co-attention).

Towers: the image stream is the zoo ViT (``forward_features``: all patch tokens), the text stream the
zoo text transformer (token + position embeddings, ``text.depth`` causal blocks), and ``extra_dims``
declares further streams of any width, passed to :meth:`FusionModel.forward` as ``(tokens, padding)``
pairs (audio, video or point-cloud encoders plug in there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from ..layers import Block, Mlp, Transformer, get_mlp_layer, get_norm_layer, run_blocks
from ._registry import register_arch, register_model
from .text import TextConfig, TextTransformer
from ..layers.activations import get_act_layer
from .vit import VisionTransformer, ViTConfig

FUSION_TYPES = ("early_sum", "early_concat", "multi_to_one", "one_to_multi", "cross_attention",
                "cross_attention_concat")
_CROSS = ("cross_attention", "cross_attention_concat")
CO_ATTENTION = ("self_cross", "cross")


def fusion_vision_config(**kwargs) -> ViTConfig:
    """A :class:`ViTConfig` for an image tower that hands all patch tokens to the fusion (no class
    token, no pooling, no classifier)."""
    base = dict(num_classes=0, global_pool="", class_token=False)
    base.update(kwargs)
    return ViTConfig(**base)


@dataclass
class FusionConfig:
    fusion: str = "cross_attention"  # one of FUSION_TYPES (see the module docstring)
    num_classes: int = 12  # answers (classifier outputs)
    dim: int = 128  # width of every fused stream (towers are projected to it)
    depth: int = 2  # blocks of the shared stage (a, b: the whole fusion; c, f: after the concat; d: before
    #                 the split; e: co-attention layers)
    stream_depth: int = 1  # per-stream blocks (c: before the concat; d: after the split; f: co-attention layers)
    co_attention: str = "self_cross"  # e, f: "self_cross" (self- then cross-attention, ViLBERT) or "cross"
    #                                   (cross-attention only, the survey's fig. 3e)
    num_heads: int = 4  # attention heads of the fusion blocks
    mlp_ratio: float = 4.0  # MLP inner width / dim
    qkv_bias: bool = True  # bias on q, k, v projections
    norm_layer: str = "layernorm"  # see mmzoo.layers.get_norm_layer
    act_layer: str = "gelu"  # see mmzoo.models.vit.ACT_LAYERS
    mlp_layer: str = "mlp"  # "mlp", "swiglu", "geglu"
    proj_drop_rate: float = 0.0  # dropout after attention / MLP projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last fusion block
    head_hidden: int = 0  # hidden width of the answer MLP (0: 2 * dim)
    head_drop_rate: float = 0.0  # dropout inside the answer MLP
    use_image: bool = True  # build the image stream; False = the text-only baseline (same model, no image)
    use_text: bool = True  # build the text stream
    extra_dims: tuple[int, ...] = ()  # widths of further token streams given to forward(extra=...)
    vision: ViTConfig = field(default_factory=lambda: fusion_vision_config(
        img_size=32, patch_size=8, embed_dim=128, depth=1, num_heads=4))  # image tower
    text: TextConfig = field(default_factory=lambda: TextConfig(
        context_length=24, vocab_size=512, embed_dim=128, depth=1, num_heads=4))  # question tower

    def __post_init__(self) -> None:
        if isinstance(self.extra_dims, list):
            self.extra_dims = tuple(self.extra_dims)


def _masked(x: torch.Tensor, padding: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the padding tokens of ``x`` (B, L, D); ``padding`` (B, L) is True at padding."""
    return x if padding is None else x.masked_fill(padding[..., None], 0.0)


def _cat_masks(masks: Sequence[Optional[torch.Tensor]], lengths: Sequence[int], batch: int,
               device: torch.device) -> Optional[torch.Tensor]:
    """Padding masks of concatenated streams: (B, sum L); None when no stream has padding."""
    if all(m is None for m in masks):
        return None
    return torch.cat([torch.zeros(batch, n, dtype=torch.bool, device=device) if m is None else m
                      for m, n in zip(masks, lengths)], dim=1)


class CoAttentionLayer(nn.Module):
    """One ViLBERT co-attention layer: every stream runs a :class:`Block` whose self-attention is
    followed by cross-attention to the concatenation of the other streams (all of the previous layer).

    Args:
        num_streams: number of streams (>= 2).
        self_attn: keep the within-stream self-attention (False: cross-attention and MLP only).
        **block_kwargs: arguments of each stream's :class:`Block`.
    """

    def __init__(self, num_streams: int, drop_path: float = 0.0, self_attn: bool = True, **block_kwargs: Any) -> None:
        super().__init__()
        self.grad_checkpointing = False  # activation checkpointing of every stream's block
        self.blocks = nn.ModuleList([Block(cross_attn=True, self_attn=self_attn, drop_path=drop_path, **block_kwargs)
                                     for _ in range(num_streams)])

    def forward(self, xs: list[torch.Tensor], masks: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
        out = []
        for i, blk in enumerate(self.blocks):
            others = [j for j in range(len(xs)) if j != i]
            context = torch.cat([xs[j] for j in others], dim=1)  # (B, S, dim)
            ctx_mask = _cat_masks([masks[j] for j in others], [xs[j].shape[1] for j in others],
                                  xs[i].shape[0], xs[i].device)
            out.append(run_blocks([blk], xs[i], self.grad_checkpointing, context=context, key_padding_mask=masks[i],
                                  context_padding_mask=ctx_mask))
        return out


@register_arch("fusion", FusionConfig)
class FusionModel(nn.Module):
    """Answer classifier over fused modality streams (see the module docstring for the variants).

    Args:
        cfg: a :class:`FusionConfig`.
    """

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        if cfg.fusion not in FUSION_TYPES:
            raise ValueError(f"unknown model.fusion {cfg.fusion!r}; valid choices: {list(FUSION_TYPES)}")
        if cfg.co_attention not in CO_ATTENTION:
            raise ValueError(f"unknown model.co_attention {cfg.co_attention!r}; valid choices: {list(CO_ATTENTION)}")
        self.cfg = cfg
        self.fusion = cfg.fusion
        self.modalities: list[str] = []
        in_dims: list[int] = []
        if cfg.use_image:
            if cfg.vision.num_classes != 0 or cfg.vision.global_pool != "":
                raise ValueError("the fusion image tower hands all tokens to the fusion: set vision.num_classes=0 "
                                 f"and vision.global_pool='' (got {cfg.vision.num_classes}, "
                                 f"{cfg.vision.global_pool!r})")
            self.visual = VisionTransformer(cfg.vision)
            self.modalities.append("image")
            in_dims.append(cfg.vision.embed_dim)
        else:
            self.visual = None
        if cfg.use_text:
            self.text = TextTransformer(cfg.text)
            self.modalities.append("text")
            in_dims.append(cfg.text.embed_dim)
        else:
            self.text = None
        for i, d in enumerate(cfg.extra_dims):
            self.modalities.append(f"extra{i}")
            in_dims.append(d)
        M = self.num_streams = len(self.modalities)
        if M == 0:
            raise ValueError("FusionModel needs at least one stream: set use_image, use_text or extra_dims")
        if cfg.fusion in _CROSS and M < 2:
            raise ValueError(f"model.fusion={cfg.fusion!r} needs at least two streams (got {self.modalities}); "
                             "use early_concat for a single-stream baseline")

        dim = cfg.dim
        norm_layer = get_norm_layer(cfg.norm_layer)
        block_kw = dict(dim=dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                        proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, norm_layer=norm_layer,
                        act_layer=get_act_layer(cfg.act_layer), mlp_layer=get_mlp_layer(cfg.mlp_layer))
        stream_kw = dict(block_kw)
        stream_kw.pop("dim"), stream_kw.pop("num_heads")

        # tower tokens -> fused width, plus a modality (segment) embedding and a summary token per stream
        self.input_proj = nn.ModuleList([nn.Linear(d, dim) for d in in_dims])
        self.modality_embed = nn.Parameter(torch.zeros(M, dim))
        self.cls_tokens = nn.Parameter(torch.zeros(M, dim))
        if cfg.fusion == "early_sum":
            self.sum_weights = nn.Parameter(torch.ones(M))  # w_m of the weighted sum (init: plain sum)

        self.stream_blocks: Optional[nn.ModuleList] = None  # per-stream Transformers (c, d)
        self.shared: Optional[Transformer] = None  # one-stream Transformer (a, b, c, d, f)
        self.co_layers: Optional[nn.ModuleList] = None  # co-attention layers (e, f)
        dpr = cfg.drop_path_rate
        if cfg.fusion in ("early_sum", "early_concat", "multi_to_one", "one_to_multi", "cross_attention_concat"):
            self.shared = Transformer(dim, cfg.depth, cfg.num_heads, drop_path_rate=dpr, **stream_kw)
        if cfg.fusion in ("multi_to_one", "one_to_multi"):
            self.stream_blocks = nn.ModuleList([Transformer(dim, cfg.stream_depth, cfg.num_heads,
                                                            drop_path_rate=dpr, **stream_kw) for _ in range(M)])
        if cfg.fusion in _CROSS:
            n = cfg.depth if cfg.fusion == "cross_attention" else cfg.stream_depth
            self.co_layers = nn.ModuleList([CoAttentionLayer(M, drop_path=dpr * i / max(n - 1, 1),
                                                             self_attn=cfg.co_attention == "self_cross", **block_kw)
                                            for i in range(n)])
        self.norm = norm_layer(dim)
        num_pooled = 1 if cfg.fusion == "early_sum" else M
        self.head = Mlp(num_pooled * dim, cfg.head_hidden or 2 * dim, cfg.num_classes, drop=cfg.head_drop_rate)
        self.init_weights()

    # -- init ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated normal (std .02) for the fusion's linears and embeddings (BERT / ViT); the towers
        keep their own init."""
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_tokens, std=0.02)
        towers = {id(m) for t in (self.visual, self.text) if t is not None for m in t.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in towers:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (besides norms and biases)."""
        names = {"modality_embed", "cls_tokens", "sum_weights"}
        if self.visual is not None:
            names |= {f"visual.{n}" for n in self.visual.no_weight_decay()}
        if self.text is not None:
            names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return names

    # -- streams ------------------------------------------------------------------------------------
    def encode_streams(
        self,
        image: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_padding_mask: Optional[torch.Tensor] = None,
        extra: Sequence[tuple[torch.Tensor, Optional[torch.Tensor]]] = (),
    ) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
        """Tower outputs of every stream, in ``self.modalities`` order: tokens (B, L_m, D_m) and padding
        masks (B, L_m) (True = padding) or None."""
        xs, masks = [], []
        if self.visual is not None:
            if image is None:
                raise ValueError("this FusionModel has an image stream: pass `image` (B, C, H, W)")
            xs.append(self.visual.forward_features(image))  # (B, N, D_img)
            masks.append(None)
        if self.text is not None:
            if text is None:
                raise ValueError("this FusionModel has a text stream: pass `text` token ids (B, L)")
            xs.append(self.text.forward_features(text))  # (B, L, D_txt)
            masks.append(text_padding_mask)
        if len(extra) != len(self.cfg.extra_dims):
            raise ValueError(f"expected {len(self.cfg.extra_dims)} extra streams (model.extra_dims="
                             f"{list(self.cfg.extra_dims)}), got {len(extra)}")
        for (x, m) in extra:
            xs.append(x)
            masks.append(m)
        return xs, masks

    def fuse(self, xs: Sequence[torch.Tensor], masks: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """Token streams (B, L_m, D_m) with padding masks (B, L_m) or None -> pooled feature (B, P * dim).

        This is the generic entry point: any encoder's tokens can be fused, as long as their widths
        match the model's streams (``self.modalities``).
        """
        if len(xs) != self.num_streams or len(masks) != self.num_streams:
            raise ValueError(f"expected {self.num_streams} streams {self.modalities}, got {len(xs)} tokens "
                             f"and {len(masks)} masks")
        B = xs[0].shape[0]
        toks, pads = [], []
        for m, (x, pad, proj) in enumerate(zip(xs, masks, self.input_proj)):
            if x.dim() != 3 or x.shape[0] != B or x.shape[2] != proj.in_features:
                raise ValueError(f"stream {self.modalities[m]!r}: expected tokens of shape (B={B}, L, "
                                 f"{proj.in_features}), got {tuple(x.shape)}")
            if pad is not None and pad.shape != x.shape[:2]:
                raise ValueError(f"stream {self.modalities[m]!r}: padding mask of shape {tuple(pad.shape)} does "
                                 f"not match its tokens {tuple(x.shape[:2])}")
            h = proj(x) + self.modality_embed[m]  # (B, L_m, dim)
            cls = self.cls_tokens[m].expand(B, 1, -1)  # (B, 1, dim)
            toks.append(torch.cat([cls, h], dim=1))  # (B, 1 + L_m, dim)
            pads.append(None if pad is None else torch.cat([pad.new_zeros(B, 1), pad.bool()], dim=1))
        lengths = [t.shape[1] for t in toks]

        if self.fusion == "early_sum":
            L = max(lengths)
            w = self.sum_weights
            x = sum(w[m] * nn.functional.pad(_masked(t, p), (0, 0, 0, L - t.shape[1]))
                    for m, (t, p) in enumerate(zip(toks, pads)))  # (B, L, dim)
            # a summed position is padding where every stream is padding (or past its end)
            pad_all = None
            if any(p is not None for p in pads) or len(set(lengths)) > 1:
                padded = [nn.functional.pad(p if p is not None else t.new_zeros(B, t.shape[1], dtype=torch.bool),
                                            (0, L - t.shape[1]), value=True) for t, p in zip(toks, pads)]
                pad_all = torch.stack(padded).all(dim=0)  # (B, L)
            x = self.shared(x, key_padding_mask=pad_all)
            return self.norm(x[:, 0])  # (B, dim): the summed summary tokens

        if self.fusion in ("early_concat", "multi_to_one"):
            if self.fusion == "multi_to_one":
                toks = [blocks(t, key_padding_mask=p) for blocks, t, p in zip(self.stream_blocks, toks, pads)]
            x = self.shared(torch.cat(toks, dim=1), key_padding_mask=_cat_masks(pads, lengths, B, xs[0].device))
            outs = list(x.split(lengths, dim=1))
        elif self.fusion == "one_to_multi":
            x = self.shared(torch.cat(toks, dim=1), key_padding_mask=_cat_masks(pads, lengths, B, xs[0].device))
            outs = [blocks(t, key_padding_mask=p)
                    for blocks, t, p in zip(self.stream_blocks, x.split(lengths, dim=1), pads)]
        else:  # cross_attention, cross_attention_concat
            outs = list(toks)
            for layer in self.co_layers:
                outs = layer(outs, pads)
            if self.fusion == "cross_attention_concat":
                x = self.shared(torch.cat(outs, dim=1), key_padding_mask=_cat_masks(pads, lengths, B, xs[0].device))
                outs = list(x.split(lengths, dim=1))
        return torch.cat([self.norm(o[:, 0]) for o in outs], dim=-1)  # (B, M * dim): summary tokens

    def forward(
        self,
        image: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_padding_mask: Optional[torch.Tensor] = None,
        extra: Sequence[tuple[torch.Tensor, Optional[torch.Tensor]]] = (),
    ) -> torch.Tensor:
        """Images (B, C, H, W), question ids (B, L) with padding mask (B, L) (True = padding), extra
        streams ``[(tokens (B, L_m, D_m), padding (B, L_m) or None), ...]`` -> logits (B, num_classes).
        Streams the model was built without are ignored (the text-only baseline ignores ``image``)."""
        xs, masks = self.encode_streams(image, text, text_padding_mask, extra)
        return self.head(self.fuse(xs, masks))


# -- presets ---------------------------------------------------------------------------------------
def _tiny(fusion: str, **kwargs) -> FusionConfig:
    """Test-size towers and fusion (CPU, milliseconds): 32 px images in 16 patches, width 32."""
    base = dict(fusion=fusion, dim=32, depth=1, stream_depth=1, num_heads=2,
                vision=fusion_vision_config(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                text=TextConfig(context_length=24, vocab_size=512, embed_dim=32, depth=1, num_heads=2))
    base.update(kwargs)
    return FusionConfig(**base)


def _micro(fusion: str, **kwargs) -> FusionConfig:
    """Small towers and fusion that train on shapes_vqa in minutes on a CPU: 32 px images in 16 patches
    of 8, one tower block each, width 64."""
    base = dict(fusion=fusion, dim=64, depth=2, stream_depth=1, num_heads=4,
                vision=fusion_vision_config(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4),
                text=TextConfig(context_length=24, vocab_size=512, embed_dim=64, depth=1, num_heads=4))
    base.update(kwargs)
    return FusionConfig(**base)


@register_model
def fusion_tiny() -> FusionConfig:
    """Test-size fusion model (cross-attention; pick a variant with ``fusion=...``)."""
    return _tiny("cross_attention")


@register_model
def fusion_tiny_text_only() -> FusionConfig:
    """Test-size text-only baseline: the question stream alone (no image tower)."""
    return _tiny("early_concat", use_image=False)


@register_model
def fusion_micro() -> FusionConfig:
    """The default of ``python train.py model=fusion`` (cross-attention; ``model.fusion=...`` picks another)."""
    return _micro("cross_attention")


@register_model
def fusion_micro_text_only() -> FusionConfig:
    """Text-only baseline of fusion_micro: same question tower and shared blocks, the image dropped."""
    return _micro("early_concat", use_image=False)
