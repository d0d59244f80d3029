"""ViT through the registry: parameter counts and names as timm, shapes, gradients, pooling, errors,
image-size changes, activation checkpointing, fused vs reference attention."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

import mmzoo
from mmzoo.layers import Attention
from mmzoo.layers import block as block_mod
from mmzoo.models import ViTConfig, get_model_config

VIT_PRESETS = [n for n in mmzoo.list_models() if isinstance(get_model_config(n), ViTConfig)]
TINY = ["vit_nano_patch4_32", "vit_micro_patch4_32"]
NANO = "vit_nano_patch4_32"


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _timm_from_cfg(cfg: ViTConfig) -> torch.nn.Module:
    """timm's VisionTransformer with the same architecture as an mmzoo ViTConfig."""
    return TimmViT(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                   num_classes=cfg.num_classes, global_pool=cfg.global_pool, embed_dim=cfg.embed_dim,
                   depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                   qk_norm=cfg.qk_norm, init_values=cfg.init_values, class_token=cfg.class_token,
                   pre_norm=cfg.pre_norm, fc_norm=cfg.fc_norm)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", VIT_PRESETS)
def test_param_count_and_names_equal_timm(name):
    """Built on the meta device: even ViT-H costs nothing. Same keys and shapes = checkpoint-compatible."""
    cfg = get_model_config(name)
    with torch.device("meta"):
        ours = mmzoo.create_model(name)
        theirs = [_timm_from_cfg(cfg)]
        if name in timm.list_models():
            theirs.append(timm.create_model(name, num_classes=cfg.num_classes))
    for t in theirs:
        assert _n_params(ours) == _n_params(t)
        assert _shapes(ours) == _shapes(t)


@pytest.mark.parametrize("overrides", [
    dict(global_pool="avg"),  # fc_norm instead of norm
    dict(global_pool="avg", class_token=False),
    dict(qk_norm=True, init_values=1e-5, qkv_bias=False),
    dict(pre_norm=True, patch_bias=False),  # CLIP layout (timm drops the patch bias with pre_norm)
    dict(num_classes=0),
    dict(img_size=(32, 48), in_chans=1),
], ids=lambda o: ",".join(o))
def test_variants_match_timm_layout(overrides):
    cfg = get_model_config(NANO, **overrides)
    with torch.device("meta"):
        ours, theirs = mmzoo.create_model(NANO, **overrides), _timm_from_cfg(cfg)
    assert _shapes(ours) == _shapes(theirs)


# -- tiny presets -------------------------------------------------------------------------------------


def _images(cfg: ViTConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    return torch.randn(batch, cfg.in_chans, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes_finite_and_every_param_gets_a_gradient(name):
    torch.manual_seed(0)
    model = mmzoo.create_model(name).train()
    cfg = model.cfg
    x = _images(cfg)
    out = model(x)
    assert out.shape == (2, cfg.num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_forward_features_and_head_shapes():
    model = mmzoo.create_model(NANO).eval()
    x = _images(model.cfg)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + 64, 64)  # class token + 8x8 patches
        assert model.forward_head(feats).shape == (2, 10)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats[:, 0])
        torch.testing.assert_close(model.head(pre), model(x))


def test_eval_is_deterministic_train_is_not():
    drops = dict(drop_rate=0.2, pos_drop_rate=0.2, proj_drop_rate=0.2, attn_drop_rate=0.2, drop_path_rate=0.2)
    model = mmzoo.create_model(NANO, **drops)
    x = _images(model.cfg)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_global_pool(pool):
    torch.manual_seed(0)
    model = mmzoo.create_model(NANO, global_pool=pool).eval()
    x = _images(model.cfg)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        if pool == "avg":  # fc_norm after pooling the patch tokens, no final norm on tokens
            assert isinstance(model.norm, torch.nn.Identity)
            torch.testing.assert_close(pre, model.fc_norm(feats[:, 1:].mean(1)))
        else:
            assert isinstance(model.fc_norm, torch.nn.Identity)
            torch.testing.assert_close(pre, feats[:, 0])
        assert model(x).shape == (2, 10)
    no_cls = mmzoo.create_model(NANO, global_pool="avg", class_token=False).eval()
    assert no_cls.forward_features(x).shape == (2, 64, 64)
    assert no_cls(x).shape == (2, 10)


def test_num_classes_zero_returns_features():
    model = mmzoo.create_model(NANO, num_classes=0).eval()
    x = _images(model.cfg)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 64)
        torch.testing.assert_close(out, model.forward_features(x)[:, 0])
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.cfg.num_classes == 5


