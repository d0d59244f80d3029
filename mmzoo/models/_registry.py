"""The model registry: named presets that return a config, one builder per architecture.

* ``@register_arch("vit", ViTConfig)`` on a model class ties an architecture name and its config
  dataclass to the class that builds it (the name is saved in checkpoints).
* ``@register_model`` on a function ``vit_small_patch16_224() -> ViTConfig`` adds a preset.
* ``create_model(name, pretrained=None, **overrides)`` builds a preset, overriding config fields.

Every config is validated before its model is built (:func:`validate_config`), once for all models: each
field against its declared type, then the shared vocabulary's ranges (``depth`` >= 1, ``num_classes`` >=
0, dropout rates in [0, 1), ``mlp_ratio`` > 0 ...), so ``model.depth=0`` or ``model.embed_dim=abc`` is an
error naming the key rather than a 0-block model or a ``TypeError`` deep inside a layer.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import types
import typing
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

_MODEL_PRESETS: dict[str, Callable[[], Any]] = {}
_ARCHS: dict[str, tuple[type, type]] = {}  # arch name -> (config class, model class)
_CONFIG_TO_ARCH: dict[type, str] = {}


def register_arch(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: ``model_cls(cfg)`` builds architecture ``name`` from a ``config_cls``."""

    def wrap(model_cls: type) -> type:
        if name in _ARCHS and _ARCHS[name][1] is not model_cls:
            raise ValueError(f"architecture {name!r} is already registered")
        _ARCHS[name] = (config_cls, model_cls)
        _CONFIG_TO_ARCH[config_cls] = name
        model_cls.arch_name = name
        model_cls.config_class = config_cls
        return model_cls

    return wrap


