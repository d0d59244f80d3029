"""wav2vec 2.0 (Baevski et al. 2020, "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations"), following fairseq's ``Wav2Vec2Config`` and its base LibriSpeech recipe.

Raw 16 kHz audio -> 7-layer conv feature encoder (20 ms frames) -> LayerNorm -> projection to ``dim`` ->
span masking (pretraining) -> convolutional relative position embedding -> transformer (post-LN "base"
or pre-LN "stable layer norm" "large", built from the shared :class:`~mmzoo.layers.Block`).
Pretraining adds a Gumbel product quantizer over the (unmasked) conv features; the contrastive loss
lives in :mod:`mmzoo.losses.wav2vec2`, the training step in :mod:`mmzoo.tasks.wav2vec2`.

Padding: a batch with no padding passes no mask to attention, so SDPA keeps its fused (flash /
memory-efficient) kernel; a padded batch passes a (B, 1, 1, T) boolean key-padding mask, which SDPA
handles with its memory-efficient kernel on GPU (flash does not take masks) and its flash kernel on
CPU. The audio data modules pad only to the longest clip of a batch (built-in data: never).
Attention dropout (``attn_drop`` > 0, in training) has no CPU flash kernel: SDPA then runs its math
kernel on CPU (the CUDA flash kernel takes dropout); ``attn_drop=0`` keeps CPU training on flash.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Block, Mlp, run_blocks
from ._registry import register_arch, register_model


@dataclass
class Wav2Vec2Config:
    # feature encoder (fairseq conv_feature_layers "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    conv_dim: tuple[int, ...] = (512,) * 7  # channels of each conv layer
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)  # kernel sizes
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # strides (product 320: 20 ms at 16 kHz)
    conv_bias: bool = False  # bias of the conv layers
    feat_extract_norm: str = "group"  # "group" (GroupNorm on layer 0, base) or "layer" (LayerNorm on all, large)
    feature_grad_mult: float = 0.1  # gradient scale into the feature encoder (0: frozen)
    # transformer
    dim: int = 768  # width
    depth: int = 12  # blocks
    num_heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP inner width / dim (3072 / 768)
    layer_norm_first: bool = False  # pre-LN blocks + final norm ("stable layer norm", large) vs post-LN
    layer_norm_eps: float = 1e-5  # eps of every LayerNorm
    conv_pos: int = 128  # kernel of the convolutional position embedding
    conv_pos_groups: int = 16  # its groups
    dropout: float = 0.1  # after attention / MLP outputs, and on the block input after the position conv
    attn_drop: float = 0.1  # on attention weights
    act_drop: float = 0.0  # inside the MLP, after the activation
    input_drop: float = 0.1  # on projected features before the transformer (fairseq dropout_input)
    feature_drop: float = 0.1  # on the quantizer's input features (fairseq dropout_features)
    layerdrop: float = 0.05  # probability of skipping a whole block in training
    # masking (fairseq mask_prob / mask_length): number of spans = mask_prob * T / mask_length
    mask_prob: float = 0.65
    mask_length: int = 10
    # quantizer and contrastive task
    pretrain_head: bool = True  # build quantizer + projections (False: encoder only, like HF Wav2Vec2Model)
    num_codevector_groups: int = 2  # G
    num_codevectors: int = 320  # V entries per group
    codevector_dim: int = 256  # width of a concatenated code vector (fairseq latent_dim / final_dim)
    proj_codevector_dim: int = 256  # width of the contrastive space (fairseq final_dim)
    num_negatives: int = 100  # K distractors per masked step
    logit_temp: float = 0.1  # cosine similarity / logit_temp
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # Gumbel temperature: max, min, decay/step
    # fine-tuning head
    num_classes: int = 0  # outputs of `head` (0: no head, forward returns hidden states)
    head_type: str = "pool"  # "pool": mean over valid frames -> (B, C); "frame": per frame (CTC) -> (B, T, C)
    freeze_feature_encoder: bool = False  # no gradient into the conv feature encoder

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_kernel", "conv_stride", "latent_temp"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(f"conv_dim, conv_kernel, conv_stride must have equal lengths, got "
                             f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.head_type not in ("pool", "frame"):
            raise ValueError(f"head_type must be 'pool' or 'frame', got {self.head_type!r}")
        if self.codevector_dim % self.num_codevector_groups:
            raise ValueError(f"codevector_dim ({self.codevector_dim}) must be divisible by "
                             f"num_codevector_groups ({self.num_codevector_groups})")


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` (fairseq's GradMultiply, feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class ConvLayer(nn.Module):
    """conv -> norm ("group": GroupNorm with one group per channel; "layer": LayerNorm over channels) -> GELU."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int, stride: int, bias: bool, norm: str,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_chans, out_chans, kernel, stride=stride, bias=bias)
        self.norm_type = norm
        if norm == "group":
            self.norm = nn.GroupNorm(out_chans, out_chans, eps=eps, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_chans, eps=eps)
        else:
            self.norm = nn.Identity()
        self.act = nn.GELU()
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, C, T)
        if self.norm_type == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        return self.act(x)


