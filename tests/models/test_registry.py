"""The model registry: listing, unknown names / keys with actionable messages, overrides, nested configs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

import mmzoo
from mmzoo.models import ViTConfig, VisionTransformer, build_model, get_model_config, list_archs, register_model
from mmzoo.models._registry import config_from_dict, replace_config


def test_list_models_patterns():
    everything = mmzoo.list_models()
    assert everything == sorted(everything)
    assert {"vit_nano_patch4_32", "vit_tiny_patch16_224", "vit_base_patch16_224"} <= set(everything)
    assert mmzoo.list_models("*_patch4_32") == ["vit_micro_patch4_32", "vit_nano_patch4_32"]
    assert set(mmzoo.list_models("vit_*")) >= {"vit_small_patch16_224", "vit_huge_patch14_224"}
    assert all(n.startswith("vit_small") for n in mmzoo.list_models("vit_small*"))
    assert mmzoo.list_models("no_such_family_*") == []
    assert "vit" in list_archs()


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError) as e:
        mmzoo.create_model("vit_nanoo_patch4_32")
    msg = str(e.value)
    assert "vit_nanoo_patch4_32" in msg and "vit_nano_patch4_32" in msg and "vit_tiny_patch16_224" in msg
    with pytest.raises(ValueError, match="valid choices"):
        get_model_config("resnet50")


def test_unknown_override_names_key_and_valid_keys():
    with pytest.raises(ValueError) as e:
        mmzoo.create_model("vit_nano_patch4_32", num_clases=3)
    msg = str(e.value)
    assert "'num_clases'" in msg and "ViTConfig" in msg
    assert "num_classes" in msg and "embed_dim" in msg  # the valid keys are listed


def test_overrides_are_applied():
    model = mmzoo.create_model("vit_nano_patch4_32", num_classes=3, depth=1, img_size=16, global_pool="avg")
    assert isinstance(model, VisionTransformer)
    assert model.cfg.num_classes == 3 and len(model.blocks) == 1 and model.patch_embed.img_size == (16, 16)
    assert model.head.out_features == 3 and model.global_pool == "avg"
    assert model.model_name == "vit_nano_patch4_32"
    # the preset itself is untouched
    assert get_model_config("vit_nano_patch4_32").num_classes == 10
    assert get_model_config("vit_nano_patch4_32", img_size=[16, 24]).img_size == (16, 24)  # list -> tuple


def test_build_model_from_config():
    cfg = get_model_config("vit_nano_patch4_32", depth=1)
    assert isinstance(cfg, ViTConfig)
    model = build_model(cfg)
    assert isinstance(model, VisionTransformer) and model.cfg == cfg
    with pytest.raises(TypeError, match="not the config of a registered architecture"):
        build_model(object())


def test_create_model_without_name_needs_checkpoint():
    with pytest.raises((ValueError, TypeError)):
        mmzoo.create_model()


def test_duplicate_preset_is_rejected():
    def vit_nano_patch4_32():  # same name as an existing preset
        return ViTConfig()

    with pytest.raises(ValueError, match="already registered"):
        register_model(vit_nano_patch4_32)
    assert get_model_config("vit_nano_patch4_32").embed_dim == 64  # the original is kept


@dataclass
class _Inner:
    width: int = 8
    sizes: tuple = (1, 2)


@dataclass
class _Outer:
    name: str = "outer"
    inner: _Inner = field(default_factory=_Inner)
    other: _Inner = field(default_factory=_Inner)


def test_replace_config_nested():
    cfg = _Outer()
    new = replace_config(cfg, {"name": "x", "inner": {"width": 16}})
    assert new.name == "x" and new.inner.width == 16
    assert new.inner.sizes == (1, 2)  # untouched nested fields keep their value
    assert new.other == _Inner() and cfg.inner.width == 8  # the original is not mutated
    # a whole dataclass value replaces the field
    assert replace_config(cfg, {"inner": _Inner(width=3)}).inner == _Inner(width=3)
    # lists become tuples where the field holds a tuple (Hydra / JSON give lists)
    assert replace_config(cfg, {"inner": {"sizes": [4, 5]}}).inner.sizes == (4, 5)
    with pytest.raises(ValueError) as e:
        replace_config(cfg, {"inner": {"widht": 1}})
    assert "'inner.widht'" in str(e.value) and "_Inner" in str(e.value) and "width" in str(e.value)


def test_config_round_trips_through_dict():
    cfg = get_model_config("vit_nano_patch4_32", img_size=(16, 24), init_values=1e-5)
    data = dataclasses.asdict(cfg)
    data["img_size"] = list(data["img_size"])  # as stored in JSON / checkpoints
    assert config_from_dict("vit", data) == cfg
    with pytest.raises(ValueError, match="unknown architecture 'nope'.*vit"):
        config_from_dict("nope", data)
