"""TimeSformer: the five attention schemes through the registry, their token groupings against masked
joint attention, image-ViT (timm / mmzoo) initialisation, time-embedding resampling, config errors."""
from __future__ import annotations

import timm
import pytest
import torch

import mmzoo
from mmzoo.layers import Attention
from mmzoo.models.timesformer import SCHEMES, _factors, group_tokens, ungroup_tokens

TINY = {s: n for s, n in zip(SCHEMES, ["timesformer_tiny_space_only", "timesformer_tiny_joint",
                                       "timesformer_tiny_divided", "timesformer_tiny_local_global",
                                       "timesformer_tiny_axial"])}


def _clips(b=2, t=8, size=32, seed=0):
    return torch.randn(b, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def _perturb(model, seed=0):
    """Move every parameter off its init (zero temporal projections included) so all paths matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _set_fused(model, fused):
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_forward_backward_paths_determinism(scheme):
    model = _perturb(mmzoo.create_model(TINY[scheme]))
    assert model.attention == scheme
    x = _clips()
    out = model(x)
    assert out.shape == (2, 6) and torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"{scheme}: parameters without gradient: {no_grad}"
    model.eval()
    with torch.no_grad():
        _set_fused(model, True)
        fused = model(x)
        _set_fused(model, False)
        ref = model(x)
        torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(x), ref, atol=0, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_only_space_only_is_blind_to_frame_order(scheme):
    model = _perturb(mmzoo.create_model(TINY[scheme])).eval()
    x = _clips(seed=1)
    with torch.no_grad():
        out, shuffled = model(x), model(x[:, :, torch.randperm(8, generator=torch.Generator().manual_seed(0))])
    same = torch.allclose(out, shuffled, atol=1e-5)
    assert same == (scheme == "space_only")


def _pattern_mask(pattern, thw, local, stride):
    """(THW, THW) True where two patch tokens attend to each other, from the paper's definition."""
    T, H, W = thw
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    t, h, w = t.flatten(), h.flatten(), w.flatten()
    eq = lambda a: a[:, None] == a[None, :]
    if pattern == "all":
        return torch.ones(T * H * W, T * H * W, dtype=torch.bool)
    if pattern == "space":
        return eq(t)
    if pattern == "time":
        return eq(h) & eq(w)
    if pattern == "width":
        return eq(t) & eq(h)
    if pattern == "height":
        return eq(t) & eq(w)
    if pattern == "local":  # same T x lh x lw window
        return eq(h // local[0]) & eq(w // local[1])
    if pattern == "global":  # same position modulo the stride in time, height and width
        return eq(t % stride) & eq(h % stride) & eq(w % stride)
    raise AssertionError(pattern)


@pytest.mark.parametrize("pattern", ["all", "space", "time", "width", "height", "local", "global"])
def test_grouped_attention_equals_masked_joint_attention(pattern):
    thw, local, stride = (4, 4, 6), (2, 3), 2
    x = torch.randn(2, 4 * 4 * 6, 16)
    factors = _factors(pattern, thw, local, stride)
    seqs, state = group_tokens(x, factors)
    assert torch.equal(ungroup_tokens(seqs, state), x)  # a pure permutation
    attn = Attention(16, 2, fused_attn=False).eval()
    with torch.no_grad():
        grouped = ungroup_tokens(attn(seqs), state)
        masked = attn(x, attn_mask=_pattern_mask(pattern, thw, local, stride))
    torch.testing.assert_close(grouped, masked, atol=1e-5, rtol=1e-5)


def test_divided_block_starts_as_image_block_and_temporal_fc_is_zero():
    model = mmzoo.create_model("timesformer_tiny", time_embed_std=0.0)
    for blk in model.blocks:
        assert torch.count_nonzero(blk.temporal_fc.weight) == 0 and torch.count_nonzero(blk.temporal_fc.bias) == 0
    assert torch.count_nonzero(model.time_embed) == 0  # the paper's init
    # the from-scratch presets tag frames at the scale of the patch tokens
    std = mmzoo.create_model("timesformer_tiny").time_embed.std().item()
    assert 0.7 < std < 1.1
    assert mmzoo.create_model("timesformer_base", depth=1, embed_dim=64, num_heads=1).time_embed.abs().max() == 0
    names = set(dict(model.named_parameters()))
    for key in ("blocks.0.temporal_norm1.weight", "blocks.0.temporal_attn.qkv.weight", "blocks.0.temporal_fc.weight",
                "blocks.0.norm1.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc1.weight", "time_embed"):
        assert key in names


def test_time_embedding_is_resampled_for_other_clip_lengths():
    model = _perturb(mmzoo.create_model("timesformer_tiny")).eval()
    with torch.no_grad():
        assert model(_clips(t=4)).shape == (2, 6)
        te = model._time_embed(16)
    assert te.shape == (1, 16, 64)
    torch.testing.assert_close(te[:, ::2], model.time_embed)  # nearest: each frame embedding twice


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.attention='spacetime'.*valid choices"):
        mmzoo.create_model("timesformer_tiny", attention="spacetime")
    with pytest.raises(ValueError, match="model.global_stride"):
        mmzoo.create_model("timesformer_tiny", attention="sparse_local_global", num_frames=7)
    assert mmzoo.create_model("timesformer_tiny", attention="T+W+H").attention == "axial"
    with pytest.raises(ValueError, match=r"expected clips of shape \(B, 3, T, H, W\)"):
        mmzoo.create_model("timesformer_tiny")(torch.randn(2, 3, 32, 32))


def test_big_presets_shapes():
    cfg = mmzoo.get_model_config("timesformer_base")
    assert (cfg.num_frames, cfg.img_size, cfg.embed_dim, cfg.depth, cfg.attention) == (8, 224, 768, 12,
                                                                                       "divided_space_time")
    assert (mmzoo.get_model_config("timesformer_hr").num_frames, mmzoo.get_model_config("timesformer_hr").img_size) == (16, 448)
    assert mmzoo.get_model_config("timesformer_l").num_frames == 96
    with torch.device("meta"):
        model = mmzoo.create_model("timesformer_base")
    # ViT-B/16 (86.6M) + 12 temporal attentions, norms and projections (28.4M) + time embedding
    assert 121_000_000 < sum(p.numel() for p in model.parameters()) < 122_000_000


# -- image ViT initialisation ----------------------------------------------------------------------
SMALL = dict(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3, mlp_ratio=4.0)


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("timm") / "vit.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("scheme", ["divided_space_time", "joint_space_time", "space_only"])
def test_timm_weights_reproduce_image_features_with_one_frame(timm_vit, scheme):
    vit, path = timm_vit
    model = mmzoo.create_model("timesformer_tiny", pretrained_image=str(path), attention=scheme, num_frames=1,
                               num_classes=5, time_embed_std=0.0, **SMALL).eval()
    assert model.cfg.pretrained_image is None and model.init_source == str(path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vit.forward_features(x)  # (B, 1+N, D), after the final norm
        got = model.forward_features(x[:, :, None])  # a one-frame clip
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(x[:, :, None]), vit(x), atol=1e-4, rtol=0)


def test_timm_weights_into_every_scheme_copy_spatial_attention(timm_vit):
    vit, path = timm_vit
    sd = vit.state_dict()
    for scheme in ("divided_space_time", "axial", "sparse_local_global"):
        model = mmzoo.create_model("timesformer_tiny", pretrained=str(path), attention=scheme, num_classes=5,
                                   **SMALL)
        own = model.state_dict()
        copies = [k for k in own if any(f".{n}." in k for n in ("temporal_attn", "height_attn", "global_attn"))]
        assert copies
        for k in copies:
            src = k.replace("temporal_attn", "attn").replace("height_attn", "attn").replace("global_attn", "attn")
            assert torch.equal(own[k], sd[src]), k
        assert torch.equal(own["blocks.1.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"])
        with torch.no_grad():
            assert torch.isfinite(model(torch.randn(1, 3, 8, 64, 64))).all()


def test_image_weights_resample_positions_and_mmzoo_vit_checkpoint(timm_vit, tmp_path):
    vit, path = timm_vit
    # other resolution: the 4x4 position grid is resampled to 2x2
    model = mmzoo.create_model("timesformer_tiny", pretrained_image=str(path), num_classes=5,
                               **{**SMALL, "img_size": 32})
    assert model.pos_embed.shape == (1, 5, 192)
    # an mmzoo ViT training checkpoint
    from mmzoo.convert import model_metadata

    img = mmzoo.create_model("vit_tiny_patch16_224", pretrained=path, img_size=64, depth=2, num_classes=5)
    ckpt = tmp_path / "vit.ckpt"
    torch.save({"mmzoo": model_metadata(img), "state_dict": {f"model.{k}": v for k, v in img.state_dict().items()}},
               ckpt)
    model = mmzoo.create_model("timesformer_tiny", pretrained_image=str(ckpt), num_frames=1, num_classes=5,
                               time_embed_std=0.0, **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, :, None]), vit(x), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="not an image ViT"):
        bad = tmp_path / "bad.pth"
        torch.save({"foo.weight": torch.zeros(2)}, bad)
        mmzoo.create_model("timesformer_tiny", pretrained_image=str(bad))
