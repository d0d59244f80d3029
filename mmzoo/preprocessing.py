"""The preprocessing a model was trained with, carried by its checkpoint and exposed as ``model.pretrained_cfg``.

A run records its data module's settings in every checkpoint (``checkpoint["mmzoo"]["pretrained_cfg"]``,
see :mod:`mmzoo.checkpoint`); ``mmzoo.create_model(pretrained=CKPT)`` sets ``model.pretrained_cfg`` from it,
with timm's key names so ``timm.data.resolve_model_data_config(model)`` gives the right answer for image
models:

| key | meaning |
|---|---|
| ``input_size`` | ``[channels, height, width]`` of an image (or of each video frame) |
| ``mean`` / ``std`` | per-channel normalisation applied after scaling pixels to [0, 1] |
| ``interpolation`` | resize filter of the evaluation transform (``"bilinear"``) |
| ``crop_pct`` / ``crop_mode`` | centre-crop fraction of the evaluation transform (1.0: resize the shorter side to the input size, then crop the centre square) / ``"center"`` |
| ``num_frames`` / ``frame_stride`` | frames per video clip / the step between them |
| ``sample_rate`` | audio samples per second |
| ``num_points`` | points per point cloud |
| ``context_length`` / ``tokenizer`` | text tokens per sequence / the tokenizer's name |
| ``num_classes`` | classes of the head (or of the data, for a model without a head) |
| ``class_names`` | the data module's class names, in label order |
| ``zeroshot_templates`` | prompt templates the data module evaluates zero-shot classification with |
| ``data_module`` | the data module's class (``mmzoo.data.shapes_captions.ShapesCaptionsDataModule``) |

Keys a data module does not have are left out. :func:`data_kwargs` turns the image keys back into the
arguments mmzoo's image data modules take (``image_size``, ``mean``, ``std``, ``in_chans``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch.nn as nn

# what mmzoo's evaluation transforms do (mmzoo.data.transforms.build_eval_transform): resize the shorter
# side to the input size with torchvision's default (bilinear, antialiased) filter, crop the centre square
EVAL_INTERPOLATION = "bilinear"
EVAL_CROP_PCT = 1.0


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if hasattr(v, "item") and callable(v.item):  # a 0-d tensor / numpy scalar
        return v.item()
    return v


def _per_channel(value: Any, channels: int) -> Optional[list[float]]:
    """``0.5`` -> ``[0.5] * channels``; a sequence as floats; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) or (hasattr(value, "ndim") and value.ndim == 0):
        return [float(value)] * channels
    return [float(x) for x in value]


def _get(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``, also None when a property raises: recording the preprocessing must never
    stop a checkpoint from being written."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def data_config(dm: Any) -> dict[str, Any]:
    """The preprocessing settings of a data module (after ``setup``), as plain containers.

    Args:
        dm: an mmzoo data module; its attributes ``image_size``, ``in_chans``, ``mean``, ``std``,
            ``num_frames``, ``sampling_rate``, ``sample_rate``, ``num_points``, ``context_length``,
            ``tokenizer_name``, ``class_names``, ``zeroshot_templates`` are read where it has them.
    """
    out: dict[str, Any] = {"data_module": f"{type(dm).__module__}.{type(dm).__qualname__}"}
    size = _get(dm, "image_size")
    if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 2):
        channels = int(_get(dm, "in_chans") or 3)
        h, w = (size, size) if isinstance(size, int) else size
        out["input_size"] = [channels, int(h), int(w)]
        mean, std = _per_channel(_get(dm, "mean"), channels), _per_channel(_get(dm, "std"), channels)
        if mean is not None and std is not None:
            out["mean"], out["std"] = mean, std
        out["interpolation"] = EVAL_INTERPOLATION
        out["crop_pct"] = EVAL_CROP_PCT
        out["crop_mode"] = "center"
    for key, attr in (("num_frames", "num_frames"), ("frame_stride", "sampling_rate"), ("sample_rate", "sample_rate"),
                      ("num_points", "num_points"), ("context_length", "context_length"),
                      ("tokenizer", "tokenizer_name")):
        value = _get(dm, attr)
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            out[key] = value
    names = _get(dm, "class_names")
    if names:
        out["class_names"] = [str(n) for n in names]
        out["num_classes"] = len(out["class_names"])
    templates = _get(dm, "zeroshot_templates")
    if templates:
        out["zeroshot_templates"] = [str(t) for t in templates]
    return _plain(out)


def _model_image_size(cfg: Any) -> tuple[Optional[int], Optional[int]]:
    """``(img_size, in_chans)`` of a model config, or of its vision tower's."""
    for node in (cfg, getattr(cfg, "vision", None)):
        if node is not None and isinstance(getattr(node, "img_size", None), int):
            return node.img_size, getattr(node, "in_chans", 3)
    return None, None


