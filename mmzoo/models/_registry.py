"""The model registry: named presets that return a config, one builder per architecture.

* ``@register_arch("vit", ViTConfig)`` on a model class ties an architecture name and its config
  dataclass to the class that builds it (the name is saved in checkpoints).
* ``@register_model`` on a function ``vit_small_patch16_224() -> ViTConfig`` adds a preset.
* ``create_model(name, pretrained=None, **overrides)`` builds a preset, overriding config fields.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Optional, Union

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
    base = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
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


def build_model(cfg: Any) -> nn.Module:
    """Instantiate the architecture a config belongs to."""
    _, model_cls = _ARCHS[arch_of_config(cfg)]
    model = model_cls(cfg)
    return model


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
        **overrides: config fields to change (e.g. ``num_classes=10``, ``img_size=32``).
    """
    from ..convert import load_pretrained, read_checkpoint

    ckpt = read_checkpoint(pretrained) if pretrained is not None else None
    if ckpt is not None and ckpt.config is not None and (name is None or name == ckpt.model_name):
        cfg = replace_config(config_from_dict(ckpt.arch, ckpt.config), overrides)
    elif name is None:
        raise ValueError("create_model needs a model name unless `pretrained` is an mmzoo checkpoint "
                         f"holding its config; {pretrained!s} holds none")
    else:
        cfg = get_model_config(name, **overrides)
    model = build_model(cfg)
    model.model_name = name if name is not None else ckpt.model_name
    if ckpt is not None:
        load_pretrained(model, ckpt)
        model.init_source = str(pretrained)  # where the weights came from (tasks skip init stages then)
    return model
