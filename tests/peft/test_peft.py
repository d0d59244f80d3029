"""Every adaptation method on every tiny preset: only the intended parameters train, the base stays
bit-identical, identity-at-init where promised, LoRA merge, adaptation checkpoints round trip.

Methods are generic over the shared layers, so a new model joins by adding one entry to ``PRESETS``
(preset name + an input builder)."""
from __future__ import annotations

import fnmatch

import pytest
import torch

from mmzoo.models import create_model as _create_model
from mmzoo.peft import (DEFAULT_HEAD, LoRALinear, apply_peft, count_parameters, load_adaptation, merge_lora,
                        save_adaptation, unmerge_lora)
from mmzoo.tasks.base import param_groups_weight_decay


def _images(m, B=2):
    return (torch.randn(B, 3, 32, 32),)


def _images_tokens(m, B=2):
    vocab = m.cfg.text.vocab_size
    return torch.randn(B, 3, 32, 32), torch.randint(1, vocab, (B, m.cfg.text.context_length))


# preset -> input builder (a new model joins with one line here)
PRESETS = {
    "vit_nano_patch4_32": _images,
    "clip_nano": _images_tokens,
    "coca_nano": _images_tokens,
    "wav2vec2_tiny": lambda model: (torch.randn(2, 8000),),  # 0.5 s of 16 kHz audio
}
# config overrides that make a preset the model users adapt (wav2vec 2.0: a classifier without the
# pretraining quantizer, as task=audio_classification builds it)
OVERRIDES = {"wav2vec2_tiny": {"num_classes": 10, "pretrain_head": False}}


def create_model(name, **kwargs):
    return _create_model(name, **{**OVERRIDES.get(name, {}), **kwargs})
METHODS = {
    "lora": {"method": "lora", "r": 4, "alpha": 8.0},
    "adapter": {"method": "adapter", "bottleneck": 8},
    "prefix": {"method": "prefix", "num_tokens": 3},
    "prompt": {"method": "prompt", "num_tokens": 3},
    "bitfit": {"method": "bitfit"},
    "linear_probe": {"method": "linear_probe"},
    "partial": {"method": "partial", "num_blocks": 1},
}


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _loss(out) -> torch.Tensor:
    return sum(t.float().pow(2).mean() for t in _outputs(out))


def _expected_trainable(name: str, method: str) -> bool:
    head = any(fnmatch.fnmatch(name, p) for p in DEFAULT_HEAD)
    if method == "lora":
        return head or "lora_" in name
    if method == "adapter":
        return head or ".adapter_" in name
    if method == "prefix":
        return head or ".prefix." in name
    if method == "prompt":
        return head or ".prompt." in name
    if method == "bitfit":
        return head or name.endswith("bias")
    if method == "linear_probe":
        return head
    return True  # partial: checked separately


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_only_intended_parameters_train(preset, method):
    torch.manual_seed(0)
    model = create_model(preset)
    inputs = PRESETS[preset](model)
    apply_peft(model, METHODS[method])
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    for name, p in model.named_parameters():
        if method != "partial":
            assert p.requires_grad == _expected_trainable(name, method), name
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-2)
    model.train()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        _loss(model(*inputs)).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name  # grads reach exactly the trainable ones
        opt.step()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g.abs().sum() > 0 for g in grads)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen {name} changed"
    model.eval()
    assert all(torch.isfinite(t).all() for t in _outputs(model(*inputs)))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_partial_trains_last_block_of_each_stack(preset):
    model = create_model(preset)
    apply_peft(model, {"method": "partial", "num_blocks": 1, "train_head": False})
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    from mmzoo.peft import block_stacks

    expected = {f"{s}.{len(b) - 1}.{n}" for s, b in block_stacks(model) for n, _ in b[-1].named_parameters()}
    assert names == expected


