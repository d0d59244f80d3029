"""FusionModel: the six fusion variants and the text-only baseline, through the registry; pure cross-attention
co-attention against its written-out form."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import mmzoo
from mmzoo.layers import Attention
from mmzoo.models._registry import config_from_dict
from mmzoo.models.fusion import FUSION_TYPES, FusionModel

PAD = 511  # any id: the model reads padding from the mask, never from the ids


def _batch(B: int = 3, L: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, 3, 32, 32, generator=g)
    text = torch.randint(0, 500, (B, L), generator=g)
    lengths = torch.tensor([5, 12, L])[:B]
    pad = torch.arange(L)[None] >= lengths[:, None]  # (B, L) True at padding
    return image, text.masked_fill(pad, PAD), pad


def _model(fusion: str, **kw) -> FusionModel:
    torch.manual_seed(0)
    return mmzoo.create_model("fusion_tiny", fusion=fusion, **kw)


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_shapes_finite_gradients_and_determinism(fusion):
    model = _model(fusion)
    image, text, pad = _batch()
    logits = model(image, text, pad)
    assert logits.shape == (3, 12) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{fusion}: no gradient for {missing}"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(image, text, pad), model(image, text, pad))


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_fused_and_reference_attention_agree(fusion):
    model = _model(fusion).eval()
    image, text, pad = _batch()
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    outs = []
    for fused in (True, False):
        for m in attns:
            m.fused_attn = fused
        with torch.no_grad():
            outs.append(model(image, text, pad))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_padding_is_ignored_and_content_is_not(fusion):
    """Ids at padded positions never change the answer; an id inside the question, or the image, does."""
    model = _model(fusion).eval()
    image, text, pad = _batch()
    with torch.no_grad():
        ref = model(image, text, pad)
        other = torch.where(pad, torch.randint(0, 500, text.shape), text)
        torch.testing.assert_close(model(image, other, pad), ref, atol=1e-5, rtol=1e-5)
        changed = text.clone()
        changed[:, 2] = (changed[:, 2] + 1) % 500
        assert not torch.allclose(model(image, changed, pad), ref, atol=1e-4)
        assert not torch.allclose(model(image.flip(-1), text, pad), ref, atol=1e-4)


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_generic_stream_with_padding(fusion):
    """A third modality of another width (e.g. audio tokens) plugs in; its padded tokens are ignored."""
    model = _model(fusion, extra_dims=[20])
    assert model.modalities == ["image", "text", "extra0"]
    model.eval()
    image, text, pad = _batch()
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(3, 7, 20, generator=g)
    audio_pad = torch.arange(7)[None] >= torch.tensor([3, 7, 1])[:, None]
    with torch.no_grad():
        ref = model(image, text, pad, extra=[(audio, audio_pad)])
        noisy = torch.where(audio_pad[..., None], torch.randn(3, 7, 20, generator=g) * 100, audio)
        torch.testing.assert_close(model(image, text, pad, extra=[(noisy, audio_pad)]), ref, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(image, text, pad, extra=[(audio * 2, audio_pad)]), ref, atol=1e-4)
    with pytest.raises(ValueError, match=r"expected 1 extra streams"):
        model(image, text, pad)
    with pytest.raises(ValueError, match=r"stream 'extra0': expected tokens of shape \(B=3, L, 20\)"):
        model(image, text, pad, extra=[(torch.randn(3, 7, 16), None)])


def test_early_sum_aligns_streams_by_position():
    """Early summation adds token i of every stream (weights w_m), zero-padding the shorter stream; a summed
    position is padding only where every stream is padding."""
    model = _model("early_sum", use_image=False, use_text=False, extra_dims=[8, 8]).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    a_pad = torch.tensor([[False] * 4, [False, False, True, True]])
    captured = {}
    model.shared.register_forward_pre_hook(
        lambda mod, args, kw: captured.update(x=args[0], pad=kw["key_padding_mask"]), with_kwargs=True)
    with torch.no_grad():
        model(extra=[(a, a_pad), (b, None)])
        w = model.sum_weights
        ha = torch.cat([model.cls_tokens[0].expand(2, 1, -1), model.input_proj[0](a) + model.modality_embed[0]], 1)
        hb = torch.cat([model.cls_tokens[1].expand(2, 1, -1), model.input_proj[1](b) + model.modality_embed[1]], 1)
        ha = ha.masked_fill(torch.cat([torch.zeros(2, 1, dtype=torch.bool), a_pad], 1)[..., None], 0)
        expected = w[1] * hb
        expected[:, :5] += w[0] * ha
    torch.testing.assert_close(captured["x"], expected)
    assert not captured["pad"].any()  # stream b covers every position
    # when both streams pad, the position is padding
    with torch.no_grad():
        model(extra=[(a, a_pad), (b, torch.tensor([[False] * 6, [False, False, True, True, True, True]]))])
    assert captured["pad"].tolist() == [[False] * 7, [False, False, False, True, True, True, True]]


def test_cross_attention_is_co_attention():
    """(e): each stream's blocks take their keys/values from the other stream (ViLBERT)."""
    model = _model("cross_attention")
    assert len(model.co_layers) == model.cfg.depth and model.shared is None
    for layer in model.co_layers:
        assert len(layer.blocks) == 2 and all(b.cross_attn is not None for b in layer.blocks)
    f = _model("cross_attention_concat")
    assert len(f.co_layers) == f.cfg.stream_depth and len(f.shared.blocks) == f.cfg.depth
    c, d = _model("multi_to_one"), _model("one_to_multi")
    for m in (c, d):
        assert len(m.stream_blocks) == 2 and all(len(t.blocks) == m.cfg.stream_depth for t in m.stream_blocks)
        assert len(m.shared.blocks) == m.cfg.depth


