"""Reading checkpoints of every format mmzoo accepts, and mapping foreign weights onto zoo models.

Formats, detected from the file and its keys:

* mmzoo / Lightning checkpoints written by ``train.py`` (``.ckpt``): weights + the model config;
* ``.safetensors`` exported by ``mmzoo export`` (config kept in the file's metadata);
* foreign state dicts (``.pth`` / ``.bin`` / ``.safetensors``): one adapter per format in this
  package (``timm.py`` ...), chosen by :func:`register_converter` detectors.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
import torch.nn as nn

# reading files, the Lightning prefix and mmzoo's metadata live in mmzoo.checkpoint; re-exported here, where
# code written against earlier versions imports them from
from ..checkpoint import MMZOO_KEY, Checkpoint, atomic_write_bytes, model_metadata, read_checkpoint  # noqa: F401

log = logging.getLogger(__name__)


@dataclass
class _Converter:
    name: str
    arch: str
    detect: Callable[[dict[str, torch.Tensor]], bool]
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


_CONVERTERS: list[_Converter] = []


def register_converter(name: str, arch: str, detect: Callable) -> Callable:
    """Decorator for ``convert(state_dict, model) -> state_dict`` mapping format ``name`` onto ``arch``."""

    def wrap(fn: Callable) -> Callable:
        _CONVERTERS.append(_Converter(name, arch, detect, fn))
        return fn

    return wrap


def convert_foreign(sd: dict[str, torch.Tensor], model: nn.Module, path: str = "") -> dict[str, torch.Tensor]:
    """Map a foreign state dict onto ``model`` with the first converter of its arch that detects it."""
    from . import open_clip as _open_clip, timm as _timm  # noqa: F401  (registers converters)
    from . import hf_wav2vec2 as _hf_wav2vec2  # noqa: F401
    from . import timesformer as _timesformer  # noqa: F401

    own = set(model.state_dict())
    if set(sd) == own:
        return sd  # already in mmzoo layout (e.g. a bare exported state dict)
    candidates = [c for c in _CONVERTERS if c.arch == model.arch_name]
    for c in candidates:
        if c.detect(sd):
            log.info("converting %s weights from %s", c.name, path)
            return c.convert(sd, model)
    raise ValueError(f"could not recognise the format of {path or 'the state dict'} for a "
                     f"{model.arch_name!r} model; known formats for it: {[c.name for c in candidates]} "
                     f"(first keys: {list(sd)[:5]})")


def fit_state_dict(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt shapes that may legitimately differ: position grids are resampled, a classifier head of
    another class count is dropped (left freshly initialised). Anything else raises, naming the key."""
    from ..layers.pos_embed import resample_abs_pos_embed

    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k not in own or own[k].shape == v.shape:
            out[k] = v
            continue
        owner = model.get_submodule(k.rpartition(".")[0])  # the module holding this parameter
        if k.endswith("pos_embed") and v.dim() == 3 and hasattr(owner, "patch_embed"):
            npt = getattr(owner, "num_prefix_tokens", 0)
            out[k] = resample_abs_pos_embed(v, owner.patch_embed.grid_size, num_prefix_tokens=npt)
            log.info("resampled %s from %s to %s", k, tuple(v.shape), tuple(out[k].shape))
        elif k.endswith("patch_embed.proj.weight") and v.dim() == 4 and v.shape[2:] == own[k].shape[2:] \
                and v.shape[0] == own[k].shape[0]:
            out[k] = adapt_input_channels(v, own[k].shape[1])
            log.info("adapted %s from %d to %d input channels", k, v.shape[1], own[k].shape[1])
        elif k.split(".")[0] in ("head", "fc"):
            log.warning("not loading %s: shape %s in the checkpoint, %s in the model (new classifier)",
                        k, tuple(v.shape), tuple(own[k].shape))
        else:
            raise ValueError(f"shape mismatch for {k}: checkpoint has {tuple(v.shape)}, "
                             f"model expects {tuple(own[k].shape)}")
    return out


def adapt_input_channels(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Patch-embedding weights (D, C, p, p) for ``in_chans`` inputs: summed over channels for one
    channel (a grey image seen as equal RGB planes), else the channels repeated cyclically and rescaled
    by C / in_chans so the response to a constant image keeps its size (as timm's ``adapt_input_conv``)."""
    C = w.shape[1]
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-in_chans // C)
    return w.repeat(1, reps, 1, 1)[:, :in_chans] * (C / in_chans)


def load_pretrained(model: nn.Module, ckpt: Union[Checkpoint, str, os.PathLike], strict: bool = True) -> nn.Module:
    """Load weights into ``model`` from any supported checkpoint; returns the model."""
    if not isinstance(ckpt, Checkpoint):
        ckpt = read_checkpoint(ckpt)
    sd = ckpt.state_dict
    if ckpt.format != "mmzoo":
        sd = convert_foreign(sd, model, ckpt.path)
    elif ckpt.arch != model.arch_name:
        raise ValueError(f"{ckpt.path} holds a {ckpt.arch!r} model, cannot load it into {model.arch_name!r}")
    sd = fit_state_dict(sd, model)
    if hasattr(model, "filter_pretrained"):  # e.g. drop pretraining-only weights a fine-tuning model lacks
        sd = model.filter_pretrained(sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    dropped_head = [k for k in missing if k.split(".")[0] in ("head", "fc")]
    missing = [k for k in missing if k not in dropped_head]
    if strict and (missing or unexpected):
        raise ValueError(f"loading {ckpt.path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    return model


def export_safetensors(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> Path:
    """Write the model weights of checkpoint ``src`` to ``dst`` (.safetensors), config in the metadata."""
    from safetensors.torch import save

    ckpt = read_checkpoint(src)
    meta = {}
    if ckpt.format == "mmzoo":
        info = {"arch": ckpt.arch, "model_name": ckpt.model_name, "config": ckpt.config}
        if ckpt.pretrained_cfg is not None:  # the preprocessing travels with the exported weights
            info["pretrained_cfg"] = ckpt.pretrained_cfg
        meta[MMZOO_KEY] = json.dumps(info)
    return atomic_write_bytes(dst, save({k: v.contiguous() for k, v in ckpt.state_dict.items()}, metadata=meta))