def test_wrong_input_shape_names_expected_and_received():
    model = mmzoo.create_model(NANO)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(2, 3, 48, 48\)"):
        model(torch.randn(2, 3, 48, 48))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\).*\(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


def test_invalid_config_values_raise():
    with pytest.raises(ValueError, match="global_pool"):
        mmzoo.create_model(NANO, global_pool="max")
    with pytest.raises(ValueError, match="class_token"):
        mmzoo.create_model(NANO, class_token=False)  # token pooling needs the class token
    with pytest.raises(ValueError, match="pos_embed"):
        mmzoo.create_model(NANO, pos_embed="rope")
    with pytest.raises(ValueError, match="act_layer"):
        mmzoo.create_model(NANO, act_layer="swish")


def test_other_img_size_interpolates_positions(tmp_path):
    """A model built for 48x48 from 32x32 weights == the 32x32 model run on 48x48 with dynamic_img_size."""
    torch.manual_seed(0)
    dyn = mmzoo.create_model(NANO, dynamic_img_size=True).eval()
    path = tmp_path / "nano.pth"
    torch.save(dyn.state_dict(), path)
    big = mmzoo.create_model(NANO, img_size=48, pretrained=path).eval()
    assert big.pos_embed.shape == (1, 1 + 12 * 12, 64)
    torch.testing.assert_close(big.pos_embed[:, :1], dyn.pos_embed[:, :1])  # class-token position kept
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = dyn(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(out, big(x), atol=1e-5, rtol=1e-5)
        # a non-square input works too, and the native size still uses the table as is
        assert dyn(torch.randn(1, 3, 24, 40)).shape == (1, 10)
        assert torch.equal(dyn(_images(dyn.cfg)), mmzoo.create_model(NANO, pretrained=path).eval()(_images(dyn.cfg)))


@pytest.mark.parametrize("overrides", [
    dict(pos_embed="sincos"), dict(pos_embed="none", global_pool="avg"), dict(mlp_layer="swiglu"),
    dict(mlp_layer="geglu", norm_layer="rmsnorm", act_layer="quick_gelu"),
    dict(qk_norm=True, init_values=1e-5, pre_norm=True, fc_norm=True),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_variants_run(overrides):
    model = mmzoo.create_model(NANO, **overrides).train()
    x = _images(model.cfg)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sincos_table_is_fixed_and_not_saved():
    model = mmzoo.create_model(NANO, pos_embed="sincos")
    assert "pos_embed" not in model.state_dict()
    assert not any(n == "pos_embed" for n, _ in model.named_parameters())
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(64))  # the class token gets no position


def test_grad_checkpointing_same_outputs_and_gradients(monkeypatch):
    calls = []
    real = block_mod.checkpoint
    monkeypatch.setattr(block_mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = mmzoo.create_model(NANO, drop_path_rate=0.1).train()
    x = _images(model.cfg)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)  # the same drop-path draws in both runs
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(calls) == model.cfg.depth  # the checkpointed path really ran
    torch.testing.assert_close(results[0][0], results[1][0])
    for n, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][n], msg=n)


def test_fused_and_reference_attention_agree():
    model = mmzoo.create_model("vit_micro_patch4_32", global_pool="avg").eval()
    x = _images(model.cfg)
    outs = []
    for fused in (True, False):
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused_attn = fused
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_config_is_kept_and_no_weight_decay():
    model = mmzoo.create_model(NANO, depth=1)
    assert dataclasses.asdict(model.cfg)["depth"] == 1
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.arch_name == "vit"
