"""CLIP and its text tower, through the registry."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import mmzoo
from mmzoo.convert import model_metadata
from mmzoo.layers import Attention
from mmzoo.models import CLIP, CLIPOutput
from mmzoo.models._registry import config_from_dict

EOT = 49407  # CLIP's end-of-text id: the highest id of the BPE vocabulary
SOT = 49406


def _tokens(lengths: list[int], context: int, generator: torch.Generator, pad: int = 0) -> torch.Tensor:
    """CLIP-style ids: SOT, random words, EOT, then `pad`."""
    out = torch.full((len(lengths), context), pad, dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, 0] = SOT
        out[i, 1:n + 1] = torch.randint(1, 49000, (n,), generator=generator)
        out[i, n + 1] = EOT
    return out


@pytest.fixture
def nano():
    torch.manual_seed(0)
    return mmzoo.create_model("clip_nano")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=g), _tokens([3, 7, 14], 16, g)


def test_forward_type_shapes_finite(nano, batch):
    images, tokens = batch
    out = nano(images, tokens)
    assert type(out) is CLIPOutput
    assert out.image_features.shape == (3, 64) and out.text_features.shape == (3, 64)
    for t in (out.image_features, out.text_features, out.logit_scale):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(out.image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_features.norm(dim=-1), torch.ones(3))
    assert out.logit_bias is None
    # encoders: unnormalised by default, (B, embed_dim)
    assert nano.encode_image(images).shape == (3, 64)
    assert nano.encode_text(tokens).shape == (3, 64)
    torch.testing.assert_close(nano.encode_text(tokens, normalize=True), out.text_features)
    # the type does not change with the batch or the configuration
    biased = mmzoo.create_model("clip_nano", init_logit_bias=-10.0)
    out2 = biased(images[:1], tokens)
    assert type(out2) is CLIPOutput and out2.logit_bias.item() == -10.0


def test_every_parameter_gets_a_gradient(nano, batch):
    images, tokens = batch
    out = nano(images, tokens)
    logits = out.logit_scale * out.image_features @ out.text_features.T
    labels = torch.arange(3)
    loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    missing = [n for n, p in nano.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in nano.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad
    assert nano.logit_scale.grad.abs() > 0


def test_fused_and_reference_attention_agree(nano, batch):
    images, tokens = batch
    nano.eval()
    attns = [m for m in nano.modules() if isinstance(m, Attention)]
    assert attns
    outs = []
    for fused in (True, False):
        for m in attns:
            m.fused_attn = fused
        with torch.no_grad():
            outs.append((nano.encode_image(images), nano.encode_text(tokens)))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic(batch):
    model = mmzoo.create_model("clip_nano", vision={"drop_path_rate": 0.2, "drop_rate": 0.1},
                               text={"drop_path_rate": 0.2, "proj_drop_rate": 0.1}).eval()
    images, tokens = batch
    with torch.no_grad():
        a, b = model(images, tokens), model(images, tokens)
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)


def test_logit_scale_init_and_clamp(nano, batch):
    assert nano.logit_scale.shape == ()
    assert nano.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert nano.get_logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        nano.logit_scale.fill_(10.0)  # exp(10) >> 100
    assert nano(*batch).logit_scale.item() == pytest.approx(100.0, rel=1e-6)


def test_no_weight_decay_names_exist(nano):
    names = nano.no_weight_decay()
    assert {"logit_scale", "visual.pos_embed", "visual.cls_token", "text.pos_embed"} <= names
    assert names <= dict(nano.named_parameters()).keys()


def test_padding_after_eot_and_shorter_sequences(nano):
    """Causal attention: what follows EOT, and how long the sequence is, does not change the feature."""
    nano.eval()
    g = torch.Generator().manual_seed(1)
    tokens = _tokens([2, 5], 16, g)
    noisy = tokens.clone()
    noisy[0, 4:] = torch.randint(1, 49000, (12,), generator=g)  # junk after EOT (ids below EOT's)
    noisy[1, 7:] = torch.randint(1, 49000, (9,), generator=g)
    with torch.no_grad():
        ref = nano.encode_text(tokens)
        torch.testing.assert_close(nano.encode_text(noisy), ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(nano.encode_text(tokens[:, :8]), ref, atol=1e-6, rtol=1e-5)


def test_text_longer_than_context_is_refused(nano):
    with pytest.raises(ValueError, match=r"length 17.*context_length is 16"):
        nano.encode_text(torch.zeros(2, 17, dtype=torch.long))


@pytest.mark.parametrize("pool_type", ["argmax", "eot_id", "last"])
def test_text_pooling_is_explicit(pool_type):
    torch.manual_seed(0)
    model = mmzoo.create_model("clip_nano", text={"pool_type": pool_type, "eot_id": EOT}).eval()
    tokens = _tokens([3, 14], 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = model.text.forward_features(tokens)
        pooled = model.text.pool(x, tokens)
    idx = [15, 15] if pool_type == "last" else [4, 15]
    torch.testing.assert_close(pooled, x[torch.arange(2), idx])


def test_bad_configs_name_the_key():
    with pytest.raises(ValueError, match="text.eot_id"):
        mmzoo.create_model("clip_nano", text={"pool_type": "eot_id"})
    with pytest.raises(ValueError, match="pool_type"):
        mmzoo.create_model("clip_nano", text={"pool_type": "mean"})
    with pytest.raises(ValueError, match="vision.num_classes=0"):
        mmzoo.create_model("clip_nano", vision={"num_classes": 10})


def test_config_round_trips_through_checkpoint_metadata():
    model = mmzoo.create_model("clip_micro", vision={"img_size": 64}, text={"context_length": 24})
    meta = model_metadata(model)
    assert meta["arch"] == "clip" and meta["model_name"] == "clip_micro"
    assert config_from_dict("clip", meta["config"]) == model.cfg
    assert model.visual.patch_embed.grid_size == (8, 8) and model.text.pos_embed.shape == (1, 24, 128)


def test_grad_checkpointing_matches(nano, batch):
    images, tokens = batch
    nano.train()
    ref = nano(images, tokens)
    nano.set_grad_checkpointing(True)
    out = nano(images, tokens)
    torch.testing.assert_close(out.image_features, ref.image_features)
    torch.testing.assert_close(out.text_features, ref.text_features)
    out.image_features.sum().backward()


def test_presets_registered():
    names = mmzoo.list_models("clip_*")
    for n in ("clip_nano", "clip_micro", "clip_vit_b32", "clip_vit_b16", "clip_vit_l14",
              "clip_vit_b32_quickgelu", "clip_vit_b16_quickgelu", "clip_vit_l14_quickgelu"):
        assert n in names
    cfg = mmzoo.get_model_config("clip_vit_b32")
    assert dataclasses.asdict(cfg)["vision"]["num_classes"] == 0
    assert cfg.vision.act_layer == cfg.text.act_layer == "gelu"
    assert mmzoo.get_model_config("clip_vit_l14_quickgelu").text.act_layer == "quick_gelu"


@pytest.mark.parametrize("name, oc_name", [
    ("clip_vit_b32", "ViT-B-32"), ("clip_vit_b16", "ViT-B-16"), ("clip_vit_l14", "ViT-L-14"),
    ("clip_vit_b32_quickgelu", "ViT-B-32-quickgelu"),
])
def test_parameter_count_matches_open_clip(name, oc_name):
    open_clip = pytest.importorskip("open_clip")
    with torch.device("meta"):
        ours = mmzoo.create_model(name)
        ref = open_clip.create_model(oc_name, device="meta")
    assert isinstance(ours, CLIP)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(ref)
    assert count(ours.visual) + count(ours.visual_proj) == count(ref.visual)


def test_mmzoo_checkpoint_loads_into_clip_of_another_image_size(tmp_path):
    """The vision tower's position grid is resampled when a checkpoint is loaded at another size."""
    from mmzoo.convert import MMZOO_KEY, model_metadata

    src = mmzoo.create_model("clip_nano")
    path = tmp_path / "clip.ckpt"
    torch.save({MMZOO_KEY: model_metadata(src), "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}},
               path)
    big = mmzoo.create_model("clip_nano", pretrained=path, vision={"img_size": 64})
    assert big.visual.pos_embed.shape == (1, 1 + 8 * 8, 64)
    torch.testing.assert_close(big.text.token_embed.weight, src.text.token_embed.weight)
    assert torch.isfinite(big.encode_image(torch.randn(1, 3, 64, 64))).all()