class FeatureEncoder(nn.Module):
    """Raw audio (B, L) -> conv features (B, C, T)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        layers, in_chans = [], 1
        for i, (c, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            norm = cfg.feat_extract_norm if (cfg.feat_extract_norm == "layer" or i == 0) else "none"
            layers.append(ConvLayer(in_chans, c, k, s, cfg.conv_bias, norm))
            in_chans = c
        self.conv_layers = nn.ModuleList(layers)
        self.kernels, self.strides = cfg.conv_kernel, cfg.conv_stride

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Samples -> frames: floor((L - k) / s) + 1 per layer."""
        for k, s in zip(self.kernels, self.strides):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, None]  # (B, 1, L)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, T)


class PositionalConv(nn.Module):
    """Convolutional relative position embedding: weight-normed grouped conv (kernel 128, 16 groups),
    the extra output frame of an even kernel dropped, GELU."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq init: normal with std sqrt(4 / (kernel * dim)), zero bias; then weight norm over dim 2
        nn.init.normal_(conv.weight, mean=0, std=math.sqrt(4.0 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, D, T + remove)
        if self.remove:
            y = y[:, :, :-self.remove]
        return F.gelu(y).transpose(1, 2)  # (B, T, D)


class GumbelQuantizer(nn.Module):
    """Product quantizer: G groups of V code vectors, one entry picked per group by a straight-through
    hard Gumbel softmax in training (argmax in eval), the G entries concatenated.

    Returns code vectors (N, codevector_dim), the perplexity of the batch-averaged softmax (``prob_perplexity``,
    what the diversity loss maximises), the perplexity of the hard picks (``code_perplexity``) and the
    picked indices (N, G).
    """

    def __init__(self, in_dim: int, num_groups: int, num_vars: int, codevector_dim: int) -> None:
        super().__init__()
        self.num_groups, self.num_vars = num_groups, num_vars
        self.weight_proj = nn.Linear(in_dim, num_groups * num_vars)
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_vars, codevector_dim // num_groups))
        nn.init.normal_(self.weight_proj.weight, mean=0, std=1)  # fairseq: sharp initial logits
        nn.init.zeros_(self.weight_proj.bias)
        nn.init.uniform_(self.codevectors)
        self.temperature = 2.0

    def forward(self, x: torch.Tensor):
        N = x.shape[0]
        logits = self.weight_proj(x).view(N * self.num_groups, self.num_vars).float()  # (N*G, V)
        idx = logits.argmax(-1)
        hard = torch.zeros_like(logits).scatter_(-1, idx[:, None], 1.0).view(N, self.num_groups, -1)
        code_perplexity = _perplexity(hard.mean(0))
        soft = logits.softmax(-1).view(N, self.num_groups, -1)  # (N, G, V)
        prob_perplexity = _perplexity(soft.mean(0))
        if self.training:
            onehot = F.gumbel_softmax(logits, tau=self.temperature, hard=True).view(N, self.num_groups, -1)
            idx = onehot.argmax(-1).view(-1)
        else:
            onehot = hard
        onehot = onehot.type_as(x).view(N, -1, 1)  # (N, G*V, 1)
        codes = (onehot * self.codevectors).view(N, self.num_groups, self.num_vars, -1).sum(2)  # (N, G, d/G)
        return codes.reshape(N, -1), prob_perplexity, code_perplexity, idx.view(N, self.num_groups)


def _perplexity(p: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy) of each group's distribution p (G, V)."""
    return torch.exp(-torch.sum(torch.xlogy(p, p), dim=-1)).sum()


