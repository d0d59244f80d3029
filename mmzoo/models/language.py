"""Transformer language models: encoder-only (BERT, Devlin et al. 2019), decoder-only (GPT, Radford et al.
2018/2019) and encoder-decoder (T5, Raffel et al. 2020), built from the shared ``mmzoo.layers`` blocks.

One config covers the three families (``kind``) and the options they differ in: attention heads (MHA /
GQA / MQA through ``num_kv_heads``), positions (learned / sinusoidal / RoPE / T5's relative bias),
feed-forward (MLP / SwiGLU / GEGLU, or a mixture of experts), pre- or post-norm, tied embeddings.
The training objectives (masked LM, causal LM, span corruption) live in
``mmzoo.tasks.language_modeling``; decoding loops in ``mmzoo.models.generation``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from ..layers import KVCache, MoE, RotaryEmbedding, build_blocks, get_mlp_layer, get_norm_layer, run_blocks
from ..layers import sinusoidal_pos_embed
from . import generation
from ._registry import register_arch, register_model
from ..layers.activations import get_act_layer

LM_KINDS = ("encoder", "decoder", "encoder_decoder")
POS_EMBEDS = ("learned", "sinusoidal", "rope", "relative", "none")


@dataclass
class LMConfig:
    kind: str = "decoder"  # "encoder" (BERT), "decoder" (GPT), "encoder_decoder" (T5)
    vocab_size: int = 50257  # token embedding rows
    context_length: int = 1024  # longest sequence (learned / sinusoidal position tables)
    embed_dim: int = 768  # width
    depth: int = 12  # blocks of the encoder (encoder kinds) or of the decoder (kind="decoder")
    decoder_depth: Optional[int] = None  # encoder_decoder: decoder blocks (default: depth)
    num_heads: int = 12  # query heads
    num_kv_heads: Optional[int] = None  # key/value heads: None = MHA, 1 = MQA, else GQA
    mlp_ratio: float = 4.0  # feed-forward inner width / embed_dim
    mlp_layer: str = "mlp"  # "mlp", "swiglu", "geglu"
    act_layer: str = "gelu"  # activation of "mlp" (see mmzoo.models.vit.ACT_LAYERS)
    norm_layer: str = "layernorm_1e5"  # see mmzoo.layers.get_norm_layer
    post_norm: bool = False  # post-norm residuals (BERT) instead of pre-norm (GPT-2, T5)
    pos_embed: str = "learned"  # "learned", "sinusoidal", "rope", "relative" (T5 bias), "none"
    rel_num_buckets: int = 32  # relative bias: buckets (T5: 32)
    rel_max_distance: int = 128  # relative bias: distances beyond share the last bucket (T5: 128)
    qkv_bias: bool = True  # biases in attention projections (T5: none)
    tie_embeddings: bool = True  # LM head shares the token embedding matrix
    num_experts: int = 0  # > 0: mixture-of-experts feed-forward in every `moe_every`-th block
    moe_top_k: int = 2  # experts per token
    moe_capacity_factor: float = 1.25  # expert capacity slack in training, per sequence prefix (<= 0: dropless)
    moe_every: int = 1  # MoE in blocks moe_every-1, 2*moe_every-1, ... (2: every other block, GShard)
    moe_aux_loss_weight: float = 0.01  # weight of the load-balancing loss in `aux_loss`
    moe_z_loss_weight: float = 0.0  # weight of the router z-loss in `aux_loss` (ST-MoE: 1e-3; 0 = off)
    embed_drop_rate: float = 0.0  # dropout on the embeddings
    proj_drop_rate: float = 0.0  # dropout after attention / MLP projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last block


class LMOutput(NamedTuple):
    """What :meth:`TransformerLM.forward` returns, always.

    logits: (B, L, vocab_size) for every (decoder) position: next-token logits for kind "decoder" and
        "encoder_decoder" (position t predicts decoder token t+1), token logits for "encoder".
    aux_loss: scalar, the weighted mixture-of-experts losses, load balancing + router z-loss (0 without
        experts); add it to the task loss.
    """

    logits: torch.Tensor
    aux_loss: torch.Tensor


class RelativePositionBias(nn.Module):
    """T5's learned relative position bias (Raffel et al. 2020, sec. 2.1; Shaw et al. 2018): one scalar
    per head and log-spaced distance bucket, added to the attention logits; shared by all layers.

    Half the buckets (bidirectional: per direction) hold exact small distances, the rest grow
    logarithmically up to ``max_distance``.
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embed = nn.Embedding(num_buckets, num_heads)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        """Relative positions key - query (any shape, long) -> bucket ids."""
        n = self.num_buckets
        out = torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            out = out + (relative > 0).long() * n
            dist = relative.abs()
        else:
            dist = (-relative).clamp(min=0)  # only the past: keys at or before the query
        exact = n // 2
        is_small = dist < exact
        log_ratio = torch.log(dist.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
        large = (exact + (log_ratio * (n - exact)).long()).clamp(max=n - 1)
        return out + torch.where(is_small, dist, large)

    def forward(self, q_len: int, k_len: int, offset: int = 0) -> torch.Tensor:
        """Bias (1, H, q_len, k_len) for queries at positions ``offset + i`` and keys at ``j``."""
        device = self.embed.weight.device
        q = torch.arange(offset, offset + q_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        return self.embed(self.bucket(k - q)).permute(2, 0, 1).unsqueeze(0)  # (1, H, Lq, Lk)


@register_arch("transformer_lm", LMConfig)
class TransformerLM(nn.Module):
    """BERT / GPT / T5-style language model.

    * ``kind="encoder"``: bidirectional blocks; ``forward(tokens)`` gives per-token logits (masked LM).
    * ``kind="decoder"``: causal blocks; ``forward(tokens)`` gives next-token logits; :meth:`generate`.
    * ``kind="encoder_decoder"``: encoder over ``tokens``, causal decoder with cross-attention over
      ``decoder_tokens``; ``forward(tokens, decoder_tokens)``; :meth:`generate` decodes from the encoder.

    Args:
        cfg: an :class:`LMConfig`.
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if cfg.kind not in LM_KINDS:
            raise ValueError(f"LMConfig.kind must be one of {LM_KINDS}, got {cfg.kind!r}")
        if cfg.pos_embed not in POS_EMBEDS:
            raise ValueError(f"LMConfig.pos_embed must be one of {POS_EMBEDS}, got {cfg.pos_embed!r}")
        self.cfg = cfg
        D = cfg.embed_dim
        norm_layer = get_norm_layer(cfg.norm_layer)
        self.token_embed = nn.Embedding(cfg.vocab_size, D)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, D))
        elif cfg.pos_embed == "sinusoidal":
            self.register_buffer("pos_embed", sinusoidal_pos_embed(cfg.context_length, D)[None], persistent=False)
        else:
            self.pos_embed = None
        rope = RotaryEmbedding(D // cfg.num_heads, max_len=cfg.context_length) if cfg.pos_embed == "rope" else None
        # post-norm models (BERT) normalise the embeddings; pre-norm ones normalise the final output
        self.embed_norm = norm_layer(D) if cfg.post_norm else nn.Identity()
        self.embed_drop = nn.Dropout(cfg.embed_drop_rate)

        def blocks(depth: int, **kw) -> nn.ModuleList:
            mlp = get_mlp_layer(cfg.mlp_layer)
            stack = build_blocks(
                depth, cfg.drop_path_rate, dim=D, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_drop=cfg.proj_drop_rate,
                attn_drop=cfg.attn_drop_rate, norm_layer=norm_layer, act_layer=get_act_layer(cfg.act_layer),
                mlp_layer=mlp, post_norm=cfg.post_norm, rope=rope, **kw)
            if cfg.num_experts > 0:
                moe = partial(MoE, num_experts=cfg.num_experts, top_k=cfg.moe_top_k,
                              capacity_factor=cfg.moe_capacity_factor, expert_layer=mlp)
                for i, blk in enumerate(stack):
                    if (i + 1) % cfg.moe_every == 0:
                        blk.mlp = moe(D, int(D * cfg.mlp_ratio), act_layer=get_act_layer(cfg.act_layer),
                                      drop=cfg.proj_drop_rate)
            return stack

        self.grad_checkpointing = False  # activation checkpointing of every block (encoder and decoder)
        self.blocks = blocks(cfg.depth)
        self.norm = nn.Identity() if cfg.post_norm else norm_layer(D)
        if cfg.kind == "encoder_decoder":
            self.decoder_blocks = blocks(cfg.decoder_depth or cfg.depth, cross_attn=True)
            self.decoder_norm = nn.Identity() if cfg.post_norm else norm_layer(D)
        else:
            self.decoder_blocks = None
        if cfg.pos_embed == "relative":
            # T5: a bidirectional table for the encoder, a causal one for the decoder
            self.rel_bias = RelativePositionBias(cfg.num_heads, cfg.rel_num_buckets, cfg.rel_max_distance,
                                                 bidirectional=cfg.kind != "decoder")
            if cfg.kind == "encoder_decoder":
                self.decoder_rel_bias = RelativePositionBias(cfg.num_heads, cfg.rel_num_buckets,
                                                             cfg.rel_max_distance, bidirectional=False)
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embed.weight
        self.moe_layers = [m for m in self.modules() if isinstance(m, MoE)]
        self.init_weights()

    # -- init ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """GPT-2 init: normal(0.02) everywhere, residual output projections scaled by 1/sqrt(2 * depth)
        so the residual stream keeps its variance with depth."""
        n_res = 2 * (len(self.blocks) + (len(self.decoder_blocks) if self.decoder_blocks is not None else 0))
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = 0.02 / math.sqrt(n_res) if name.endswith(("attn.proj", "fc2")) else 0.02
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.01)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} if isinstance(self.pos_embed, nn.Parameter) else set()

    # -- pieces -------------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Token ids (B, L) at positions offset.. -> embeddings (B, L, D)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, L), got {tuple(tokens.shape)}")
        L = tokens.shape[1]
        if self.pos_embed is not None and offset + L > self.cfg.context_length:
            raise ValueError(f"tokens reach position {offset + L} but the model's context_length is "
                             f"{self.cfg.context_length}; use shorter inputs or model.context_length >= {offset + L}")
        x = self.token_embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, offset:offset + L]
        return self.embed_drop(self.embed_norm(x))

    def _aux_loss(self, device: torch.device) -> torch.Tensor:
        if not self.moe_layers:
            return torch.zeros((), device=device)
        n = len(self.moe_layers)
        loss = self.cfg.moe_aux_loss_weight * sum(m.aux_loss for m in self.moe_layers) / n
        if self.cfg.moe_z_loss_weight > 0:
            loss = loss + self.cfg.moe_z_loss_weight * sum(m.z_loss for m in self.moe_layers) / n
        return loss

    def encode(self, tokens: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder (kinds "encoder" and "encoder_decoder"): tokens (B, S) -> normed states (B, S, D).
        ``key_padding_mask`` (B, S) is True at padding."""
        x = self.embed(tokens)
        bias = self.rel_bias(x.shape[1], x.shape[1]) if self.cfg.pos_embed == "relative" else None
        x = run_blocks(self.blocks, x, self.grad_checkpointing, key_padding_mask=key_padding_mask, attn_bias=bias)
        return self.norm(x)

    def decode(self, tokens: torch.Tensor, context: Optional[torch.Tensor] = None,
               context_padding_mask: Optional[torch.Tensor] = None,
               kv_caches: Optional[Sequence[tuple[KVCache, KVCache]]] = None, offset: int = 0) -> torch.Tensor:
        """Causal decoder: new tokens (B, L) at positions offset.. -> logits (B, L, V). ``kv_caches`` (from
        :meth:`new_kv_caches`) hold the ``offset`` earlier positions; ``context`` is the encoder output."""
        x = self.embed(tokens, offset)
        L, S = x.shape[1], offset + x.shape[1]
        if self.decoder_blocks is None:
            if self.cfg.kind != "decoder":
                raise ValueError("decode() needs kind 'decoder' or 'encoder_decoder'")
            bias = self.rel_bias(L, S, offset) if self.cfg.pos_embed == "relative" else None
            x = run_blocks(self.blocks, x, self.grad_checkpointing, kv_caches=kv_caches, is_causal=True, attn_bias=bias)
            return self.lm_head(self.norm(x))
        if context is None:
            raise ValueError("an encoder-decoder model needs the encoder output `context` to decode")
        bias = self.decoder_rel_bias(L, S, offset) if self.cfg.pos_embed == "relative" else None
        x = run_blocks(self.decoder_blocks, x, self.grad_checkpointing, kv_caches=kv_caches, context=context,
                       context_padding_mask=context_padding_mask, is_causal=True, attn_bias=bias)
        return self.lm_head(self.decoder_norm(x))

    def new_kv_caches(self) -> list[tuple[KVCache, KVCache]]:
        """Fresh (self, cross) caches, one pair per decoder block."""
        blocks = self.decoder_blocks if self.decoder_blocks is not None else self.blocks
        return [(KVCache(), KVCache(static=True)) for _ in blocks]

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, decoder_tokens: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None) -> LMOutput:
        """tokens (B, L) [, decoder_tokens (B, T)] -> :class:`LMOutput` (logits (B, L or T, V))."""
        kind = self.cfg.kind
        if kind == "encoder":
            logits = self.lm_head(self.encode(tokens, key_padding_mask))
        elif kind == "decoder":
            if key_padding_mask is not None:
                raise ValueError("a decoder-only model takes no key_padding_mask: pad after the text")
            logits = self.decode(tokens)
        else:
            if decoder_tokens is None:
                raise ValueError("an encoder-decoder model needs decoder_tokens (B, T) (the shifted targets)")
            context = self.encode(tokens, key_padding_mask)
            logits = self.decode(decoder_tokens, context, key_padding_mask)
        return LMOutput(logits, self._aux_loss(tokens.device))

    # -- generation ---------------------------------------------------------------------------------
    def decoder_step_fns(self, context: Optional[torch.Tensor] = None,
                         context_padding_mask: Optional[torch.Tensor] = None):
        """KV-cached decoding callables over fresh caches: ``forward(new (B, T)) -> logits (B, T, V)``,
        ``crop(length)`` and ``reorder(index)``."""
        state = {"caches": self.new_kv_caches(), "pos": 0, "context": context, "mask": context_padding_mask}

        def forward(new: torch.Tensor) -> torch.Tensor:
            logits = self.decode(new, state["context"], state["mask"], state["caches"], state["pos"])
            state["pos"] += new.shape[1]
            return logits

        def crop(length: int) -> None:
            for self_cache, _ in state["caches"]:
                self_cache.crop(length)
            state["pos"] = length

        def reorder(index: torch.Tensor) -> None:
            for pair in state["caches"]:
                for c in pair:
                    c.reorder(index)
            for key in ("context", "mask"):
                if state[key] is not None:
                    state[key] = state[key].index_select(0, index)

        return forward, crop, reorder

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int = 32, strategy: str = "greedy",
                 eot_token_id: int = -1, pad_token_id: int = 0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, stop_token_ids: Sequence[int] = (),
                 num_beams: int = 4, use_cache: bool = True, encoder_tokens: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue ``prompt`` (B, P): ``strategy`` "greedy", "sample" (temperature / top-k / top-p) or
        "beam". Encoder-decoder models decode from ``encoder_tokens`` (B, S) with ``prompt`` as the
        decoder's start tokens. ``use_cache=False`` recomputes the whole sequence at every step (the
        reference the KV cache is measured against). A ``max_new_tokens`` past a learned / sinusoidal
        position table is cut to fit, with a warning naming ``context_length``. Returns (B, P + n) ids.
        """
        if self.cfg.kind == "encoder":
            raise ValueError("an encoder-only model (kind='encoder') does not generate; use kind 'decoder'")
        if strategy not in ("greedy", "sample", "beam"):
            raise ValueError(f"strategy must be 'greedy', 'sample' or 'beam', got {strategy!r}")
        context = None
        if self.cfg.kind == "encoder_decoder":
            if encoder_tokens is None:
                raise ValueError("an encoder-decoder model generates from encoder_tokens (B, S)")
            context = self.encode(encoder_tokens)
        max_new_tokens = self._fit_new_tokens(max_new_tokens, prompt.shape[1])
        forward, _, reorder = self.decoder_step_fns(context)
        if use_cache:
            def step(new: torch.Tensor) -> torch.Tensor:
                return forward(new)[:, -1]
        else:
            seen = {"tokens": prompt[:, :0], "context": context}

            def step(new: torch.Tensor) -> torch.Tensor:
                seen["tokens"] = torch.cat([seen["tokens"], new], dim=1)
                return self.decode(seen["tokens"], seen["context"])[:, -1]

            def reorder(index: torch.Tensor) -> None:
                for key in ("tokens", "context"):
                    if seen[key] is not None:
                        seen[key] = seen[key].index_select(0, index)
        if strategy == "beam":
            return generation.beam_search(step, reorder, prompt, max_new_tokens, eot_token_id, pad_token_id,
                                          num_beams)
        return generation.sample(step, prompt, max_new_tokens, eot_token_id, pad_token_id, temperature, top_k,
                                 top_p, greedy=strategy == "greedy", generator=generator,
                                 repetition_penalty=repetition_penalty, stop_token_ids=stop_token_ids)

    @torch.no_grad()
    def generate_speculative(self, draft: "TransformerLM", prompt: torch.Tensor, max_new_tokens: int = 32,
                             num_draft_tokens: int = 4, strategy: str = "greedy", temperature: float = 1.0,
                             top_k: int = 0, top_p: float = 1.0, generator: Optional[torch.Generator] = None,
                             stop_token_ids: Sequence[int] = (), pad_token_id: int = 0,
                             ) -> tuple[torch.Tensor, generation.SpeculativeStats]:
        """Continue ``prompt`` (B, P) with speculative decoding: a smaller ``draft`` model sharing the
        vocabulary proposes ``num_draft_tokens`` tokens per round, this model verifies them in one forward.
        The output has exactly this model's law: its greedy continuation (``strategy="greedy"``, or
        "sample" with ``temperature=0``) or its sampling law with ``temperature`` / ``top_k`` / ``top_p``
        (see :func:`mmzoo.models.generation.speculative_decode`).
        Returns ((B, P + n) ids, :class:`~mmzoo.models.generation.SpeculativeStats`)."""
        if strategy not in ("greedy", "sample"):
            raise ValueError(f"speculative decoding supports strategy 'greedy' or 'sample', got {strategy!r}")
        for name, m in (("target", self), ("draft", draft)):
            if not isinstance(m, TransformerLM) or m.cfg.kind != "decoder":
                kind = m.cfg.kind if isinstance(m, TransformerLM) else type(m).__name__
                raise ValueError(f"speculative decoding needs two decoder-only language models (kind='decoder'); "
                                 f"the {name} is {kind!r}")
        if draft.cfg.vocab_size != self.cfg.vocab_size:
            raise ValueError(f"draft vocab_size {draft.cfg.vocab_size} != target vocab_size {self.cfg.vocab_size}: "
                             "the draft must share the target's tokenizer")
        for m in (self, draft):
            max_new_tokens = m._fit_new_tokens(max_new_tokens, prompt.shape[1])
        t_fwd, t_crop, _ = self.decoder_step_fns()
        d_fwd, d_crop, _ = draft.decoder_step_fns()
        greedy = strategy == "greedy" or temperature == 0
        return generation.speculative_decode(t_fwd, t_crop, d_fwd, d_crop, prompt, max_new_tokens, num_draft_tokens,
                                             greedy, temperature, top_k, top_p, generator, stop_token_ids,
                                             pad_token_id)

    def _fit_new_tokens(self, max_new_tokens: int, prompt_len: int) -> int:
        """``max_new_tokens`` cut, with a warning, to what fits in a learned / sinusoidal position table."""
        if self.pos_embed is None:
            return max_new_tokens
        fit = self.cfg.context_length - prompt_len
        if max_new_tokens > fit:
            warnings.warn(f"max_new_tokens={max_new_tokens} does not fit: the prompt has {prompt_len} tokens and "
                          f"the model's context_length is {self.cfg.context_length}; generating {max(fit, 0)} tokens")
            return max(fit, 0)
        return max_new_tokens


# -- presets ------------------------------------------------------------------------------------------
# tiny CPU presets (vocab_size / context_length come from the data module in the Hydra configs)
@register_model
def gpt_nano() -> LMConfig:
    """Test-size GPT: 2 blocks of width 32."""
    return LMConfig(kind="decoder", vocab_size=512, context_length=64, embed_dim=32, depth=2, num_heads=4)


@register_model
def gpt_tiny() -> LMConfig:
    """GPT trainable on a CPU in minutes (default of ``model=gpt``): 4 blocks of width 128."""
    return LMConfig(kind="decoder", vocab_size=2048, context_length=128, embed_dim=128, depth=4, num_heads=4)


@register_model
def gpt_tiny_draft() -> LMConfig:
    """Draft model for speculative decoding with ``gpt_tiny``: 1 block of width 64."""
    return LMConfig(kind="decoder", vocab_size=2048, context_length=128, embed_dim=64, depth=1, num_heads=2)


@register_model
def gpt_tiny_moe() -> LMConfig:
    """``gpt_tiny`` with a 4-expert top-2 mixture-of-experts feed-forward in every other block."""
    return LMConfig(kind="decoder", vocab_size=2048, context_length=128, embed_dim=128, depth=4, num_heads=4,
                    num_experts=4, moe_top_k=2, moe_every=2)


@register_model
def llama_tiny() -> LMConfig:
    """LLaMA-style decoder: RoPE, SwiGLU, RMSNorm, GQA (4 query / 2 key-value heads), no biases."""
    return LMConfig(kind="decoder", vocab_size=2048, context_length=128, embed_dim=128, depth=4, num_heads=4,
                    num_kv_heads=2, mlp_layer="swiglu", mlp_ratio=8 / 3, norm_layer="rmsnorm", pos_embed="rope",
                    qkv_bias=False, tie_embeddings=False)


@register_model
def bert_nano() -> LMConfig:
    """Test-size BERT."""
    return LMConfig(kind="encoder", vocab_size=512, context_length=64, embed_dim=32, depth=2, num_heads=4,
                    post_norm=True)


@register_model
def bert_tiny() -> LMConfig:
    """BERT trainable on a CPU in minutes (default of ``model=bert``): 4 post-norm blocks of width 128."""
    return LMConfig(kind="encoder", vocab_size=2048, context_length=128, embed_dim=128, depth=4, num_heads=4,
                    post_norm=True)


@register_model
def t5_nano() -> LMConfig:
    """Test-size T5."""
    return LMConfig(kind="encoder_decoder", vocab_size=512, context_length=64, embed_dim=32, depth=2,
                    num_heads=4, pos_embed="relative", norm_layer="rmsnorm", act_layer="relu", qkv_bias=False)


@register_model
def t5_tiny() -> LMConfig:
    """T5 trainable on a CPU in minutes (default of ``model=t5``): 3 encoder + 3 decoder blocks of width 128."""
    return LMConfig(kind="encoder_decoder", vocab_size=2048, context_length=128, embed_dim=128, depth=3,
                    num_heads=4, pos_embed="relative", norm_layer="rmsnorm", act_layer="relu", qkv_bias=False)


# familiar shapes (random init; vocabulary sizes of the original tokenizers)
@register_model
def gpt2_small() -> LMConfig:
    """GPT-2 small (124M): 12 blocks, width 768, 12 heads, 1024 positions."""
    return LMConfig(kind="decoder", vocab_size=50257, context_length=1024, embed_dim=768, depth=12, num_heads=12,
                    act_layer="gelu_tanh")


@register_model
def gpt2_medium() -> LMConfig:
    """GPT-2 medium (355M): 24 blocks, width 1024, 16 heads."""
    return LMConfig(kind="decoder", vocab_size=50257, context_length=1024, embed_dim=1024, depth=24, num_heads=16,
                    act_layer="gelu_tanh")


@register_model
def bert_base() -> LMConfig:
    """BERT-base (110M): 12 post-norm blocks, width 768, 12 heads, 512 positions."""
    return LMConfig(kind="encoder", vocab_size=30522, context_length=512, embed_dim=768, depth=12, num_heads=12,
                    post_norm=True, norm_layer="layernorm_1e5")


@register_model
def bert_large() -> LMConfig:
    """BERT-large (340M): 24 post-norm blocks, width 1024, 16 heads."""
    return LMConfig(kind="encoder", vocab_size=30522, context_length=512, embed_dim=1024, depth=24, num_heads=16,
                    post_norm=True)


@register_model
def t5_small() -> LMConfig:
    """T5-small (60M): 6 + 6 blocks, width 512, 8 heads, ReLU feed-forward 2048, relative bias."""
    return LMConfig(kind="encoder_decoder", vocab_size=32128, context_length=512, embed_dim=512, depth=6,
                    num_heads=8, pos_embed="relative", norm_layer="rmsnorm", act_layer="relu", qkv_bias=False)


@register_model
def t5_base() -> LMConfig:
    """T5-base (220M): 12 + 12 blocks, width 768, 12 heads."""
    return LMConfig(kind="encoder_decoder", vocab_size=32128, context_length=512, embed_dim=768, depth=12,
                    num_heads=12, pos_embed="relative", norm_layer="rmsnorm", act_layer="relu", qkv_bias=False)
