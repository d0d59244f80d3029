"""open_clip weights -> mmzoo CLIP: the converted model reproduces open_clip's encoders."""
from __future__ import annotations

import pytest
import torch

import mmzoo
from mmzoo.convert import convert_foreign, load_pretrained, read_checkpoint

open_clip = pytest.importorskip("open_clip")

ATOL = 1e-4


def _save(sd: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, str(path))
    return str(path)


def _tiny_open_clip(quick_gelu: bool = False, custom_text: bool = False, ls: float | None = None):
    """A small open_clip model shaped like mmzoo's clip_nano (32x32 images, 16 tokens)."""
    vision = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32, ls_init_value=ls)
    text = dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2, ls_init_value=ls)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # non-trivial norms and LayerScale so a wrong mapping cannot hide
        for n, p in model.named_parameters():
            if ".ln_" in n or n.startswith("ln_") or "gamma" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _assert_parity(ref, ours, images, tokens):
    with torch.no_grad():
        img_ref, img = ref.encode_image(images), ours.encode_image(images)
        txt_ref, txt = ref.encode_text(tokens), ours.encode_text(tokens)
    torch.testing.assert_close(img, img_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(txt, txt_ref, atol=ATOL, rtol=0)
    return (img - img_ref).abs().max().item(), (txt - txt_ref).abs().max().item()


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    path = tmp_path_factory.mktemp("open_clip") / "vit_b32.pt"
    return model, _save(model.state_dict(), path)


def test_vit_b32_parity(vit_b32):
    """create_model(pretrained=open_clip file) reproduces open_clip's encode_image / encode_text."""
    ref, path = vit_b32
    ours = mmzoo.create_model("clip_vit_b32", pretrained=path).eval()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram of a transformer with twelve causal blocks"])
    _assert_parity(ref, ours, images, tokens)
    torch.testing.assert_close(ours.logit_scale, ref.logit_scale)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_file_formats(tmp_path, suffix):
    torch.manual_seed(0)
    ref = _tiny_open_clip()
    path = _save(ref.state_dict(), tmp_path / f"open_clip_model{suffix}")
    assert read_checkpoint(path).format == "foreign"
    ours = mmzoo.create_model("clip_nano", pretrained=path).eval()
    assert torch.equal(ours.visual_proj.weight, ref.visual.proj.t())
    _assert_parity(ref, ours, torch.randn(2, 3, 32, 32), open_clip.tokenize(["a cat", "a dog"], context_length=16))


@pytest.mark.parametrize("quick_gelu, custom_text, ls", [(True, False, None), (False, True, 0.1)])
def test_tiny_variants_parity(tmp_path, quick_gelu, custom_text, ls):
    """QuickGELU (OpenAI weights), CustomTextCLIP's `text.` prefix, LayerScale in both towers."""
    torch.manual_seed(0)
    ref = _tiny_open_clip(quick_gelu, custom_text, ls)
    path = _save(ref.state_dict(), tmp_path / "tiny.pt")
    act = "quick_gelu" if quick_gelu else "gelu"
    ours = mmzoo.create_model("clip_nano", pretrained=path, vision={"act_layer": act, "init_values": ls},
                              text={"act_layer": act, "init_values": ls}).eval()
    images = torch.randn(3, 3, 32, 32)
    tokens = open_clip.tokenize(["a cat", "a dog on a mat", "x " * 40], context_length=16)  # last one truncated
    _assert_parity(ref, ours, images, tokens)


def test_positions_adapt_to_the_model(tmp_path):
    """Image positions are resampled to a larger grid; text positions are cut to a shorter context."""
    ref = _tiny_open_clip()
    path = _save(ref.state_dict(), tmp_path / "tiny.pt")
    ours = mmzoo.create_model("clip_nano", pretrained=path, vision={"img_size": 64}, text={"context_length": 8})
    assert ours.visual.pos_embed.shape == (1, 1 + 64, 64)
    torch.testing.assert_close(ours.visual.pos_embed[0, 0], ref.visual.positional_embedding[0])
    torch.testing.assert_close(ours.text.pos_embed[0], ref.positional_embedding[:8])
    with pytest.raises(ValueError, match="text.context_length"):
        mmzoo.create_model("clip_nano", pretrained=path, text={"context_length": 32})


def test_wrong_preset_names_the_key(tmp_path):
    path = _save(_tiny_open_clip().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="shape mismatch for visual.patch_embed.proj.weight"):
        mmzoo.create_model("clip_nano", pretrained=path, vision={"patch_size": 4})


def test_unsupported_open_clip_towers_are_named(tmp_path):
    model = mmzoo.create_model("clip_nano")
    sd = {"visual.trunk.patch_embed.proj.weight": torch.zeros(1), "logit_scale": torch.zeros(())}
    with pytest.raises(ValueError, match="timm image tower"):
        convert_foreign(sd, model)
    sd = dict(_tiny_open_clip().state_dict(), **{"visual.something_new": torch.zeros(1)})
    with pytest.raises(ValueError, match="visual.something_new"):
        load_pretrained(model, _save(sd, tmp_path / "extra.pt"))


def test_logit_bias_needs_a_model_with_one(tmp_path):
    ref = _tiny_open_clip()
    sd = dict(ref.state_dict(), logit_bias=torch.tensor([-10.0]))
    path = _save(sd, tmp_path / "siglip_like.pt")
    with pytest.raises(ValueError, match="init_logit_bias"):
        mmzoo.create_model("clip_nano", pretrained=path)
    model = mmzoo.create_model("clip_nano", pretrained=path, init_logit_bias=0.0)
    assert model.logit_bias.item() == -10.0