def test_text_only_baseline_ignores_the_image():
    torch.manual_seed(0)
    model = mmzoo.create_model("fusion_tiny_text_only").eval()
    assert model.visual is None and model.modalities == ["text"]
    image, text, pad = _batch()
    with torch.no_grad():
        out = model(image, text, pad)
        assert torch.equal(model(None, text, pad), out)
        assert torch.equal(model(torch.randn_like(image), text, pad), out)


def test_config_round_trip_and_errors():
    model = _model("one_to_multi", extra_dims=[5])
    data = dataclasses.asdict(model.cfg)
    again = config_from_dict("fusion", data)
    assert again == model.cfg and isinstance(again.extra_dims, tuple)
    with pytest.raises(ValueError, match="unknown model.fusion 'late'; valid choices"):
        _model("late")
    with pytest.raises(ValueError, match="needs at least two streams"):
        _model("cross_attention", use_image=False)
    with pytest.raises(ValueError, match="pass `image`"):
        _model("early_concat")(None, *_batch()[1:])


# -- (e) as in the survey's diagram: cross-attention only ------------------------------------------
def _cross_attention_by_hand(attn, x, context, context_pad):
    """Multi-head attention written out: queries from ``x``, keys/values from ``context``; padded keys
    get no weight."""
    H, Dh = attn.num_heads, attn.head_dim
    B, L, _ = x.shape
    q = (x @ attn.q.weight.t() + attn.q.bias).view(B, L, H, Dh)
    kv = (context @ attn.kv.weight.t() + attn.kv.bias).view(B, context.shape[1], 2, H, Dh)
    scores = torch.einsum("blhd,bshd->bhls", q, kv[:, :, 0]) * Dh ** -0.5
    if context_pad is not None:
        scores = scores.masked_fill(context_pad[:, None, None, :], float("-inf"))
    out = torch.einsum("bhls,bshd->blhd", scores.softmax(-1), kv[:, :, 1]).flatten(2)
    return out @ attn.proj.weight.t() + attn.proj.bias


def test_pure_cross_attention_layer_equals_its_written_out_form():
    model = _model("cross_attention", co_attention="cross").double().eval()
    layer = model.co_layers[0]
    assert all(b.attn is None and b.cross_attn is not None for b in layer.blocks)  # no within-stream attention
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 32, generator=g, dtype=torch.float64), torch.randn(2, 7, 32, generator=g, dtype=torch.float64)]
    masks = [None, torch.arange(7)[None] >= torch.tensor([4, 7])[:, None]]
    with torch.no_grad():
        out = layer(xs, masks)
        for i, blk in enumerate(layer.blocks):
            j = 1 - i
            h = xs[i] + _cross_attention_by_hand(blk.cross_attn, blk.norm_cross(xs[i]), xs[j], masks[j])
            h = h + blk.mlp(blk.norm2(h))  # Z_i <- Z_i + CA(Z_i, Z_j); Z_i <- Z_i + MLP(Z_i)
            torch.testing.assert_close(out[i], h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("co_attention", ["cross", "self_cross"])
def test_pure_cross_attention_has_no_within_stream_interaction(co_attention):
    """After one co-attention layer, a stream's token depends on the other streams and on itself only
    when there is no self-attention; with ViLBERT's block it also depends on its own stream's tokens."""
    model = _model("cross_attention", co_attention=co_attention).eval()
    layer = model.co_layers[0]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 32, generator=g), torch.randn(2, 7, 32, generator=g)]
    other = [xs[0].clone(), xs[1]]
    other[0][:, 3] = torch.randn(2, 32, generator=g) * 3  # a new token 3 in stream 0
    with torch.no_grad():
        a, b = layer(xs, [None, None]), layer(other, [None, None])
    keep = [0, 1, 2, 4]
    moved = (a[0][:, keep] - b[0][:, keep]).abs().max()
    assert (moved == 0) if co_attention == "cross" else (moved > 1e-4)
    assert not torch.allclose(a[1], b[1])  # the other stream reads the changed token either way


@pytest.mark.parametrize("fusion", ["cross_attention", "cross_attention_concat"])
def test_pure_cross_attention_variants_train_and_ignore_padding(fusion):
    model = _model(fusion, co_attention="cross")
    image, text, pad = _batch()
    model(image, text, pad).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        ref = model(image, text, pad)
        other = torch.where(pad, torch.randint(0, 500, text.shape), text)
        torch.testing.assert_close(model(image, other, pad), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown model.co_attention 'none'; valid choices"):
        _model(fusion, co_attention="none")
