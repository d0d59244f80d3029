"""timm's model API on mmzoo's ViT: forward_intermediates, features_only, get/reset_classifier, and a clear
error for pretrained=True; intermediates checked against timm itself on the same weights."""
from __future__ import annotations

import pytest
import timm
import torch

import mmzoo

NAME = "vit_tiny_patch16_224"
SMALL = dict(depth=3, img_size=64)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    ref = timm.create_model(NAME, pretrained=False, **SMALL).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("timm") / "vit.pth"
    torch.save(ref.state_dict(), path)
    ours = mmzoo.create_model(NAME, pretrained=path, **SMALL).eval()
    return ref, ours, path


@pytest.mark.parametrize("indices", [None, 2, [0, -1]])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("fmt", ["NCHW", "NLC"])
def test_forward_intermediates_match_timm(pair, indices, norm, fmt):
    ref, ours, _ = pair
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final_ref, inter_ref = ref.forward_intermediates(x, indices=indices, norm=norm, output_fmt=fmt)
        final, inter = ours.forward_intermediates(x, indices=indices, norm=norm, output_fmt=fmt)
        only = ours.forward_intermediates(x, indices=indices, norm=norm, output_fmt=fmt, intermediates_only=True)
    assert len(inter) == len(inter_ref) == len(only)
    for a, b, c in zip(inter, inter_ref, only):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        torch.testing.assert_close(c, a, atol=1e-6, rtol=0)
    torch.testing.assert_close(final, final_ref, atol=1e-4, rtol=0)


def test_features_only_matches_timm(pair):
    ref, _, path = pair
    feats_ref = timm.create_model(NAME, pretrained=False, features_only=True, out_indices=(1, 2), **SMALL).eval()
    missing, _ = feats_ref.load_state_dict({f"model.{k}": v for k, v in ref.state_dict().items()}, strict=False)
    assert not missing
    feats = mmzoo.create_model(NAME, pretrained=path, features_only=True, out_indices=(1, 2), **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, out_ref = feats(x), feats_ref(x)
    assert [o.shape for o in out] == [o.shape for o in out_ref] == [(2, 192, 4, 4)] * 2
    for a, b in zip(out, out_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert [f["reduction"] for f in feats.feature_info] == [16, 16]
    assert [f["num_chs"] for f in feats.feature_info] == feats_ref.feature_info.channels()


def test_classifier_api_and_index_errors(pair):
    _, ours, _ = pair
    model = mmzoo.create_model("vit_nano_patch4_32")
    assert model.get_classifier() is model.head and model.head.out_features == 10
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    with pytest.raises(ValueError, match="block index 5 is out of range for a model of depth 3"):
        ours.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[5])
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt="NHWC")


def test_pretrained_true_says_where_weights_come_from():
    with pytest.raises(ValueError, match="mmzoo downloads no weights. Pass a file"):
        mmzoo.create_model("vit_nano_patch4_32", pretrained=True)
    assert mmzoo.create_model("vit_nano_patch4_32", pretrained=False).head.out_features == 10
    with pytest.raises(ValueError, match="features_only=True: .* has no forward_intermediates"):
        mmzoo.create_model("clip_nano", features_only=True) if "clip_nano" in mmzoo.list_models() else \
            mmzoo.create_model(mmzoo.list_models("clip*")[0], features_only=True)