def compute_mask_indices(lengths: torch.Tensor, T: int, mask_prob: float, mask_length: int,
                         generator: Optional[torch.Generator] = None, min_masks: int = 2) -> torch.Tensor:
    """fairseq's span masking: row b gets int(mask_prob * len_b / mask_length + U(0, 1)) span starts drawn
    without replacement from its valid frames (spans may overlap), each masking ``mask_length`` frames;
    then every row keeps the same number of masked frames (the smallest, ``require_same_masks``) so masked
    steps reshape to (B, M). Returns a (B, T) boolean mask that never covers padding."""
    B = lengths.shape[0]
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        sz = int(lengths[b])
        num = int(mask_prob * sz / mask_length + torch.rand((), generator=generator))
        num = max(min_masks, num)
        span = min(mask_length, sz - 1)
        if sz - span <= 0 or span <= 0:
            continue
        num = min(num, sz - span)
        starts = torch.randperm(sz - span, generator=generator)[:num]
        idx = (starts[:, None] + torch.arange(span)[None]).flatten().unique()
        mask[b, idx] = True
    counts = mask.sum(1)
    keep = int(counts.min())
    for b in range(B):
        if counts[b] > keep:
            on = mask[b].nonzero().squeeze(1)
            drop = on[torch.randperm(len(on), generator=generator)[: int(counts[b]) - keep]]
            mask[b, drop] = False
    return mask


