"""Prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021 / VPT-shallow, Jia et al. 2022).

* **prefix**: every self-attention (and, with ``cross_attn=True``, every cross-attention: the decoder of
  an encoder-decoder model such as T5, or CoCa's text decoder) gets ``P`` learnable key and value vectors
  per key/value head, prepended to its keys and values (``Attention.prefix``; masks gain ``P``
  always-visible columns, a causal mask lets every query see all of them, an additive position bias
  such as T5's gives them 0). Works wherever the zoo's :class:`Attention` is used.

  Li & Liang train the prefixes through a reparameterisation (their section 4.3: optimising the tables
  directly is unstable): a small table ``P' (P, d)`` goes through an MLP
  ``Linear(d, hidden) -> tanh -> Linear(hidden, sum over layers of 2 * Hkv * Dh)`` whose output is cut
  into every layer's key and value prefixes (``reparam=True``, :class:`PrefixMLP`). After training only
  the prefixes are kept: :func:`collapse_prefix` evaluates the MLP once and replaces it by plain
  :class:`PrefixKV` tables, with identical outputs.
* **prompt**: ``P`` learnable tokens are prepended to the input of each transformer stack (a
  ``ModuleList`` of :class:`Block` s run in order: ViT, both CLIP towers, CoCa, wav2vec 2.0) and removed
  after its last block, so everything outside the stack (pooling, heads) sees the usual sequence.
  Key-padding masks are extended; dense ``attn_mask`` s and KV-cache decoding are refused with an error.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.attention import Attention
from ..layers.block import Block

# the attribute of the adapted model that holds the shared reparameterisation (one per model)
PREFIX_MLP = "prefix_mlp"


class _Prefix(nn.Module):
    """An ``Attention.prefix``: prepends ``tables()`` to the keys and values."""

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value prefixes, each (Hkv, P, Dh)."""
        raise NotImplementedError

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Hkv, S, Dh) keys and values -> (B, Hkv, P + S, Dh)."""
        B = k.shape[0]
        tk, tv = self.tables()
        pk = tk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        pv = tv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


class PrefixKV(_Prefix):
    """Learnable key/value prefixes for one attention layer (plain tables).

    Args:
        num_kv_heads: key/value heads of the attention.
        length: number of prefix positions ``P``.
        head_dim: per-head width.
    """

    def __init__(self, num_kv_heads: int, length: int, head_dim: int) -> None:
        super().__init__()
        if length <= 0:
            raise ValueError(f"peft.num_tokens (prefix length) must be positive, got {length}")
        self.k = nn.Parameter(torch.randn(num_kv_heads, length, head_dim) * 0.02)  # (Hkv, P, Dh)
        self.v = nn.Parameter(torch.randn(num_kv_heads, length, head_dim) * 0.02)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k, self.v


class PrefixMLP(nn.Module):
    """Li & Liang's reparameterisation of every layer's prefixes: ``MLP(P')`` with ``P'`` a (P, d) table.

    The output row ``p`` is laid out layer after layer, ``[k_0 | v_0 | k_1 | v_1 | ...]``, each ``k_l``
    / ``v_l`` of width ``Hkv_l * Dh_l`` (heads major), as the reference implementation's
    ``control_trans`` output is cut into ``past_key_values``.

    Args:
        length: prefix positions ``P``.
        kv_shapes: ``(Hkv, Dh)`` of every prefixed attention, in order.
        dim: width ``d`` of the small table (Li & Liang: the model width).
        hidden: inner width of the MLP (Li & Liang: 512).
    """

    def __init__(self, length: int, kv_shapes: Sequence[tuple[int, int]], dim: int, hidden: int = 512) -> None:
        super().__init__()
        if length <= 0:
            raise ValueError(f"peft.num_tokens (prefix length) must be positive, got {length}")
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"peft.reparam_dim and peft.reparam_hidden must be positive, got {dim} and {hidden}")
        self.kv_shapes = [tuple(int(s) for s in shape) for shape in kv_shapes]
        widths = [h * d for h, d in self.kv_shapes]
        self.offsets = [2 * sum(widths[:i]) for i in range(len(widths))]  # start of layer i's [k | v] columns
        # PyTorch's default inits of nn.Embedding / nn.Linear, as Hugging Face PEFT's PrefixEncoder
        self.embed = nn.Embedding(length, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(hidden, 2 * sum(widths))

    @property
    def length(self) -> int:
        return self.embed.num_embeddings

    def forward(self) -> torch.Tensor:
        """Every layer's prefixes at once, (P, sum over layers of 2 * Hkv * Dh)."""
        return self.fc2(self.act(self.fc1(self.embed.weight)))

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value prefixes (Hkv, P, Dh) of layer ``index``: only its rows of ``fc2`` are evaluated."""
        h, d = self.kv_shapes[index]
        start, width = self.offsets[index], 2 * h * d
        hid = self.act(self.fc1(self.embed.weight))  # (P, hidden)
        out = F.linear(hid, self.fc2.weight[start:start + width], self.fc2.bias[start:start + width])  # (P, 2 Hkv Dh)
        k, v = out.view(self.length, 2, h, d).permute(1, 2, 0, 3).unbind(0)  # 2 x (Hkv, P, Dh)
        return k, v


class PrefixFromMLP(_Prefix):
    """``Attention.prefix`` of one layer whose tables come from the model's shared :class:`PrefixMLP`.

    The MLP is held by reference, not as a submodule, so its parameters are registered (and saved) once,
    on the model (``model.prefix_mlp``).

    Args:
        source: the shared reparameterisation.
        index: this layer's slot in it.
    """

    def __init__(self, source: PrefixMLP, index: int) -> None:
        super().__init__()
        self._source = (source,)  # a tuple hides it from nn.Module's registration
        self.index = index

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._source[0].layer(self.index)

    def extra_repr(self) -> str:
        return f"index={self.index}"


def prefix_targets(model: nn.Module, cross_attn: bool = False) -> list[tuple[str, Attention]]:
    """The attentions prefix tuning adapts, by name: every self-attention, plus the cross-attentions."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, Attention) and (cross_attn or not m.cross_attn)]


def apply_prefix(model: nn.Module, num_tokens: int = 8, cross_attn: bool = False, reparam: bool = False,
                 reparam_hidden: int = 512, reparam_dim: Optional[int] = None) -> int:
    """Attach key/value prefixes to every self-attention (and cross-attention); returns how many.

    Args:
        model: the model, adapted in place.
        num_tokens: prefix length ``P``.
        cross_attn: also prefix the cross-attentions (Li & Liang prefix BART's decoder cross-attention).
        reparam: train through :class:`PrefixMLP` (``model.prefix_mlp``); :func:`collapse_prefix` turns
            it into plain tables after training.
        reparam_hidden: the MLP's inner width.
        reparam_dim: width of its (P, d) input table; None: the model width (the first prefixed
            attention's width).
    """
    targets = [(n, m) for n, m in prefix_targets(model, cross_attn) if m.prefix is None]
    if not targets:
        if any(isinstance(m, Attention) and m.prefix is not None for m in model.modules()):
            return 0  # adapted before
        kinds = "self- or cross-attention" if cross_attn else "self-attention"
        raise ValueError(f"peft=prefix needs mmzoo.layers.Attention {kinds}; {type(model).__name__} has none")
    ref = targets[0][1].proj.weight
    if reparam:
        if hasattr(model, PREFIX_MLP):
            raise ValueError(f"{type(model).__name__} already has a `{PREFIX_MLP}`; apply peft=prefix once")
        mlp = PrefixMLP(num_tokens, [(m.num_kv_heads, m.head_dim) for _, m in targets],
                        int(reparam_dim or ref.shape[0]), int(reparam_hidden))
        setattr(model, PREFIX_MLP, mlp.to(device=ref.device, dtype=ref.dtype))
        for i, (_, m) in enumerate(targets):
            m.prefix = PrefixFromMLP(mlp, i)
    else:
        for _, m in targets:
            w = m.proj.weight
            m.prefix = PrefixKV(m.num_kv_heads, num_tokens, m.head_dim).to(device=w.device, dtype=w.dtype)
    return len(targets)


@torch.no_grad()
def collapsed_prefix_tables(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain tables :func:`collapse_prefix` would write, by parameter name (``<attention>.prefix.k`` /
    ``.v``), without changing the model; empty when it has no :class:`PrefixMLP`."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Attention) and isinstance(m.prefix, PrefixFromMLP):
            k, v = m.prefix.tables()
            out[f"{name}.prefix.k"], out[f"{name}.prefix.v"] = k.detach().clone(), v.detach().clone()
    return out


@torch.no_grad()
def collapse_prefix(model: nn.Module) -> nn.Module:
    """Replace the reparameterisation by the plain prefix tables it produces (Li & Liang: after training
    the MLP is dropped and only the prefixes are kept). Outputs are unchanged: each table is the very
    tensor the MLP hands its layer. The tables stay trainable if the MLP was; ``model.peft_config`` gets
    ``reparam=False``. A model without :class:`PrefixMLP` is returned as is."""
    tables = collapsed_prefix_tables(model)
    mlp = getattr(model, PREFIX_MLP, None)
    trainable = mlp is not None and any(p.requires_grad for p in mlp.parameters())
    for name, m in model.named_modules():
        if isinstance(m, Attention) and isinstance(m.prefix, PrefixFromMLP):
            k = tables[f"{name}.prefix.k"]
            plain = PrefixKV(m.num_kv_heads, k.shape[1], m.head_dim).to(device=k.device, dtype=k.dtype)
            plain.k.copy_(k)
            plain.v.copy_(tables[f"{name}.prefix.v"])
            m.prefix = plain.requires_grad_(trainable)
    if mlp is not None:
        delattr(model, PREFIX_MLP)
    if isinstance(getattr(model, "peft_config", None), dict) and model.peft_config.get("method") == "prefix":
        model.peft_config = {**model.peft_config, "reparam": False}
    return model


class SoftPrompt(nn.Module):
    """``P`` learnable input tokens of width ``dim`` for one transformer stack."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        if num_tokens <= 0:
            raise ValueError(f"peft.num_tokens (prompt length) must be positive, got {num_tokens}")
        self.tokens = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)  # (1, P, D)


def block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ``ModuleList`` whose children are all :class:`Block` s (a transformer stack), by name."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) and all(isinstance(b, Block) for b in m)]


class _PromptIn:
    """Forward pre-hook on every block of a stack: the first block prepends the prompt; every block gets
    its key-padding mask extended by ``P`` visible positions."""

    def __init__(self, prompt: SoftPrompt, first: bool, where: str) -> None:
        self.prompt, self.first, self.where = prompt, first, where

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if kwargs.get("kv_cache") is not None:
            raise ValueError(f"peft=prompt does not support KV-cache decoding ({self.where}); "
                             "use peft=prefix for generation")
        if kwargs.get("attn_mask") is not None:
            raise ValueError(f"peft=prompt cannot extend a dense attn_mask ({self.where}); use peft=prefix")
        x, rest = args[0], args[1:]
        P = self.prompt.tokens.shape[1]
        if self.first:
            x = torch.cat([self.prompt.tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)  # (B, P+L, D)
        kpm = kwargs.get("key_padding_mask")
        if kpm is not None:
            kwargs = dict(kwargs, key_padding_mask=F.pad(kpm.to(torch.bool), (P, 0), value=False))
        return (x, *rest), kwargs


class _PromptOut:
    """Forward hook on the last block: drop the prompt positions."""

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.num_tokens:]


def apply_prompt(model: nn.Module, num_tokens: int = 8, stacks: Optional[Sequence[str]] = None) -> list[str]:
    """Add soft prompts to the transformer stacks (all, or those named in ``stacks``); returns their names."""
    found = block_stacks(model)
    if stacks:
        missing = set(stacks) - {n for n, _ in found}
        if missing:
            raise ValueError(f"peft.stacks names {sorted(missing)}, but the transformer stacks of "
                             f"{type(model).__name__} are {[n for n, _ in found]}")
        found = [(n, s) for n, s in found if n in stacks]
    if not found:
        raise ValueError(f"peft=prompt needs a ModuleList of mmzoo.layers.Block (a transformer stack); "
                         f"{type(model).__name__} has none")
    for name, blocks in found:
        first = blocks[0]
        if hasattr(first, "prompt"):
            continue
        ref = first.attn.proj.weight
        first.prompt = SoftPrompt(first.attn.proj.out_features, num_tokens).to(device=ref.device, dtype=ref.dtype)
        for i, blk in enumerate(blocks):
            blk.register_forward_pre_hook(_PromptIn(first.prompt, i == 0, name), with_kwargs=True)
        blocks[-1].register_forward_hook(_PromptOut(num_tokens))
    return [n for n, _ in found]