def pretrained_cfg(model: nn.Module, stored: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``model.pretrained_cfg``: the preprocessing stored with the weights, completed from the model's config
    (``input_size`` from its image size, ``num_classes`` from its head) where the checkpoint has none.

    Args:
        model: a model built by ``mmzoo.create_model``.
        stored: the checkpoint's ``pretrained_cfg`` entry (None: a preset or a file without one).
    """
    out = dict(stored or {})
    cfg = getattr(model, "cfg", None)
    if "input_size" not in out and cfg is not None:
        size, chans = _model_image_size(cfg)
        if size is not None:
            out["input_size"] = [int(chans or 3), size, size]
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and num_classes > 0:
        out["num_classes"] = num_classes  # the head's, which a fine-tuned model may have changed
    out.setdefault("architecture", getattr(model, "model_name", None) or getattr(model, "arch_name", None))
    return out


def data_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The image data module arguments (``image_size``, ``in_chans``, ``mean``, ``std``) a ``pretrained_cfg``
    gives; the other keys have no common argument name across data modules.

    Args:
        cfg: a ``pretrained_cfg``.
    """
    out: dict[str, Any] = {}
    size = cfg.get("input_size")
    if size is not None:
        out["in_chans"], out["image_size"] = int(size[0]), int(size[-1])
    for key in ("mean", "std"):
        if cfg.get(key) is not None:
            out[key] = [float(x) for x in cfg[key]]
    return out


def config_of(model: nn.Module) -> dict[str, Any]:
    """``model.pretrained_cfg`` when set, else :func:`pretrained_cfg` of the model alone.

    Args:
        model: an mmzoo model.
    """
    stored = getattr(model, "pretrained_cfg", None)
    return dict(stored) if isinstance(stored, dict) else pretrained_cfg(model)


def create_transforms(cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """The ``(train, eval)`` image transforms of a ``pretrained_cfg``: PIL image or uint8 tensor in, normalised
    float32 ``(C, H, W)`` out. Eval resizes the shorter side to ``input_size / crop_pct`` with
    ``interpolation`` and crops the centre (mmzoo's own checkpoints: ``crop_pct=1``, bilinear, exactly the data
    modules' evaluation transform); train is mmzoo's random resized crop and horizontal flip.

    Args:
        cfg: a ``pretrained_cfg`` (``model.pretrained_cfg``); ``mean`` / ``std`` default to ImageNet's, as timm's.

    Raises:
        ValueError: the config has no ``input_size`` (not an image model's), or an unknown interpolation.
    """
    from torchvision.transforms import v2

    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, _to_normalised_float, build_train_transform

    if cfg.get("input_size") is None:
        raise ValueError(f"the pretrained_cfg has no input_size (keys: {sorted(cfg)}): image transforms need an "
                         "image model's preprocessing")
    size = int(cfg["input_size"][-1])
    mean = list(cfg.get("mean") or IMAGENET_MEAN)
    std = list(cfg.get("std") or IMAGENET_STD)
    name = str(cfg.get("interpolation") or EVAL_INTERPOLATION)
    try:
        mode = v2.InterpolationMode(name)
    except ValueError:
        raise ValueError(f"pretrained_cfg interpolation={name!r} is not one of "
                         f"{[m.value for m in v2.InterpolationMode]}") from None
    crop_pct = float(cfg.get("crop_pct") or EVAL_CROP_PCT)
    resize = size if crop_pct == 1.0 else int(math.floor(size / crop_pct))  # timm's eval transform
    eval_tf = v2.Compose([v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(size)]
                         + _to_normalised_float(mean, std))
    return build_train_transform(size, mean, std), eval_tf


def create_model_and_transforms(name_or_path: Union[str, "os.PathLike[str]"], **overrides: Any
                                ) -> tuple[nn.Module, Callable, Callable]:
    """A model and its ``(train, eval)`` image transforms, from its own preprocessing (``model.pretrained_cfg``).

    Args:
        name_or_path: a checkpoint file, a ``save_pretrained`` folder, or a preset name.
        **overrides: config fields to change, as for ``mmzoo.create_model``.
    """
    from .hub import CONFIG_NAME, from_pretrained
    from .models import create_model

    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        model = from_pretrained(path, **overrides)
    elif path.exists():
        model = create_model(pretrained=path, **overrides)
    else:
        model = create_model(str(name_or_path), **overrides)
    train_tf, eval_tf = create_transforms(model.pretrained_cfg)
    return model, train_tf, eval_tf


__all__ = ["data_config", "pretrained_cfg", "data_kwargs", "config_of", "create_transforms",
           "create_model_and_transforms", "EVAL_INTERPOLATION", "EVAL_CROP_PCT"]
