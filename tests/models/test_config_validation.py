"""Model configs are validated once, generically, before a model is built: the declared field types and
the shared vocabulary's ranges; every message names the key (``model.vision.depth``)."""
from __future__ import annotations

import dataclasses

import pytest

import mmzoo
from mmzoo.models._registry import _MODEL_PRESETS, validate_config


def test_every_preset_is_valid():
    for name, preset in _MODEL_PRESETS.items():
        validate_config(preset())  # a preset that fails here needs its value or the rule fixed


@pytest.mark.parametrize("override, message", [
    (dict(depth=-1), r"model.depth=-1 is invalid: it must be >= 1"),
    (dict(depth=0), r"model.depth=0 is invalid: it must be >= 1"),
    (dict(num_classes=-1), r"model.num_classes=-1 is invalid: it must be >= 0 \(0 = no classifier head\)"),
    (dict(embed_dim="abc"), r"model.embed_dim='abc' is invalid: expected an integer"),
    (dict(embed_dim=64.0), r"model.embed_dim=64.0 is invalid: expected an integer"),
    (dict(drop_path_rate=5), r"model.drop_path_rate=5 is invalid: it is a drop probability: must be in \[0, 1\)"),
    (dict(attn_drop_rate=-0.1), r"model.attn_drop_rate=-0.1 is invalid"),
    (dict(mlp_ratio=-2), r"model.mlp_ratio=-2 is invalid: it must be > 0"),
    (dict(mlp_ratio=float("inf")), r"model.mlp_ratio=inf is invalid: it must be a finite number"),
    (dict(qkv_bias="yes"), r"model.qkv_bias='yes' is invalid: expected true or false"),
    (dict(img_size=[32, -4]), r"model.img_size=\[32, -4\] \(the entry -4\) is invalid: it must be >= 1"),
    (dict(img_size=[32, 32, 32]), r"model.img_size=\(32, 32, 32\) is invalid: expected an integer or a list of 2"),
    (dict(patch_size=0), r"model.patch_size=0 is invalid"),
    (dict(embed_dim=66), r"model.embed_dim=66 is not divisible by model.num_heads=\d+"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        mmzoo.create_model("vit_micro_patch4_32", **override)


def test_nested_and_other_families():
    with pytest.raises(ValueError, match=r"model.vision.depth=0 is invalid"):
        mmzoo.create_model("clip_nano", vision={"depth": 0})
    with pytest.raises(ValueError, match=r"model.text.vocab_size=0 is invalid"):
        mmzoo.create_model("clip_nano", text={"vocab_size": 0})
    with pytest.raises(ValueError, match=r"model.num_heads=4 is not divisible by model.num_kv_heads=3"):
        mmzoo.create_model("gpt_nano", num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"model.conv_dim=\[64, 0.*\(the entry 0\)"):
        cfg = mmzoo.models._registry.get_model_config("wav2vec2_tiny")
        mmzoo.create_model("wav2vec2_tiny", conv_dim=[64, 0] + list(cfg.conv_dim[2:]))
    # values that mean "none" stay allowed
    assert mmzoo.create_model("vit_micro_patch4_32", num_classes=0, drop_path_rate=0.0).num_classes == 0
    model = mmzoo.create_model("gpt_nano", num_experts=4, moe_top_k=1, moe_capacity_factor=0)
    assert dataclasses.asdict(model.cfg)["moe_capacity_factor"] == 0


def test_train_config_errors_name_the_key(train_cfg):
    from mmzoo.training import build

    small = ("model=vit", "data.num_train=16", "data.num_val=8", "data.num_test=8")
    for override, message in (("+model.depth=-1", "model.depth=-1"), ("model.num_classes=-1", "model.num_classes=-1")):
        with pytest.raises(ValueError, match=message):
            build(train_cfg(*small, override))
