"""Reading checkpoints of every format mmzoo accepts, and mapping foreign weights onto zoo models.

Formats, detected from the file and its keys:

* mmzoo / Lightning checkpoints written by ``train.py`` (``.ckpt``): weights + the model config;
* ``.safetensors`` exported by ``mmzoo export`` (config kept in the file's metadata);
* foreign state dicts (``.pth`` / ``.bin`` / ``.safetensors``): one adapter per format in this
  package (``timm.py`` ...), chosen by :func:`register_converter` detectors.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

MMZOO_KEY = "mmzoo"  # checkpoint entry holding arch / model_name / config


@dataclass
class Checkpoint:
    """Weights read from a file, with the model description when the file has one."""

    path: str
    state_dict: dict[str, torch.Tensor]
    format: str  # "mmzoo" or "foreign"
    arch: Optional[str] = None
    model_name: Optional[str] = None
    config: Optional[dict[str, Any]] = None


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


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild ``model``: arch, preset name, config as plain containers."""
    return {
        "arch": model.arch_name,
        "model_name": getattr(model, "model_name", None),
        "config": _plain(dataclasses.asdict(model.cfg)),
    }


def _plain(obj: Any) -> Any:
    """Tuples -> lists etc., so the metadata is JSON- and ``weights_only``-safe."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: Union[str, os.PathLike]) -> Checkpoint:
    """Load a checkpoint file on CPU (``weights_only=True``) and normalise it to a :class:`Checkpoint`."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        for candidate in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                          "open_clip_pytorch_model.bin", "last.ckpt"):
            if (p / candidate).exists():
                return read_checkpoint(p / candidate)
        raise FileNotFoundError(f"no weights file found in directory {p}")
    if p.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        sd = load_file(str(p), device="cpu")
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        if MMZOO_KEY in meta:
            info = json.loads(meta[MMZOO_KEY])
            return Checkpoint(str(p), sd, "mmzoo", info["arch"], info.get("model_name"), info["config"])
        return Checkpoint(str(p), sd, "foreign")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path and what to do
        raise RuntimeError(f"could not read checkpoint {p} with torch.load(weights_only=True): {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {p} holds a {type(obj).__name__}, expected a dict of tensors")
    if MMZOO_KEY in obj and "state_dict" in obj:
        info = obj[MMZOO_KEY]
        sd = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        return Checkpoint(str(p), sd, "mmzoo", info["arch"], info.get("model_name"), info["config"])
    for key in ("state_dict", "model", "module", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"checkpoint {p} contains no tensors")
    for prefix in ("module.", "model.", "_orig_mod."):
        sd = _strip_prefix(sd, prefix)
    return Checkpoint(str(p), sd, "foreign")


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
    from safetensors.torch import save_file

    ckpt = read_checkpoint(src)
    meta = {}
    if ckpt.format == "mmzoo":
        meta[MMZOO_KEY] = json.dumps({"arch": ckpt.arch, "model_name": ckpt.model_name, "config": ckpt.config})
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file({k: v.contiguous() for k, v in ckpt.state_dict.items()}, str(tmp), metadata=meta)
    os.replace(tmp, dst)
    return dst
