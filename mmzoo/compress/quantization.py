"""Quantization of linear layers: k-means weight sharing and linear (affine) integer quantization.

* **K-means** (Han et al. 2016, "Deep Compression", sec. 3): the weights of each layer are clustered into
  ``2^n`` centroids by Lloyd's algorithm (linear initialisation between min and max, which the paper found
  best); the layer stores one ``uint8`` index per weight and the fp32 codebook (:class:`KMeansLinear`).
  The centroids stay trainable: their gradient is the sum of the gradients of the weights that share them
  (the paper's centroid fine-tuning), which autograd of ``codebook[indices]`` computes.
* **Linear** (affine) quantization ``r = S (q - Z)`` (Jacob et al. 2018): :func:`affine_qparams`,
  :func:`quantize_affine` and :func:`dequantize_affine`, symmetric (``Z = 0``, ``q`` in
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``) or asymmetric (``q`` in ``[-2^(b-1), 2^(b-1) - 1]``, the real range
  widened to contain 0 so that 0 is exact), per tensor or per channel.
* :class:`Int8Linear` keeps int8 weights (symmetric, per output channel or per tensor) and fp32 scales in
  memory. Weight-only (W8): the int8 weight is cast to the activation's dtype for a float matmul. W8A8:
  the input is quantized to int8 too (``"static"``: a scale and zero point calibrated on data with
  :func:`calibrate`; ``"dynamic"``: per token at run time) and the product runs as an integer GEMM,
  ``torch._int_mm`` (int8 x int8 -> int32 accumulation, implemented on CPU and CUDA), then
  ``y = S_x S_w (acc - Z_x * sum_i q_w[o, i]) + b``. Everything outside the linear layers (norms,
  softmax, GELU, residual adds) stays fp32, as in SmoothQuant's W8A8 setting.
* **SmoothQuant** (Xiao et al. 2022): :func:`smooth_quant` migrates activation outliers into the weights
  with per-input-channel factors ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``: ``X / s`` is folded
  into the preceding LayerNorm's weight and bias and ``W * s`` into the linear layer, so the float model
  computes the same function before any quantization. Applied, as in the paper, to the LayerNorm -> linear
  pairs of every block (``norm1`` -> ``attn.qkv``, ``norm2`` -> ``mlp.fc1``).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pruning import DEFAULT_SKIP, prunable_linears


# -- affine quantization ---------------------------------------------------------------------------------
def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range: symmetric ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (restricted, so ``Z = 0`` is centred),
    asymmetric ``[-2^(b-1), 2^(b-1) - 1]``.

    Args:
        bits: bit width (2..16).
        symmetric: symmetric (zero point 0) or asymmetric range.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    half = 2 ** (bits - 1)
    return (-(half - 1), half - 1) if symmetric else (-half, half - 1)


def _reduce_dims(x: torch.Tensor, axis: Optional[int]) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


@torch.no_grad()
def affine_qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: Optional[int] = None,
                   x_min: Optional[torch.Tensor] = None, x_max: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``S`` and zero point ``Z`` mapping the range of ``x`` onto ``bits``-bit integers.

    Symmetric: ``S = max|r| / qmax``, ``Z = 0``. Asymmetric: ``S = (r_max - r_min) / (qmax - qmin)``,
    ``Z = round(qmin - r_min / S)``, with ``r_min = min(x_min, 0)``, ``r_max = max(x_max, 0)``.

    Args:
        x: the tensor (or ``None`` placeholder shape source when ``x_min``/``x_max`` are given).
        bits: bit width.
        symmetric: symmetric or asymmetric.
        axis: per-channel along this dimension (the others are reduced), ``None`` = per tensor.
        x_min: observed minimum (calibration) instead of ``x.min``.
        x_max: observed maximum instead of ``x.max``.

    Returns:
        ``(scale, zero_point)``, float32 and int32, shaped to broadcast against ``x`` (kept dims).
    """
    qmin, qmax = qrange(bits, symmetric)
    dims = _reduce_dims(x, axis)
    lo = x.amin(dim=dims, keepdim=True) if x_min is None else torch.as_tensor(x_min)
    hi = x.amax(dim=dims, keepdim=True) if x_max is None else torch.as_tensor(x_max)
    lo, hi = lo.double().clamp(max=0), hi.double().clamp(min=0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(qmin - lo / scale).clamp(qmin, qmax)
    return scale.float(), zero.to(torch.int32)


def quantize_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int = 8,
                    symmetric: bool = True) -> torch.Tensor:
    """``q = clamp(round(x / S) + Z, qmin, qmax)`` (round half to even), int8 for ``bits <= 8`` else int32.

    Args:
        x: real values.
        scale: ``S`` (broadcastable to ``x``).
        zero_point: ``Z`` (broadcastable to ``x``).
        bits: bit width.
        symmetric: which integer range (:func:`qrange`).
    """
    qmin, qmax = qrange(bits, symmetric)
    q = torch.round(x / scale.to(x.dtype)) + zero_point.to(x.dtype)
    return q.clamp(qmin, qmax).to(torch.int8 if bits <= 8 else torch.int32)