def sample_negatives(y: torch.Tensor, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """K distractors per masked step from the *same utterance's* masked steps, never the step itself
    (fairseq ``sample_negatives``: draw from M-1 indices, shift those >= the positive's by one).
    y: (B, M, C) -> (K, B, M, C)."""
    B, M, C = y.shape
    if M < 2:
        raise ValueError(f"need at least 2 masked steps per utterance to draw distractors, got {M}")
    pos = torch.arange(M)[:, None].expand(M, num).reshape(-1)  # (M*K,)
    idx = torch.randint(0, M - 1, (B, M * num), generator=generator).to(y.device)
    idx = idx + (idx >= pos.to(y.device)[None]).long()  # skip the positive
    negs = torch.gather(y, 1, idx[..., None].expand(B, M * num, C))  # (B, M*K, C)
    return negs.view(B, M, num, C).permute(2, 0, 1, 3)


@dataclass
class Wav2Vec2PretrainOutput:
    """What the contrastive loss and the training dashboards need from one pretraining forward."""

    logits: torch.Tensor  # (B*M, 1 + K): positive first, -inf where a distractor equals the positive
    features_pen: torch.Tensor  # mean squared conv feature (feature penalty)
    prob_perplexity: torch.Tensor  # perplexity of the batch-averaged softmax over codes (sum over groups)
    code_perplexity: torch.Tensor  # perplexity of the hard code picks
    num_vars: int  # G * V
    temperature: float  # current Gumbel temperature
    codes: torch.Tensor  # (B*M, G) picked code indices


@register_arch("wav2vec2", Wav2Vec2Config)
class Wav2Vec2(nn.Module):
    """wav2vec 2.0 encoder, with the pretraining quantizer (``pretrain_head``) and an optional
    fine-tuning ``head`` (pooled classification or per-frame CTC logits).

    Args:
        cfg: a :class:`Wav2Vec2Config`.
    """

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = self.num_features = cfg.dim
        c = cfg.conv_dim[-1]
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.feature_proj = nn.Linear(c, cfg.dim)
        self.input_drop = nn.Dropout(cfg.input_drop)
        self.feature_drop = nn.Dropout(cfg.feature_drop)
        self.mask_emb = nn.Parameter(torch.empty(cfg.dim).uniform_())
        self.pos_conv = PositionalConv(cfg.dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.encoder_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)  # before blocks (post-LN) / after (pre-LN)
        # fairseq TransformerEncoder.extract_features: dropout(layer_norm(x + pos_conv(x))) before the first
        # block (post-LN), dropout(x + pos_conv(x)) (pre-LN); Hugging Face's encoders do the same
        self.encoder_drop = nn.Dropout(cfg.dropout)
        norm_layer = partial(nn.LayerNorm, eps=cfg.layer_norm_eps)
        mlp_layer = partial(_mlp_with_act_drop, act_drop=cfg.act_drop)
        self.grad_checkpointing = False  # activation checkpointing of every block
        self.blocks = nn.ModuleList([
            Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, proj_drop=cfg.dropout,
                  attn_drop=cfg.attn_drop, norm_layer=norm_layer, mlp_layer=mlp_layer,
                  post_norm=not cfg.layer_norm_first)
            for _ in range(cfg.depth)])
        if cfg.pretrain_head:
            self.quantizer = GumbelQuantizer(c, cfg.num_codevector_groups, cfg.num_codevectors, cfg.codevector_dim)
            self.project_q = nn.Linear(cfg.codevector_dim, cfg.proj_codevector_dim)
            self.final_proj = nn.Linear(cfg.dim, cfg.proj_codevector_dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()
        if cfg.freeze_feature_encoder:
            self.feature_extractor.requires_grad_(False)

    def init_weights(self) -> None:
        """fairseq's init_bert_params for the transformer: linears normal(0, 0.02), zero biases."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("quantizer"):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"mask_emb", "quantizer.codevectors"}

    def filter_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop pretraining-only weights (quantizer, projections) when this model has no pretraining head,
        so a fine-tuning model loads an SSL checkpoint by path."""
        if self.cfg.pretrain_head:
            return sd
        return {k: v for k, v in sd.items() if not k.startswith(("quantizer.", "project_q.", "final_proj."))}

    def set_num_updates(self, step: int) -> None:
        """Gumbel temperature max(max_temp * decay^step, min_temp) (fairseq's latent_temp schedule)."""
        if self.cfg.pretrain_head:
            hi, lo, decay = self.cfg.latent_temp
            self.quantizer.temperature = max(hi * decay ** step, lo)

    # -- forward ------------------------------------------------------------------------------------
    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid samples per clip (B,) -> valid frames (B,)."""
        return self.feature_extractor.output_lengths(lengths)

    def _features(self, wav: torch.Tensor, lengths: Optional[torch.Tensor]):
        if wav.dim() != 2:
            raise ValueError(f"wav2vec2 expects raw audio of shape (B, samples), got {tuple(wav.shape)}")
        if self.cfg.freeze_feature_encoder or self.cfg.feature_grad_mult == 0:
            with torch.no_grad():
                feats = self.feature_extractor(wav)
        else:
            feats = self.feature_extractor(wav)
            if self.cfg.feature_grad_mult != 1.0:
                feats = _GradMultiply.apply(feats, self.cfg.feature_grad_mult)
        feats = feats.transpose(1, 2)  # (B, T, C)
        T = feats.shape[1]
        padding = None
        if lengths is not None:
            frames = self.frame_lengths(lengths.to(feats.device))
            if bool((frames < T).any()):
                padding = torch.arange(T, device=feats.device)[None] >= frames[:, None]  # (B, T) True = pad
        return feats, padding

    def _encode(self, x: torch.Tensor, padding: Optional[torch.Tensor]) -> torch.Tensor:
        if padding is not None:
            x = x.masked_fill(padding[..., None], 0.0)  # padded frames must not leak through the conv
        x = x + self.pos_conv(x)
        if not self.cfg.layer_norm_first:
            x = self.encoder_norm(x)
        x = self.encoder_drop(x)
        # no padding -> no mask: SDPA keeps its fused kernel
        for blk in self.blocks:
            if self.training and self.cfg.layerdrop > 0 and torch.rand(()) < self.cfg.layerdrop:
                continue
            x = run_blocks([blk], x, self.grad_checkpointing, key_padding_mask=padding)
        if self.cfg.layer_norm_first:
            x = self.encoder_norm(x)
        return x

    def forward_features(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                         mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Audio (B, L) [+ valid samples (B,)] -> hidden states (B, T, dim) and the padding mask
        (B, T), True at padded frames (None when nothing is padded). ``mask`` (B, T) replaces those
        frames by the learned mask embedding (SpecAugment-style masking during fine-tuning)."""
        feats, padding = self._features(wav, lengths)
        x = self.feature_proj(self.feature_norm(feats))
        x = self.input_drop(x)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        return self._encode(x, padding), padding

    def forward_head(self, x: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Hidden states -> logits: (B, C) mean over valid frames ("pool"), (B, T, C) per frame ("frame")."""
        if self.cfg.num_classes == 0:
            return x
        if self.cfg.head_type == "pool":
            if padding is None:
                x = x.mean(1)
            else:
                keep = (~padding).to(x.dtype)[..., None]  # (B, T, 1)
                x = (x * keep).sum(1) / keep.sum(1).clamp_min(1)
        return self.head(x)

    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Audio (B, L) -> logits of the head ((B, C) or (B, T, C)), hidden states (B, T, dim) without one."""
        x, padding = self.forward_features(wav, lengths)
        return self.forward_head(x, padding)

    def forward_pretrain(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                         generator: Optional[torch.Generator] = None) -> Wav2Vec2PretrainOutput:
        """The self-supervised forward: mask spans, quantize the unmasked features at the masked steps,
        score each masked step's context vector against its code and K distractors."""
        if not self.cfg.pretrain_head:
            raise ValueError("forward_pretrain needs the quantizer: build the model with pretrain_head=True")
        feats, padding = self._features(wav, lengths)
        features_pen = feats.float().pow(2).mean()
        feats = self.feature_norm(feats)
        unmasked = self.feature_drop(feats)
        x = self.input_drop(self.feature_proj(feats))
        B, T, _ = x.shape
        valid = (~padding).sum(1).cpu() if padding is not None else torch.full((B,), T)
        mask = compute_mask_indices(valid, T, self.cfg.mask_prob, self.cfg.mask_length, generator).to(x.device)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        x = self._encode(x, padding)
        M = int(mask[0].sum())
        codes, prob_ppl, code_ppl, code_idx = self.quantizer(unmasked[mask])  # (B*M, codevector_dim)
        y = self.project_q(codes).view(B, M, -1)  # (B, M, final)
        negs = sample_negatives(y, self.cfg.num_negatives, generator)  # (K, B, M, final)
        c = self.final_proj(x[mask]).view(B, M, -1)  # (B, M, final)
        targets = torch.cat([y[None], negs], 0)  # (1+K, B, M, final)
        logits = torch.cosine_similarity(c.float()[None], targets.float(), dim=-1) / self.cfg.logit_temp
        same = (negs == y[None]).all(-1)  # a distractor equal to the positive (a repeated code) is no distractor
        logits[1:][same] = float("-inf")
        logits = logits.permute(1, 2, 0).reshape(B * M, -1)  # (B*M, 1+K)
        return Wav2Vec2PretrainOutput(logits, features_pen, prob_ppl, code_ppl,
                                      self.cfg.num_codevector_groups * self.cfg.num_codevectors,
                                      self.quantizer.temperature, code_idx)


def _mlp_with_act_drop(in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.0,
                       act_drop: float = 0.0) -> Mlp:
    """fairseq's feed-forward: dropout ``act_drop`` after the activation, ``drop`` after fc2."""
    mlp = Mlp(in_features, hidden_features, act_layer=act_layer, drop=drop)
    mlp.drop1 = nn.Dropout(act_drop)
    return mlp


# -- presets --------------------------------------------------------------------------------------
@register_model
def wav2vec2_base() -> Wav2Vec2Config:
    """wav2vec 2.0 BASE (LibriSpeech recipe): 12 x 768 post-LN, group-norm conv encoder, 95M parameters."""
    return Wav2Vec2Config()


@register_model
def wav2vec2_large() -> Wav2Vec2Config:
    """wav2vec 2.0 LARGE (LV-60k recipe): 24 x 1024 pre-LN ("stable layer norm"), layer-norm conv encoder,
    final_dim 768, 317M parameters."""
    return Wav2Vec2Config(feat_extract_norm="layer", conv_bias=True, dim=1024, depth=24, num_heads=16,
                          layer_norm_first=True, codevector_dim=768, proj_codevector_dim=768, input_drop=0.1,
                          feature_drop=0.1, layerdrop=0.0)


def _tiny(**kw) -> Wav2Vec2Config:
    # CPU size: a narrower conv stack (64 channels, same kernels and strides: still 20 ms frames), a 4 x 128
    # transformer, a 2 x 32 codebook, and 20 distractors (a 1 s clip has only ~30 masked steps)
    base = dict(conv_dim=(64,) * 7, dim=128, depth=4, num_heads=4, conv_pos=16, conv_pos_groups=4,
                num_codevectors=32, codevector_dim=64, proj_codevector_dim=64, num_negatives=20,
                layerdrop=0.0, dropout=0.1, attn_drop=0.1, input_drop=0.1, feature_drop=0.1,
                latent_temp=(2.0, 0.5, 0.999))
    base.update(kw)
    return Wav2Vec2Config(**base)


@register_model
def wav2vec2_tiny() -> Wav2Vec2Config:
    """CPU-size post-LN wav2vec 2.0 (0.9M parameters) for tests and the built-in audio."""
    return _tiny()


@register_model
def wav2vec2_tiny_stable() -> Wav2Vec2Config:
    """CPU-size pre-LN ("stable layer norm") variant with a layer-norm conv encoder."""
    return _tiny(feat_extract_norm="layer", layer_norm_first=True, conv_bias=True)
