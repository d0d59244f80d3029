"""timm parity: random-init timm ViTs saved in every container format reproduce timm's logits in mmzoo
(both attention paths); other heads, other image sizes, headless checkpoints, unknown formats."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import mmzoo
from mmzoo.convert import load_pretrained, read_checkpoint
from mmzoo.layers import Attention

FORMATS = ["pth", "safetensors", "nested"]
ATOL = 1e-4


def _timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random-init timm model with every parameter perturbed (norm affines, biases, head included),
    so a weight that is dropped or mapped to the wrong place changes the logits."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _save(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    if fmt == "pth":
        torch.save(sd, path.with_suffix(".pth"))
        return path.with_suffix(".pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    if fmt == "nested":  # training-script style: {"state_dict": ..., other entries}
        torch.save({"state_dict": sd, "epoch": 3, "arch": "vit"}, path.with_suffix(".pth.tar"))
        return path.with_suffix(".pth.tar")
    raise AssertionError(fmt)


def _images(batch: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _set_fused(model: torch.nn.Module, fused: bool) -> None:
    n = 0
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused
            n += 1
    assert n > 0


@pytest.fixture(scope="module")
def timm_ckpts(tmp_path_factory):
    """(name, format) -> (path, images, timm logits) for a random-init timm model built once per module;
    each format is written on first use."""
    models, paths = {}, {}

    def get(name: str, fmt: str):
        if name not in models:
            model = _timm_model(name)
            x = _images()
            with torch.no_grad():
                models[name] = (model.state_dict(), x, model(x), tmp_path_factory.mktemp(name))
        sd, x, logits, d = models[name]
        if (name, fmt) not in paths:
            paths[name, fmt] = _save(sd, d / name, fmt)
        return paths[name, fmt], x, logits

    return get


# vit_small in one format stays in the default run; its other formats only repeat the container check
PARITY_CASES = [("vit_tiny_patch16_224", fmt) for fmt in FORMATS] + [
    pytest.param("vit_small_patch16_224", fmt, marks=[] if fmt == "safetensors" else pytest.mark.slow)
    for fmt in FORMATS]


@pytest.mark.parametrize("name, fmt", PARITY_CASES)
def test_timm_checkpoint_reproduces_logits(timm_ckpts, name, fmt):
    path, x, expected = timm_ckpts(name, fmt)
    assert read_checkpoint(path).format == "foreign"
    model = mmzoo.create_model(name, pretrained=path).eval()
    for fused in (True, False):
        _set_fused(model, fused)
        with torch.no_grad():
            out = model(x)
        assert out.shape == expected.shape == (2, 1000)
        diff = (out - expected).abs().max().item()
        assert diff < ATOL, f"{name} from {fmt}, fused={fused}: max |logit diff| {diff:.2e}"


# the loading behaviours below do not depend on depth: a 2-block vit_tiny keeps them fast
TINY = "vit_tiny_patch16_224"
SHALLOW = dict(depth=2)


@pytest.fixture(scope="module")
def tiny_timm(tmp_path_factory):
    """A 2-block vit_tiny from timm with its state dict saved as .pth."""
    model = _timm_model(TINY, seed=1, **SHALLOW)
    path = tmp_path_factory.mktemp("tiny") / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_other_num_classes_loads_all_but_head(tiny_timm):
    timm_model, path = tiny_timm
    model = mmzoo.create_model(TINY, pretrained=path, num_classes=10, **SHALLOW).eval()
    assert model.head.weight.shape == (10, 192)
    ckpt = timm_model.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("head."):
            continue
        assert torch.equal(v, ckpt[k]), k
    x = _images(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   timm_model.forward_head(timm_model.forward_features(x), pre_logits=True),
                                   atol=ATOL, rtol=0)
        assert model(x).shape == (2, 10)


def test_headless_checkpoints(tiny_timm, tmp_path):
    timm_model, path = tiny_timm
    x = _images(seed=2)
    with torch.no_grad():
        pre_logits = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    # a checkpoint with a head into a model without one
    feats = mmzoo.create_model(TINY, pretrained=path, num_classes=0, **SHALLOW).eval()
    with torch.no_grad():
        torch.testing.assert_close(feats(x), pre_logits, atol=ATOL, rtol=0)
    # a headless checkpoint into a model with a head: everything but the (fresh) head is loaded
    headless = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("head.")}
    hl_path = tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in headless.items()}, str(hl_path))
    model = mmzoo.create_model(TINY, pretrained=hl_path, **SHALLOW).eval()
    assert model.head.weight.shape == (1000, 192)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pre_logits,
                                   atol=ATOL, rtol=0)


def test_prefixed_nested_checkpoint(tiny_timm, tmp_path):
    """{"model": {"module.<key>": ...}} as written by DDP training scripts."""
    timm_model, _ = tiny_timm
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in timm_model.state_dict().items()}}, path)
    model = mmzoo.create_model(TINY, pretrained=path, **SHALLOW).eval()
    x = _images(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_model(x), atol=ATOL, rtol=0)


def test_other_img_size_resamples_pos_embed(tiny_timm):
    """A 224 checkpoint in a 160 model: positions resampled as timm does with dynamic_img_size."""
    timm_model, path = tiny_timm
    model = mmzoo.create_model(TINY, pretrained=path, img_size=160, **SHALLOW).eval()
    assert model.pos_embed.shape == (1, 1 + 10 * 10, 192)
    torch.testing.assert_close(model.pos_embed[:, 0], timm_model.pos_embed[:, 0])
    timm_dyn = timm.create_model(TINY, dynamic_img_size=True, **SHALLOW).eval()
    timm_dyn.load_state_dict(timm_model.state_dict())
    x = _images(size=160, seed=4)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 1000) and torch.isfinite(out).all()
        torch.testing.assert_close(out, timm_dyn(x), atol=ATOL, rtol=0)


def test_load_pretrained_into_existing_model(tiny_timm):
    timm_model, path = tiny_timm
    model = mmzoo.create_model(TINY, **SHALLOW)
    assert load_pretrained(model, path) is model
    assert torch.equal(model.blocks[1].attn.qkv.weight, timm_model.blocks[1].attn.qkv.weight)
    with pytest.raises(ValueError, match="unexpected keys.*blocks.1"):  # a deeper checkpoint does not fit
        load_pretrained(mmzoo.create_model(TINY, depth=1), path)


def test_unknown_format_names_the_file(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError) as e:
        mmzoo.create_model("vit_nano_patch4_32", pretrained=path)
    assert str(path) in str(e.value) and "timm" in str(e.value)  # names the file and the known formats

    no_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], no_dict)
    with pytest.raises(ValueError, match=str(no_dict)):
        mmzoo.create_model("vit_nano_patch4_32", pretrained=no_dict)

    no_tensors = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, no_tensors)
    with pytest.raises(ValueError, match=str(no_tensors)):
        mmzoo.create_model("vit_nano_patch4_32", pretrained=no_tensors)

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, RuntimeError), match=str(garbage)):
        mmzoo.create_model("vit_nano_patch4_32", pretrained=garbage)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        mmzoo.create_model("vit_nano_patch4_32", pretrained=tmp_path / "missing.pth")


def test_shape_mismatch_names_the_key(tiny_timm):
    _, path = tiny_timm
    with pytest.raises(ValueError, match=r"shape mismatch for cls_token: checkpoint has \(1, 1, 192\), "
                                         r"model expects \(1, 1, 96\)"):
        mmzoo.create_model(TINY, pretrained=path, embed_dim=96, num_heads=3, **SHALLOW)
