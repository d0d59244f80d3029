"""Magnitude pruning with persistent masks (Han et al. 2015, "Learning both Weights and Connections for
Efficient Neural Networks"), at three granularities, iterated prune -> retrain -> prune, and a sparse export
whose file really shrinks.

Granularities (``granularity=``):

* ``"fine"``: single weights, the smallest ``|w|`` of each linear layer (``scope="layer"``) or of all of
  them together (``scope="global"``, one threshold as in Han et al. 2015).
* ``"row"``: whole output channels (rows of a linear weight and their bias), the lowest L2 norm
  ``||W[i, :]||`` of each layer. When the layer is the first linear of an MLP (``mlp.fc1``) whose
  activation maps 0 to 0 (GELU, ReLU, SiLU), the matching input columns of ``mlp.fc2`` are masked too:
  the hidden unit is gone from both layers (channel pruning), which changes no output.
* ``"head"``: whole attention heads of every self-attention (:class:`~mmzoo.layers.Attention`): a head's
  score is the L2 norm of its query (and, without grouped keys/values, key and value) rows of ``qkv``
  and of its columns of ``proj``; the lowest-scoring heads of each layer lose all of them.

Masks are parametrizations (``torch.nn.utils.parametrize``): ``module.weight`` is computed as
``original * mask`` at every access, so the pruned weights stay exactly zero through any number of
optimizer steps (their gradient is zero, and whatever weight decay does to ``original`` is masked away).
A new pruning round ranks the current masked weights, so already pruned weights are pruned first and the
masks only grow. :func:`remove_masks` bakes the zeros into plain parameters.

:func:`export_sparse` writes a safetensors file holding each pruned weight in the smallest of three
lossless forms: dense; *structured* (indices of the rows and columns that hold any non-zero, plus that
dense sub-matrix: what row and head pruning leave); *bitmask* (one bit per weight, packed 8 to a byte,
plus the non-zero values: fine-grained pruning). :func:`load_sparse` rebuilds the dense state dict
exactly.
"""
from __future__ import annotations

import fnmatch
import json
import os
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from ..layers.attention import Attention

