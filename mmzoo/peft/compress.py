"""Post-training compression of any zoo model: magnitude pruning and int8 weight quantization.

* :func:`magnitude_prune`: zero the smallest-magnitude weights of the linear layers, to a sparsity
  target over all of them (``scope="global"``) or within each layer (``scope="layer"``).
* :func:`prune_heads`: structured pruning of whole attention heads of every self-attention: a head's
  score is the L2 norm of its query/key/value rows and its output-projection columns; the lowest-scoring
  ``sparsity`` fraction of heads per layer is zeroed (output columns and q/k/v rows), which removes the
  head's contribution exactly.
* :func:`quantize_int8`: per-output-channel symmetric linear quantization of linear weights to int8
  (``w ~= scale[o] * q[o, i]``, ``q`` in [-127, 127]); the model keeps the dequantized weights (to
  measure accuracy), the int8 tensors and scales are returned (to measure or store the size).

Classifier heads are left alone by default (``skip``), as is usual for compression studies.

These are one-shot, in-place helpers on dense weights. :mod:`mmzoo.compress` holds the full methods:
persistent masks through retraining, iterative schedules, a sparse export that shrinks on disk, k-means
quantization, int8 weights kept as int8 with integer matmuls, W8A8 calibration and SmoothQuant.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
import torch.nn as nn

from ..layers.attention import Attention

DEFAULT_SKIP = ("head", "*.head", "lm_head")


def _linears(model: nn.Module, skip: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(fnmatch.fnmatch(n, p) for p in skip)]


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global",
                    skip: Sequence[str] = DEFAULT_SKIP) -> float:
    """Zero the ``sparsity`` fraction of smallest |w| of the linear weights in place; returns the
    achieved sparsity over those weights."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = _linears(model, skip)
    if not layers:
        raise ValueError(f"no nn.Linear to prune in {type(model).__name__} (skip={list(skip)})")
    if scope == "global":
        scores = torch.cat([m.weight.abs().flatten().float() for _, m in layers])
        k = int(sparsity * scores.numel())
        if k:
            threshold = scores.kthvalue(k).values
            for _, m in layers:
                m.weight.masked_fill_(m.weight.abs() <= threshold, 0.0)
    else:
        for _, m in layers:
            k = int(sparsity * m.weight.numel())
            if k:
                threshold = m.weight.abs().flatten().float().kthvalue(k).values
                m.weight.masked_fill_(m.weight.abs() <= threshold, 0.0)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / sum(m.weight.numel() for _, m in layers)


@torch.no_grad()
def prune_heads(model: nn.Module, sparsity: float) -> int:
    """Zero the lowest-norm ``sparsity`` fraction of heads in every self-attention; returns heads zeroed."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    pruned = 0
    for m in model.modules():
        if not isinstance(m, Attention) or m.cross_attn:
            continue
        H, Dh, Hkv = m.num_heads, m.head_dim, m.num_kv_heads
        n = int(sparsity * H)
        if not n:
            continue
        w_out = m.proj.weight.view(m.proj.out_features, H, Dh)  # (D, H, Dh): columns per head
        score = w_out.float().pow(2).sum(dim=(0, 2))
        w_q = m.qkv.weight[:H * Dh].view(H, Dh, -1)  # (H, Dh, D): query rows per head
        score = score + w_q.float().pow(2).sum(dim=(1, 2))
        if Hkv == H:  # MHA: key/value rows belong to one head only
            kv = m.qkv.weight[H * Dh:].view(2, H, Dh, -1)
            score = score + kv.float().pow(2).sum(dim=(0, 2, 3))
        heads = score.sqrt().argsort()[:n]
        for h in heads.tolist():
            w_out[:, h].zero_()
            w_q[h].zero_()
            if m.qkv.bias is not None:
                m.qkv.bias[h * Dh:(h + 1) * Dh].zero_()
            if Hkv == H:
                kv[:, h].zero_()
                if m.qkv.bias is not None:
                    m.qkv.bias[H * Dh:].view(2, H, Dh)[:, h].zero_()
        pruned += n
    if sparsity > 0 and pruned == 0:
        raise ValueError("prune_heads found no self-attention with enough heads for this sparsity")
    return pruned


@torch.no_grad()
def quantize_int8(model: nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize linear weights per output channel to int8 and write the dequantized values back in place.

    Returns ``{module name: (int8 weight (out, in), fp32 scale (out,))}``.
    """
    out = {}
    for name, m in _linears(model, skip):
        w = m.weight.float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        m.weight.copy_((q.float() * scale[:, None]).to(m.weight.dtype))
        out[name] = (q, scale)
    return out


def model_bytes(model: nn.Module, quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> int:
    """Bytes of the parameters, counting quantized linear weights as int8 + fp32 scales."""
    quantized = quantized or {}
    qnames = {f"{n}.weight" for n in quantized}
    size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in qnames)
    return size + sum(q.numel() + s.numel() * 4 for q, s in quantized.values())