def dequantize_affine(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``r = S (q - Z)``.

    Args:
        q: integers.
        scale: ``S``.
        zero_point: ``Z``.
        dtype: output dtype.
    """
    return scale.to(dtype) * (q.to(dtype) - zero_point.to(dtype))


# -- integer matmul --------------------------------------------------------------------------------------
def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` of int8 matrices with int32 accumulation: ``torch._int_mm`` (an integer GEMM on CPU;
    on CUDA when its shape rules hold: more than 16 rows, inner and output sizes multiples of 8), else an
    exact float64 product (int8 products summed over fewer than 2^38 terms are exact in float64).

    Args:
        a: (M, K) int8.
        b: (K, N) int8.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul takes int8 matrices, got {a.dtype} and {b.dtype}")
    M, K = a.shape
    N = b.shape[1]
    if a.device.type == "cpu" or (a.is_cuda and M > 16 and K % 8 == 0 and N % 8 == 0):
        return torch._int_mm(a, b)
    return (a.double() @ b.double()).to(torch.int32)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (symmetric per output channel, or per tensor).

    Args:
        linear: the float layer to quantize (weights copied, not kept).
        per_channel: one scale per output channel (else one per tensor).
        activations: ``"none"`` (W8: float matmul on the int8 weight cast to float), ``"static"`` (W8A8:
            input scale / zero point from calibration, set by :meth:`set_activation_range`) or
            ``"dynamic"`` (W8A8: per-token input scale / zero point computed at run time).
        act_symmetric: symmetric input quantization (``Z_x = 0``) instead of asymmetric.
    """

    def __init__(self, linear: nn.Linear, per_channel: bool = True, activations: str = "none",
                 act_symmetric: bool = False) -> None:
        super().__init__()
        if activations not in ("none", "static", "dynamic"):
            raise ValueError(f"activations must be 'none', 'static' or 'dynamic', got {activations!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activations, self.act_symmetric, self.per_channel = activations, act_symmetric, per_channel
        w = linear.weight.detach().float()
        scale, _ = affine_qparams(w, 8, symmetric=True, axis=0 if per_channel else None)
        q = quantize_affine(w, scale, torch.zeros((), dtype=torch.int32), 8, symmetric=True)
        self.register_buffer("weight_int8", q)  # (out, in) int8
        self.register_buffer("weight_scale", scale.expand(self.out_features, 1).reshape(-1).contiguous())  # (out,)
        # sum_i q_w[o, i]: the zero-point correction of asymmetric inputs, precomputed once
        self.register_buffer("weight_row_sum", q.sum(1, dtype=torch.int32))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(),
                                                                  requires_grad=False)
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int32))

    def set_activation_range(self, x_min: float, x_max: float) -> None:
        """Static input quantization parameters from a calibrated range.

        Args:
            x_min: smallest input value seen in calibration.
            x_max: largest input value seen in calibration.
        """
        s, z = affine_qparams(torch.zeros(1), 8, self.act_symmetric, x_min=torch.tensor(x_min),
                              x_max=torch.tensor(x_max))
        self.act_scale.copy_(s.reshape(()))
        self.act_zero_point.copy_(z.reshape(()))

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the int8 one stands for, ``S_w q_w`` (out, in)."""
        return self.weight_scale[:, None] * self.weight_int8.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "none":
            y = F.linear(x, self.weight_int8.to(x.dtype)) * self.weight_scale.to(x.dtype)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()  # (N, in)
        if self.activations == "static":
            s_x, z_x = self.act_scale, self.act_zero_point
        else:  # per token
            s_x, z_x = affine_qparams(x2, 8, self.act_symmetric, axis=0)  # (N, 1)
        q_x = quantize_affine(x2, s_x, z_x, 8, self.act_symmetric)
        acc = int8_matmul(q_x, self.weight_int8.t())  # (N, out) int32
        acc = acc - z_x.to(torch.int32) * self.weight_row_sum  # subtract Z_x * sum_i q_w[o, i]
        y = acc.float() * (s_x * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"activations={self.activations}, per_channel={self.per_channel}")


# -- k-means quantization --------------------------------------------------------------------------------
@torch.no_grad()
def kmeans_1d(values: torch.Tensor, bits: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of scalars into ``2^bits`` clusters, linearly initialised over ``[min, max]``.

    Args:
        values: the weights (any shape).
        bits: 1..8 (uint8 indices).
        iters: at most this many assignment / update rounds (stops when the assignment is stable).

    Returns:
        ``(indices, codebook)``: uint8 indices shaped like ``values`` and the sorted float32 centroids.
        An empty cluster keeps its previous centroid.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"k-means bits must be in [1, 8] (uint8 indices), got {bits}")
    flat = values.detach().flatten().double()
    K = 2 ** bits
    centroids = torch.linspace(flat.min().item(), flat.max().item(), K, dtype=torch.float64, device=flat.device)
    idx = None
    for _ in range(iters):
        # 1-D nearest centroid: the cells are bounded by the midpoints of the sorted centroids
        centroids = centroids.sort().values
        new_idx = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
        if idx is not None and torch.equal(new_idx, idx):
            break
        idx = new_idx
        sums = torch.zeros(K, dtype=torch.float64, device=flat.device).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=K)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    centroids = centroids.sort().values
    idx = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return idx.to(torch.uint8).view(values.shape), centroids.float()


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``bits``-bit indices (uint8 tensor) densely into bytes (little-endian bit order).

    Args:
        indices: uint8 indices, each below ``2^bits``.
        bits: index width.
    """
    flat = indices.flatten().to(torch.int64)
    bit_planes = (flat[:, None] >> torch.arange(bits, device=flat.device)) & 1  # (N, bits)
    stream = bit_planes.flatten()
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)]).view(-1, 8)
    return (stream << torch.arange(8, device=flat.device)).sum(1).to(torch.uint8)