DEFAULT_SKIP = ("head", "*.head", "lm_head")
GRANULARITIES = ("fine", "row", "head")


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` (``mask`` a boolean buffer shaped like ``w``).

    Args:
        mask: boolean or 0/1 tensor, True/1 where the weight is kept.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in skip)


def prunable_linears(model: nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> list[tuple[str, nn.Linear]]:
    """``(name, module)`` of every ``nn.Linear`` whose name matches no pattern of ``skip``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _skipped(n, skip)]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _mask_of(module: nn.Module, pname: str) -> Optional[WeightMask]:
    if not parametrize.is_parametrized(module, pname):
        return None
    for p in module.parametrizations[pname]:
        if isinstance(p, WeightMask):
            return p
    return None


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Register (or tighten) persistent masks: ``{"blocks.0.mlp.fc1.weight": bool tensor, ...}``.

    A parameter that already has a mask keeps the intersection of the old and the new one.

    Args:
        model: the model; names are relative to it.
        masks: parameter name -> boolean tensor of the parameter's shape (True = keep).
    """
    for name, mask in masks.items():
        mod_name, _, pname = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        param = getattr(module, pname, None)
        if not isinstance(param, torch.Tensor):
            raise ValueError(f"mask for {name!r}: {mod_name!r} has no parameter {pname!r}")
        if mask.shape != param.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(param.shape)}")
        existing = _mask_of(module, pname)
        if existing is not None:
            existing.mask &= mask.to(existing.mask.device, torch.bool)
        else:
            parametrize.register_parametrization(module, pname, WeightMask(mask.to(param.device)))


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The boolean masks registered on ``model`` by :func:`apply_masks` / :func:`prune`."""
    out = {}
    for mod_name, module in model.named_modules():
        for pname in getattr(module, "parametrizations", {}):
            m = _mask_of(module, pname)
            if m is not None:
                out[_join(mod_name, pname)] = m.mask.clone()
    return out


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake every mask into its parameter (pruned entries become plain zeros) and drop the parametrizations."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            # a deep copy shares its original's parametrized class, whose properties removal deletes: give the
            # module a class of its own first, so that unmasking a copy leaves the original working
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        for pname in list(getattr(module, "parametrizations", {})):
            if _mask_of(module, pname) is not None:
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    return model


def _lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask (True = keep) removing the ``n`` lowest scores (stable order breaks ties)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n:
        keep[torch.argsort(scores.flatten().double(), stable=True)[:n]] = False
    return keep.view(scores.shape)


def _act_keeps_zero(mlp: nn.Module) -> bool:
    act = getattr(mlp, "act", None)
    if act is None:
        return False
    try:
        return bool(act(torch.zeros(1)).abs().item() == 0.0)
    except Exception:  # noqa: BLE001 - an activation that cannot run on a plain tensor is not followed
        return False


def _head_masks(m: Attention, name: str, n: int, masks: dict[str, torch.Tensor]) -> None:
    H, Dh, Hkv = m.num_heads, m.head_dim, m.num_kv_heads
    w_qkv, w_out = m.qkv.weight, m.proj.weight
    score = w_out.double().view(w_out.shape[0], H, Dh).pow(2).sum(dim=(0, 2))  # proj columns per head
    score = score + w_qkv[:H * Dh].double().view(H, Dh, -1).pow(2).sum(dim=(1, 2))  # query rows
    if Hkv == H:  # MHA: key/value rows belong to one head only (GQA shares them, so they stay)
        score = score + w_qkv[H * Dh:].double().view(2, H, Dh, -1).pow(2).sum(dim=(0, 2, 3))
    keep_head = _lowest(score.sqrt(), n)  # (H,)
    per_head_rows = keep_head.repeat_interleave(Dh)  # (H*Dh,)
    rows = torch.cat([per_head_rows, per_head_rows.repeat(2) if Hkv == H
                      else torch.ones(2 * Hkv * Dh, dtype=torch.bool, device=keep_head.device)])
    masks[_join(name, "qkv.weight")] = rows[:, None].expand_as(w_qkv).clone()
    if m.qkv.bias is not None:
        masks[_join(name, "qkv.bias")] = rows.clone()
    masks[_join(name, "proj.weight")] = per_head_rows[None, :].expand_as(w_out).clone()


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, granularity: str = "fine", scope: str = "layer",
                    skip: Sequence[str] = DEFAULT_SKIP) -> dict[str, torch.Tensor]:
    """Masks removing the lowest-magnitude ``sparsity`` fraction at ``granularity`` (see the module doc).

    Ranks the current (already masked) weights, so earlier rounds' zeros are removed first.

    Args:
        model: the model.
        sparsity: fraction in [0, 1) of weights (``fine``), rows (``row``) or heads (``head``) to remove.
        granularity: ``"fine"``, ``"row"`` or ``"head"``.
        scope: ``"layer"`` (each layer to ``sparsity``) or ``"global"`` (one threshold; ``fine`` only).
        skip: module-name patterns left alone (the classifier head by default).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if scope == "global" and granularity != "fine":
        raise ValueError(f"scope='global' ranks single weights across layers: use it with granularity='fine', "
                         f"not {granularity!r}")
    masks: dict[str, torch.Tensor] = {}
    if granularity == "head":
        attns = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, Attention) and not m.cross_attn and not _skipped(n, skip)]
        if not attns:
            raise ValueError(f"granularity='head' found no self-attention in {type(model).__name__}")
        for name, m in attns:
            _head_masks(m, name, int(sparsity * m.num_heads), masks)
        return masks
    layers = prunable_linears(model, skip)
    if not layers:
        raise ValueError(f"no nn.Linear to prune in {type(model).__name__} (skip={list(skip)})")
    if granularity == "fine":
        if scope == "global":
            scores = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
            keep = _lowest(scores, int(sparsity * scores.numel()))
            for (name, m), k in zip(layers, keep.split([m.weight.numel() for _, m in layers])):
                masks[_join(name, "weight")] = k.view_as(m.weight)
        else:
            for name, m in layers:
                masks[_join(name, "weight")] = _lowest(m.weight.detach().abs(), int(sparsity * m.weight.numel()))
        return masks
    # row: output channels of every layer; an MLP's hidden unit is removed from fc2's input too
    def add(key: str, keep: torch.Tensor) -> None:  # fc2 gets a row mask and its fc1's column mask
        masks[key] = masks[key] & keep if key in masks else keep.clone()

    for name, m in layers:
        keep_rows = _lowest(m.weight.detach().norm(dim=1), int(sparsity * m.out_features))
        add(_join(name, "weight"), keep_rows[:, None].expand_as(m.weight))
        if m.bias is not None:
            add(_join(name, "bias"), keep_rows)
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fc2 = getattr(parent, "fc2", None)
        if leaf == "fc1" and isinstance(fc2, nn.Linear) and fc2.in_features == m.out_features \
                and not _skipped(_join(parent_name, "fc2"), skip) \
                and _act_keeps_zero(parent):
            add(_join(parent_name, "fc2.weight"), keep_rows[None, :].expand_as(fc2.weight))
    return masks


@torch.no_grad()
def prune(model: nn.Module, sparsity: float, granularity: str = "fine", scope: str = "layer",
          skip: Sequence[str] = DEFAULT_SKIP) -> float:
    """One pruning round: compute :func:`magnitude_masks` and apply them persistently.

    Args:
        model: the model (masks are registered on its modules).
        sparsity: target fraction of weights / rows / heads, counted over the pruned layers.
        granularity: ``"fine"``, ``"row"`` or ``"head"``.
        scope: ``"layer"`` or ``"global"`` (``fine`` only).
        skip: module-name patterns left alone.

    Returns:
        The fraction of zero weights over the prunable linear layers after the round.
    """
    apply_masks(model, magnitude_masks(model, sparsity, granularity, scope, skip))
    return weight_sparsity(model, skip)


@torch.no_grad()
def weight_sparsity(model: nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> float:
    """Fraction of exactly-zero weights over the linear layers not matched by ``skip``."""
    layers = prunable_linears(model, skip)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / max(1, sum(m.weight.numel() for _, m in layers))


def iterative_prune(model: nn.Module, schedule: Sequence[float], retrain: Callable[[nn.Module, float], None],
                    granularity: str = "fine", scope: str = "layer",
                    skip: Sequence[str] = DEFAULT_SKIP,
                    evaluate: Optional[Callable[[nn.Module], float]] = None) -> list[dict[str, float]]:
    """Han et al.'s loop: for each target in ``schedule`` (increasing), prune to it, then retrain with the
    masks held.

    Args:
        model: the trained model, pruned in place.
        schedule: increasing sparsity targets, e.g. ``[0.5, 0.7, 0.8, 0.9]``.
        retrain: ``retrain(model, sparsity)`` fine-tunes the masked model (any loop or ``Trainer``).
        granularity: ``"fine"``, ``"row"`` or ``"head"``.
        scope: ``"layer"`` or ``"global"``.
        skip: module-name patterns left alone.
        evaluate: optional ``evaluate(model) -> metric``, called after pruning and after retraining.

    Returns:
        One dict per round: ``target``, ``weight_sparsity`` and, with ``evaluate``, ``pruned`` / ``retrained``.
    """
    if list(schedule) != sorted(schedule):
        raise ValueError(f"the sparsity schedule must be increasing, got {list(schedule)}")
    rounds = []
    for target in schedule:
        row: dict[str, float] = {"target": float(target)}
        row["weight_sparsity"] = prune(model, target, granularity, scope, skip)
        if evaluate is not None:
            row["pruned"] = float(evaluate(model))
        retrain(model, target)
        if evaluate is not None:
            row["retrained"] = float(evaluate(model))
        rounds.append(row)
    return rounds


# -- sparse export --------------------------------------------------------------------------------------
def _index_dtype(n: int) -> torch.dtype:
    return torch.uint8 if n <= 256 else torch.int16 if n <= 32768 else torch.int32


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor into uint8, 8 values per byte (little-endian bit order), flattened."""
    flat = bits.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)]).view(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8, device=flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` booleans."""
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
    return bits.flatten()[:numel].bool()


def _encode(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    """The smallest lossless form of ``w``: dense, structured sub-matrix, or bitmask + values."""
    w = w.detach().contiguous().cpu()
    dense = ({name: w}, {"format": "dense"})
    if w.dim() != 2:
        return dense
    nz = w != 0
    rows, cols = nz.any(1).nonzero().flatten(), nz.any(0).nonzero().flatten()
    sub = w[rows][:, cols].contiguous()
    structured = ({f"{name}.rows": rows.to(_index_dtype(w.shape[0])), f"{name}.cols": cols.to(_index_dtype(w.shape[1])),
                   f"{name}.values": sub}, {"format": "structured", "shape": list(w.shape)})
    bitmask = ({f"{name}.bitmask": pack_bits(nz), f"{name}.values": w[nz].contiguous()},
               {"format": "bitmask", "shape": list(w.shape)})

    def size(form):
        return sum(t.numel() * t.element_size() for t in form[0].values())

    return min((dense, structured, bitmask), key=size)


def export_sparse(model: nn.Module, path: Union[str, os.PathLike]) -> int:
    """Write the model's weights with every 2-D tensor in its smallest lossless sparse form (module doc).

    Args:
        model: a model, masked (parametrized) or with zeros baked in; it is not modified.
        path: output ``.safetensors`` file.

    Returns:
        The file's size in bytes.
    """
    from safetensors.torch import save

    from ..checkpoint import atomic_write_bytes

    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    masked = get_masks(model)
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for name in masked:  # parametrized parameters: store the masked value under the plain name
        mod_name, _, pname = name.rpartition(".")
        state[name] = getattr(model.get_submodule(mod_name) if mod_name else model, pname)
    for name, value in state.items():
        t, info = _encode(name, value)
        info["dtype"] = str(value.dtype).removeprefix("torch.")
        tensors.update(t)
        layout[name] = info
    atomic_write_bytes(path, save(tensors, metadata={"mmzoo_sparse": json.dumps(layout)}))
    return os.path.getsize(path)


def load_sparse(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`export_sparse` back into a dense state dict (plain parameter names).

    Args:
        path: the ``.safetensors`` file.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "mmzoo_sparse" not in meta:
            raise ValueError(f"{path} was not written by mmzoo.compress.export_sparse (no 'mmzoo_sparse' metadata)")
        layout = json.loads(meta["mmzoo_sparse"])
        out = {}
        for name, info in layout.items():
            if info["format"] == "dense":
                out[name] = f.get_tensor(name)
                continue
            values = f.get_tensor(f"{name}.values")
            w = torch.zeros(info["shape"], dtype=values.dtype)
            if info["format"] == "structured":
                rows, cols = f.get_tensor(f"{name}.rows").long(), f.get_tensor(f"{name}.cols").long()
                w[rows[:, None], cols[None, :]] = values
            else:
                w[unpack_bits(f.get_tensor(f"{name}.bitmask"), w.numel()).view(w.shape)] = values
            out[name] = w
    return out
