"""CoCa: shapes, gradients, CLS padding invariance, KV-cached generation == recompute, decoding strategies."""
from __future__ import annotations

import pytest
import torch

import mmzoo
from mmzoo.layers import set_fused_attn, use_fused_attn
from mmzoo.losses import CoCaLoss
from mmzoo.models import CoCaOutput
from mmzoo.models.generation import beam_search, sample, top_k_top_p_filter

SOT, EOT, PAD = 49406, 49407, 0


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mmzoo.create_model("coca_nano").eval()


def _tokens():
    return torch.tensor([[SOT, 320, 736, EOT, PAD, PAD, PAD, PAD], [SOT, 320, 736, 7117, 1000, 20, EOT, PAD]])


def _sequence_logprob(model, images, seqs):
    """Sum of log p(token t+1 | <= t) by full recompute (EOT appended so the CLS sits after the text)."""
    full = torch.cat([seqs, torch.full((seqs.shape[0], 1), EOT)], 1)
    logp = model(images, full).logits[:, : seqs.shape[1] - 1].log_softmax(-1)
    return logp.gather(-1, seqs[:, 1:, None]).squeeze(-1).sum(-1)


def test_forward_shapes_and_every_parameter_gets_a_gradient(model):
    model.train()
    images, tokens = torch.randn(2, 3, 32, 32), _tokens()
    out = model(images, tokens)
    assert isinstance(out, CoCaOutput)
    assert out.image_features.shape == out.text_features.shape == (2, 64)
    assert out.logits.shape == (2, 8, 49408) and torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.image_features.norm(dim=-1), torch.ones(2))
    losses = CoCaLoss()(out, tokens)
    assert set(losses) == {"loss", "caption_loss", "contrastive_loss"}
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_caption_loss_ignores_padding_and_weights_terms(model):
    images, tokens = torch.randn(2, 3, 32, 32), _tokens()
    out = model(images, tokens)
    logits = out.logits.clone()
    logits[0, 3:] = torch.randn_like(logits[0, 3:])  # positions predicting pads only
    a = CoCaLoss()(out, tokens)
    b = CoCaLoss()(out._replace(logits=logits), tokens)
    torch.testing.assert_close(a["caption_loss"], b["caption_loss"])
    total = CoCaLoss(caption_weight=2.0, contrastive_weight=1.0)(out, tokens)
    torch.testing.assert_close(total["loss"], 2.0 * total["caption_loss"] + total["contrastive_loss"])


def test_cls_token_sees_only_real_tokens(model):
    tokens = _tokens()
    other = tokens.clone()
    other[0, 4:] = 77  # change what follows EOT
    torch.testing.assert_close(model.encode_text(tokens), model.encode_text(other))
    changed = tokens.clone()
    changed[0, 1] = 321  # a real token: the embedding must move
    assert not torch.allclose(model.encode_text(tokens)[0], model.encode_text(changed)[0])


@pytest.mark.parametrize("fused", [True, False])
def test_cached_greedy_generation_equals_full_recompute(model, fused):
    before = use_fused_attn()
    set_fused_attn(fused)
    try:
        images = torch.randn(3, 3, 32, 32)
        seqs = model.generate(images, SOT, EOT, PAD, max_new_tokens=10)
        assert seqs.shape[1] == 11 and (seqs[:, 0] == SOT).all()
        full = torch.cat([seqs, torch.full((3, 1), EOT)], 1)
        argmax = model(images, full).logits[:, : seqs.shape[1] - 1].argmax(-1)
        assert torch.equal(argmax, seqs[:, 1:])
    finally:
        set_fused_attn(before)


def test_decoding_strategies(model):
    images = torch.randn(2, 3, 32, 32)
    greedy = model.generate(images, SOT, EOT, PAD, max_new_tokens=8)
    assert torch.equal(model.generate(images, SOT, EOT, PAD, max_new_tokens=8, strategy="beam", num_beams=1), greedy)
    assert torch.equal(model.generate(images, SOT, EOT, PAD, max_new_tokens=8, strategy="sample", top_k=1), greedy)
    beams = model.generate(images, SOT, EOT, PAD, max_new_tokens=8, strategy="beam", num_beams=4)
    assert beams.shape == greedy.shape  # no EOT within 8 tokens for an untrained model
    assert (_sequence_logprob(model, images, beams) >= _sequence_logprob(model, images, greedy) - 1e-4).all()
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(images, SOT, EOT, PAD, max_new_tokens=8, strategy="sample", top_p=0.9,
                             temperature=1.5, generator=g)
    assert sampled.shape[0] == 2 and not torch.equal(sampled, greedy)
    with pytest.raises(ValueError, match="strategy"):
        model.generate(images, SOT, EOT, strategy="nucleus")


def test_top_k_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_k_top_p_filter(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    assert torch.isfinite(top_k_top_p_filter(logits, top_p=0.81)).sum() == 3
    assert torch.isfinite(top_k_top_p_filter(logits, top_k=1)).tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_k_top_p_filter(shuffled, top_p=0.8)).tolist() == [[False, True, False, True]]


def test_eot_stops_and_pads():
    """A scripted decoder: row 0 emits EOT at its 2nd token, row 1 never does."""
    script = torch.tensor([[5, 9, 7, 7], [6, 6, 6, 6]])
    calls = {"n": 0}

    def step(new):
        i = calls["n"]
        calls["n"] += 1
        rows = new.shape[0]  # 2 inputs, or 2 x num_beams rows (input = row * 2 // rows)
        logits = torch.full((rows, 10), -5.0)
        logits[torch.arange(rows), script[torch.arange(rows) * 2 // rows, min(i, 3)]] = 5.0
        return logits

    out = sample(step, torch.zeros(2, 1, dtype=torch.long), max_new_tokens=4, eot_token_id=9, pad_token_id=0,
                 greedy=True)
    assert out.tolist() == [[0, 5, 9, 0, 0], [0, 6, 6, 6, 6]]

    calls["n"] = 0
    beams = beam_search(step, lambda idx: None, torch.zeros(2, 1, dtype=torch.long), max_new_tokens=4,
                        eot_token_id=9, pad_token_id=0, num_beams=2)
    assert beams[0].tolist()[:3] == [0, 5, 9]


def test_presets_build():
    with torch.device("meta"):
        big = mmzoo.create_model("coca_vit_b32")
    assert sum(p.numel() for p in big.parameters()) > 150e6
    assert "coca_micro" in mmzoo.list_models("coca_*")