def register_model(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Function decorator: the function's name becomes a preset returning a model config."""
    name = fn.__name__
    if name in _MODEL_PRESETS:
        raise ValueError(f"model preset {name!r} is already registered")
    _MODEL_PRESETS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style ``pattern`` (e.g. ``"vit_*"``), sorted."""
    return sorted(n for n in _MODEL_PRESETS if fnmatch.fnmatch(n, pattern))


def list_archs() -> list[str]:
    return sorted(_ARCHS)


def is_model(name: str) -> bool:
    return name in _MODEL_PRESETS


def arch_of_config(cfg: Any) -> str:
    try:
        return _CONFIG_TO_ARCH[type(cfg)]
    except KeyError:
        raise TypeError(f"{type(cfg).__name__} is not the config of a registered architecture") from None


def replace_config(cfg: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """``dataclasses.replace`` that checks keys and recurses into nested config dataclasses."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown config key {where + key!r} for {type(cfg).__name__}; "
                             f"valid keys: {sorted(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = replace_config(current, value, where=f"{where}{key}.")
        elif isinstance(value, list) and isinstance(current, tuple):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


def config_from_dict(arch: str, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass (nested ones too) from ``dataclasses.asdict`` output."""
    if arch not in _ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; valid choices: {list_archs()}")
    return _dict_to_dataclass(_ARCHS[arch][0], data)


def _dict_to_dataclass(cls: type, data: dict[str, Any]) -> Any:
    """A config class may name, in ``missing_field_defaults``, the value a field takes when a stored
    config predates it (the behaviour older checkpoints were trained with); other missing fields take
    the class default."""
    base = cls()
    legacy = getattr(cls, "missing_field_defaults", {})
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.name in legacy:
                kwargs[f.name] = legacy[f.name]
            continue
        value = data[f.name]
        default = getattr(base, f.name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _dict_to_dataclass(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def get_model_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with ``overrides`` applied."""
    if name not in _MODEL_PRESETS:
        close = [n for n in _MODEL_PRESETS if n.split("_")[0] == name.split("_")[0]] or list_models()
        raise ValueError(f"unknown model {name!r}; valid choices include: {close}")
    return replace_config(_MODEL_PRESETS[name](), overrides)


# -- validation -----------------------------------------------------------------------------------------
# Integer fields are counts and sizes (depth, num_heads, embed_dim, patch_size, vocab_size ...): >= 1, except
# these, where 0 means "none" (and any "*_depth" of an optional extra stack).
_ZERO_ALLOWED = {"num_classes": "0 = no classifier head", "head_hidden": "0 = a linear head",
                 "num_experts": "0 = dense MLPs", "eot_id": "a token id"}


def _int_floor(name: str) -> int:
    return 0 if name in _ZERO_ALLOWED or name.endswith("_depth") else 1


def _float_problem(name: str, v: float) -> Optional[str]:
    if not math.isfinite(v):
        return "must be a finite number"
    if "drop" in name or name.endswith("_rate"):  # dropout, stochastic depth, layer drop
        return None if 0.0 <= v < 1.0 else "is a drop probability: must be in [0, 1)"
    if name.endswith("_prob"):
        return None if 0.0 <= v <= 1.0 else "is a probability: must be in [0, 1]"
    if name.endswith(("_ratio", "_eps", "_temp")):
        return None if v > 0 else "must be > 0"
    if name.endswith(("_weight", "_std", "_mult")):
        return None if v >= 0 else "must be >= 0"
    return None


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a list of {len(args)} {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # annotations mmzoo's configs do not use are not checked


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _declares_float(hint: Any) -> bool:
    """Whether a field's numbers are floats (``float``, ``Optional[float]``, ``tuple[float, ...]``)."""
    return hint is float or any(_declares_float(a) for a in typing.get_args(hint))


def _number_problem(name: str, v: Any, is_float: bool) -> Optional[str]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if not is_float:
        floor = _int_floor(name)
        if v < floor:
            return f"must be >= {floor}" + (f" ({_ZERO_ALLOWED[name]})" if name in _ZERO_ALLOWED else "")
        return None
    return _float_problem(name, float(v))


def validate_config(cfg: Any, where: str = "model.") -> None:
    """Raise ``ValueError`` naming the key (``model.vision.depth=-1``) for the first field of ``cfg`` (a
    config dataclass, nested ones included) that does not have its declared type or is out of range for its
    name: integer counts and sizes >= 1 (``num_classes``, ``head_hidden``, ``num_experts`` and ``*_depth``
    may be 0), dropout rates in [0, 1), probabilities in [0, 1], ratios / eps / temperatures > 0, every
    number finite; and the width of a config with ``num_heads`` (``embed_dim`` or ``dim``) divisible by
    it, ``num_heads`` by ``num_kv_heads``."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{where}{f.name}"
        hint = hints.get(f.name, Any)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, f"{key}.")
            continue
        if not _matches(value, hint):
            raise ValueError(f"{key}={value!r} is invalid: expected {_type_name(hint)} "
                             f"({type(cfg).__name__}.{f.name})")
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
            problem = _number_problem(f.name, v, _declares_float(hint))
            if problem:
                shown = f"{value!r}" if v is value else f"{list(value)!r} (the entry {v!r})"
                raise ValueError(f"{key}={shown} is invalid: it {problem} ({type(cfg).__name__}.{f.name})")
    heads = getattr(cfg, "num_heads", None)
    width_name = next((n for n in ("embed_dim", "dim") if isinstance(getattr(cfg, n, None), int)), None)
    if isinstance(heads, int) and heads >= 1 and width_name is not None and getattr(cfg, width_name) % heads:
        raise ValueError(f"{where}{width_name}={getattr(cfg, width_name)} is not divisible by "
                         f"{where}num_heads={heads}: each head gets {width_name} / num_heads channels")
    kv = getattr(cfg, "num_kv_heads", None)
    if isinstance(heads, int) and isinstance(kv, int) and kv >= 1 and heads % kv:
        raise ValueError(f"{where}num_heads={heads} is not divisible by {where}num_kv_heads={kv} (grouped-query "
                         f"attention shares each key/value head among num_heads / num_kv_heads query heads)")


def build_model(cfg: Any, device: Union[str, torch.device, None] = None) -> nn.Module:
    """Instantiate the architecture a config belongs to (validated first, see :func:`validate_config`).

    Args:
        cfg: a config dataclass of a registered architecture.
        device: where parameters are created; ``"meta"`` builds shapes only (nothing is allocated).
    """
    _, model_cls = _ARCHS[arch_of_config(cfg)]
    validate_config(cfg)
    if device is None:
        return model_cls(cfg)
    with torch.device(device):
        return model_cls(cfg)


def _sizes(cfg: Any, where: str = "") -> str:
    """The main sizes of a config for a message: ``embed_dim=16384, depth=12, vision.num_heads=8``."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.append(_sizes(value, f"{where}{f.name}."))
        elif f.name in ("embed_dim", "dim", "width", "depth", "num_heads", "mlp_ratio", "vocab_size", "num_classes"):
            out.append(f"{where}{f.name}={value}")
    return ", ".join(s for s in out if s)


def config_from_checkpoint(ckpt: Any) -> Any:
    """The config stored in an mmzoo checkpoint, checked against the weights stored beside it before any
    model is allocated: the model is built on the meta device and every tensor's shape compared
    (:func:`mmzoo.checkpoint.check_weights_fit`).

    Args:
        ckpt: an :class:`mmzoo.checkpoint.Checkpoint` with ``format="mmzoo"``.
    """
    from ..checkpoint import CheckpointError, check_weights_fit

    try:
        cfg = config_from_dict(ckpt.arch, ckpt.config)
        validate_config(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: the model config stored in it is invalid: {e}") from e
    meta = build_model(cfg, device="meta")
    check_weights_fit(ckpt, {k: tuple(v.shape) for k, v in meta.state_dict().items()}, _sizes(cfg))
    return cfg


def create_model(
    name: Optional[str] = None,
    pretrained: Union[str, "os.PathLike[str]", None] = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model by preset name, optionally loading weights.

    Args:
        name: a preset from :func:`list_models`. May be omitted when ``pretrained`` is an mmzoo
            checkpoint, which holds its own config.
        pretrained: path to weights: an mmzoo / Lightning checkpoint (``.ckpt``), an exported
            ``.safetensors``, or a foreign checkpoint (timm ...) whose format is detected from its keys.
        **overrides: config fields to change (e.g. ``num_classes=10``, ``img_size=32``). Also, as timm:
            ``features_only=True`` (with ``out_indices``, default the last 3 blocks) returns a module whose
            forward gives the feature maps of those blocks (ViT).
    """
    from ..convert import load_pretrained, read_checkpoint
    from ..hub import save_pretrained
    from ..preprocessing import pretrained_cfg

    if isinstance(pretrained, bool):
        if not pretrained:
            pretrained = None
        else:
            raise ValueError(
                "pretrained=True: mmzoo downloads no weights. Pass a file: an mmzoo checkpoint (.ckpt), an "
                "exported .safetensors, or reference weights in timm / open_clip / Hugging Face format that you "
                "downloaded yourself (e.g. timm's vit_small_patch16_224 model.safetensors from the Hugging Face "
                "hub); see docs/models/vit.md, 'Reference weights'")
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", 3)
    feature_norm = overrides.pop("feature_norm", False)

    ckpt = read_checkpoint(pretrained) if pretrained is not None else None
    if ckpt is not None and ckpt.config is not None and (name is None or name == ckpt.model_name):
        cfg = replace_config(config_from_checkpoint(ckpt), overrides)
    elif name is None and ckpt is None:
        raise ValueError("create_model needs a model name (see mmzoo.list_models()) unless `pretrained` is an mmzoo "
                         "checkpoint holding its config")
    elif name is None:
        raise ValueError(f"{pretrained!s} is a foreign checkpoint ({len(ckpt.state_dict)} tensors, first keys "
                         f"{list(ckpt.state_dict)[:3]}) without mmzoo's model config, so create_model needs the "
                         "preset it fits: create_model(NAME, pretrained=...), or model.name=NAME on the command line "
                         "(presets: mmzoo models)")
    else:
        cfg = get_model_config(name, **overrides)
    model = build_model(cfg)
    model.model_name = name if name is not None else ckpt.model_name
    if ckpt is not None:
        load_pretrained(model, ckpt)
        model.init_source = str(pretrained)  # where the weights came from
    # the preprocessing the weights expect (timm's pretrained_cfg keys; mmzoo.preprocessing)
    model.pretrained_cfg = pretrained_cfg(model, ckpt.pretrained_cfg if ckpt is not None else None)
    model.save_pretrained = types.MethodType(save_pretrained, model)  # model.save_pretrained(DIR): mmzoo.hub
    if features_only:
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"features_only=True: {model.model_name} ({type(model).__name__}) has no "
                             "forward_intermediates; feature maps are offered by the ViT family")
        from .vit import FeatureExtractor

        return FeatureExtractor(model, out_indices, norm=feature_norm)
    return model