def unpack_indices(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: ``numel`` uint8 indices.

    Args:
        packed: bytes from :func:`pack_indices`.
        bits: index width.
        numel: number of indices.
    """
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8, device=packed.device)) & 1).flatten()
    planes = stream[:numel * bits].view(numel, bits)
    return (planes << torch.arange(bits, device=packed.device)).sum(1).to(torch.uint8)


class KMeansLinear(nn.Module):
    """A linear layer whose weights share ``2^bits`` centroids: uint8 indices + a trainable fp32 codebook.

    Args:
        linear: the float layer (weights clustered, not kept).
        bits: 1..8.
        iters: maximum Lloyd iterations.
    """

    def __init__(self, linear: nn.Linear, bits: int, iters: int = 100) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        idx, codebook = kmeans_1d(linear.weight, bits, iters)
        self.register_buffer("indices", idx)  # (out, in) uint8
        self.codebook = nn.Parameter(codebook)  # (2^bits,)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The shared-weight matrix ``codebook[indices]`` (out, in)."""
        return self.codebook[self.indices.long()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def packed_bytes(self) -> int:
        """Bytes of this layer's storage with indices packed at ``bits`` bits (codebook and bias fp32)."""
        n = math.ceil(self.indices.numel() * self.bits / 8) + self.codebook.numel() * 4
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


# -- whole-model transforms ------------------------------------------------------------------------------
def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


@torch.no_grad()
def quantize_kmeans(model: nn.Module, bits: int, skip: Sequence[str] = DEFAULT_SKIP, iters: int = 100) -> nn.Module:
    """Replace every linear layer (except ``skip``) by a :class:`KMeansLinear` in place.

    Args:
        model: the model.
        bits: codebook size ``2^bits`` (1..8).
        skip: module-name patterns left in float (the classifier head by default).
        iters: maximum Lloyd iterations per layer.
    """
    for name, m in prunable_linears(model, skip):
        _replace(model, name, KMeansLinear(m, bits, iters).to(m.weight.device))
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, skip: Sequence[str] = DEFAULT_SKIP) -> dict[str, dict]:
    """Run ``batches`` through ``model`` (eval mode) and record the inputs of every linear layer.

    Args:
        model: the float model.
        batches: an iterable of inputs, or of ``(inputs, targets)`` tuples.
        skip: module-name patterns not observed.

    Returns:
        ``{linear name: {"min": float, "max": float, "absmax": (in_features,) tensor}}``.
    """
    stats: dict[str, dict] = {}
    hooks = []

    def observer(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            s = stats.setdefault(name, {"min": math.inf, "max": -math.inf,
                                        "absmax": torch.zeros(x.shape[-1], device=x.device)})
            s["min"], s["max"] = min(s["min"], x.min().item()), max(s["max"], x.max().item())
            s["absmax"] = torch.maximum(s["absmax"], x.abs().amax(0))
        return hook

    for name, m in prunable_linears(model, skip):
        hooks.append(m.register_forward_pre_hook(observer(name)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not stats:
        raise ValueError("calibrate saw no linear-layer input: empty batches or every layer skipped")
    return stats


@torch.no_grad()
def quantize_int8(model: nn.Module, activations: str = "none", calibration: Optional[dict[str, dict]] = None,
                  per_channel: bool = True, act_symmetric: bool = False,
                  skip: Sequence[str] = DEFAULT_SKIP) -> nn.Module:
    """Replace every linear layer (except ``skip``) by an :class:`Int8Linear` in place.

    Args:
        model: the model.
        activations: ``"none"`` (W8), ``"static"`` (W8A8, needs ``calibration``) or ``"dynamic"`` (W8A8).
        calibration: :func:`calibrate`'s output, for static activation ranges.
        per_channel: per-output-channel weight scales (else per tensor).
        act_symmetric: symmetric activation quantization.
        skip: module-name patterns left in float.
    """
    if activations == "static" and calibration is None:
        raise ValueError("activations='static' needs calibration=calibrate(model, batches)")
    for name, m in prunable_linears(model, skip):
        q = Int8Linear(m, per_channel, activations, act_symmetric).to(m.weight.device)
        if activations == "static":
            if name not in calibration:
                raise ValueError(f"no calibration statistics for {name!r}: calibrate the same model first")
            q.set_activation_range(calibration[name]["min"], calibration[name]["max"])
        _replace(model, name, q)
    return model


@torch.no_grad()
def smooth_quant(model: nn.Module, batches: Iterable, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """SmoothQuant: migrate activation scale into the weights of each LayerNorm -> linear pair.

    Calibrates the per-channel input maxima on ``batches``, then for ``(norm1, attn.qkv)`` and
    ``(norm2, mlp.fc1)`` of every block divides the norm's weight and bias by
    ``s = max|X|^alpha / max|W|^(1 - alpha)`` and multiplies the linear's input columns by ``s``.

    Args:
        model: a float model built from :class:`~mmzoo.layers.Block` s (modified in place).
        batches: calibration inputs (or ``(inputs, targets)`` tuples).
        alpha: migration strength in [0, 1] (0.5 in the paper for most models).

    Returns:
        ``{linear name: s}`` of every smoothed layer.
    """
    from ..layers.block import Block

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pairs = []
    for name, blk in model.named_modules():
        if not isinstance(blk, Block):
            continue
        if getattr(blk, "attn", None) is not None and hasattr(blk.attn, "qkv"):
            pairs.append((blk.norm1, f"{name}.attn.qkv", blk.attn.qkv))
        if isinstance(getattr(blk.mlp, "fc1", None), nn.Linear):
            pairs.append((blk.norm2, f"{name}.mlp.fc1", blk.mlp.fc1))
    if not pairs:
        raise ValueError(f"smooth_quant found no Block (norm1 -> attn.qkv, norm2 -> mlp.fc1) in {type(model).__name__}")
    names = {n for _, n, _ in pairs}
    stats = calibrate(model, batches, skip=[n for n, _ in prunable_linears(model, ()) if n not in names])
    factors = {}
    for norm, name, linear in pairs:
        if getattr(norm, "weight", None) is None:
            raise ValueError(f"smooth_quant folds 1/s into the norm before {name!r}, which has no affine weight")
        a = stats[name]["absmax"].double()
        w = linear.weight.detach().abs().amax(0).double()
        s = (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)
        s = torch.where((a > 0) & (w > 0), s, torch.ones_like(s))  # dead channels: leave alone
        norm.weight.div_(s.to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s.to(norm.bias.dtype))
        linear.weight.mul_(s.to(linear.weight.dtype)[None, :])
        factors[name] = s.float()
    return factors


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored: int8 / uint8 tensors at one byte per value,
    except :class:`KMeansLinear` indices counted packed at ``bits`` bits (:func:`pack_indices`)."""
    total = 0
    seen = set()
    for module in model.modules():
        if isinstance(module, KMeansLinear):
            total += module.packed_bytes()
            seen.update(id(t) for t in (module.indices, module.codebook, module.bias) if t is not None)
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