@pytest.mark.parametrize("method", ["lora", "adapter"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_starts_equal_to_base(preset, method):
    torch.manual_seed(0)
    model = create_model(preset).eval()
    inputs = PRESETS[preset](model)
    with torch.no_grad():
        before = _outputs(model(*inputs))
        apply_peft(model, METHODS[method])
        after = _outputs(model.eval()(*inputs))
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_lora_merge_unmerge(preset):
    torch.manual_seed(0)
    model = create_model(preset).eval()
    inputs = PRESETS[preset](model)
    apply_peft(model, {"method": "lora", "r": 4, "alpha": 8.0, "target": ["*attn.qkv", "*attn.proj", "*mlp.fc1"]})
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert lora and any(".mlp.fc1" in n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    with torch.no_grad():
        for m in lora:
            m.lora_B.normal_(std=0.05)  # a trained-looking update
        w0 = {id(m): m.weight.clone() for m in lora}
        unmerged = _outputs(model(*inputs))
        merge_lora(model)
        merged = _outputs(model(*inputs))
        assert any(not torch.equal(w0[id(m)], m.weight) for m in lora)
        unmerge_lora(model)
        again = _outputs(model(*inputs))
    for a, b, c in zip(unmerged, merged, again):
        assert (a - b).abs().max() < 1e-5
        assert (a - c).abs().max() < 1e-5
    for m in lora:
        torch.testing.assert_close(m.weight, w0[id(m)], rtol=0, atol=1e-6)


ROUND_TRIPS = [("vit_nano_patch4_32", m) for m in METHODS] + [(p, "lora") for p in PRESETS if p != "vit_nano_patch4_32"]


@pytest.mark.parametrize("preset,method", ROUND_TRIPS)
def test_adaptation_checkpoint_round_trip(tmp_path, preset, method):
    torch.manual_seed(0)
    base = create_model(preset)
    base_path = tmp_path / "base.pt"
    torch.save(base.state_dict(), base_path)  # a bare state dict: create_model(pretrained=...) reads it
    model = create_model(preset, pretrained=base_path)
    inputs = PRESETS[preset](model)
    apply_peft(model, METHODS[method])
    with torch.no_grad():  # move every trainable parameter away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    path = save_adaptation(model, tmp_path / "adapter.pt", {"model_name": preset, "pretrained": str(base_path),
                                                           "overrides": OVERRIDES.get(preset, {})})
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert raw["base"]["pretrained"] == str(base_path) and raw["peft"]["method"] == method
    assert path.stat().st_size < 0.9 * base_path.stat().st_size or method == "partial"
    restored = load_adaptation(path)
    model.eval(), restored.eval()
    with torch.no_grad():
        for a, b in zip(_outputs(model(*inputs)), _outputs(restored(*inputs))):
            assert torch.equal(a, b)


def test_bad_config_errors():
    model = create_model("vit_nano_patch4_32")
    with pytest.raises(ValueError, match="valid choices"):
        apply_peft(model, {"method": "loha"})
    with pytest.raises(ValueError, match="peft.target"):
        apply_peft(create_model("vit_nano_patch4_32"), {"method": "lora", "target": ["*nothing*"]})
    with pytest.raises(ValueError, match="peft.head"):
        apply_peft(create_model("vit_nano_patch4_32"), {"method": "linear_probe", "head": ["nope.*"]})
    with pytest.raises(ValueError, match="peft.stacks"):
        apply_peft(create_model("clip_nano"), {"method": "prompt", "stacks": ["decoder"]})


def test_prompt_refuses_kv_cache_decoding():
    from mmzoo.layers import Transformer

    t = Transformer(dim=16, depth=2, num_heads=2, causal=True)
    apply_peft(t, {"method": "prompt", "num_tokens": 2, "train_head": False})
    x = torch.randn(1, 3, 16)
    assert t(x).shape == (1, 3, 16)
    with pytest.raises(ValueError, match="KV-cache"):
        t(x, kv_caches=t.new_kv_caches())


def test_prompt_extends_key_padding_mask():
    """Padded keys stay invisible with prompts: outputs at real positions ignore the padding's content."""
    from mmzoo.layers import Transformer

    torch.manual_seed(0)
    t = Transformer(dim=16, depth=2, num_heads=2).eval()
    apply_peft(t, {"method": "prompt", "num_tokens": 2, "train_head": False})
    x = torch.randn(2, 5, 16)
    kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    y1 = t(x, key_padding_mask=kpm)
    x2 = x.clone()
    x2[1, 3:] = torch.randn(2, 16)
    y2 = t(x2, key_padding_mask=kpm)
    assert y1.shape == (2, 5, 16)
    torch.testing.assert_close(y1[1, :3], y2[1, :3])
    torch.testing.assert_close(y1[0], y2[0])
