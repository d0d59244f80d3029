"""wav2vec 2.0 through the registry: parameter counts as Hugging Face, tiny presets (shapes, gradients,
fused vs reference attention, determinism, padding), masking, distractors, quantizer, loss."""
from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Config as HFConfig, Wav2Vec2ForPreTraining, Wav2Vec2Model

import mmzoo
from mmzoo.layers import Attention
from mmzoo.losses import Wav2Vec2Loss
from mmzoo.models.wav2vec2 import GumbelQuantizer, compute_mask_indices, sample_negatives

TINY = ["wav2vec2_tiny", "wav2vec2_tiny_stable"]
HF_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, codevector_dim=768,
                proj_codevector_dim=768)


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,hf_kwargs", [("wav2vec2_base", {}), ("wav2vec2_large", HF_LARGE)])
def test_param_count_equals_hugging_face(name, hf_kwargs):
    with torch.device("meta"):
        assert _n(mmzoo.create_model(name, pretrain_head=False)) == _n(Wav2Vec2Model(HFConfig(**hf_kwargs)))
        assert _n(mmzoo.create_model(name)) == _n(Wav2Vec2ForPreTraining(HFConfig(**hf_kwargs)))
    if name == "wav2vec2_base":
        with torch.device("meta"):
            assert round(_n(mmzoo.create_model(name)) / 1e6) == 95  # the paper's BASE size


def test_base_preset_is_the_papers():
    cfg = mmzoo.get_model_config("wav2vec2_base")
    assert cfg.conv_dim == (512,) * 7 and cfg.conv_kernel == (10, 3, 3, 3, 3, 2, 2)
    assert cfg.conv_stride == (5, 2, 2, 2, 2, 2, 2) and cfg.feature_grad_mult == 0.1
    assert (cfg.num_codevector_groups, cfg.num_codevectors, cfg.num_negatives) == (2, 320, 100)
    assert (cfg.mask_prob, cfg.mask_length, cfg.logit_temp, cfg.latent_temp) == (0.65, 10, 0.1, (2.0, 0.5, 0.999995))
    assert (cfg.conv_pos, cfg.conv_pos_groups, cfg.layer_norm_first) == (128, 16, False)


def _wav(batch: int = 2, samples: int = 8000, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TINY)
def test_tiny_pretrain_shapes_finite_and_every_param_gets_a_gradient(name):
    torch.manual_seed(0)
    model = mmzoo.create_model(name, num_classes=5).train()
    out = model.forward_pretrain(_wav(), generator=torch.Generator().manual_seed(0))
    assert out.logits.shape[1] == 1 + model.cfg.num_negatives
    assert out.codes.shape == (out.logits.shape[0], 2)
    losses = Wav2Vec2Loss()(out)
    logits = model(_wav())  # the classification head, for its gradient
    assert logits.shape == (2, 5)
    (losses["loss"] + logits.sum()).backward()
    for k, v in losses.items():
        assert torch.isfinite(v).all(), k
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


@pytest.mark.parametrize("name", TINY)
def test_hidden_states_shape_fused_vs_reference_and_deterministic_eval(name):
    model = mmzoo.create_model(name).eval()
    x = _wav(2, 16000)
    with torch.no_grad():
        fused = model(x)
        assert fused.shape == (2, 49, model.cfg.dim)  # 20 ms frames: 1 s -> 49
        assert torch.equal(fused, model(x))
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused_attn = False
        ref = model(x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_padded_batch_matches_clips_alone():
    """layer-norm conv encoder (no norm over time): a padded clip's valid frames equal the clip alone, and
    the classification head pools over valid frames only."""
    model = mmzoo.create_model("wav2vec2_tiny_stable", num_classes=3).eval()
    a, b = _wav(1, 16000, 1)[0], _wav(1, 9000, 2)[0]
    batch = torch.zeros(2, 16000)
    batch[0], batch[1, :9000] = a, b
    lengths = torch.tensor([16000, 9000])
    with torch.no_grad():
        hid, pad = model.forward_features(batch, lengths)
        alone = model.forward_features(b[None])[0]
        frames = int(model.frame_lengths(torch.tensor([9000])))
        assert pad[1].sum() == 49 - frames and not pad[0].any()
        torch.testing.assert_close(hid[1, :frames], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(batch, lengths)[1], model(b[None])[0], atol=1e-5, rtol=1e-5)
        # no padding in the batch -> no mask (fused kernel kept)
        assert model.forward_features(batch, torch.tensor([16000, 16000]))[1] is None


def test_mask_indices_follow_fairseq_and_respect_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([400, 250, 400])
    mask = compute_mask_indices(lengths, 400, 0.65, 10, g)
    assert mask.shape == (3, 400)
    assert len(set(mask.sum(1).tolist())) == 1  # same number of masked steps per row
    assert not mask[1, 250:].any()  # never on padding
    # expected coverage of overlapping spans: 1 - (1 - 10/T)^(0.65 T / 10) ~= 1 - e^-0.65 = 0.48
    frac = mask[0].float().mean().item()
    assert 0.3 < frac < 0.6


def test_negatives_come_from_the_same_utterance_and_never_the_positive():
    B, M, C = 3, 7, 4
    y = torch.arange(B * M, dtype=torch.float32).view(B, M, 1).expand(B, M, C).clone()  # distinct rows
    negs = sample_negatives(y, 50, torch.Generator().manual_seed(0))
    assert negs.shape == (50, B, M, C)
    ids = negs[..., 0]  # (K, B, M): the global index of each distractor
    assert not (ids == y[None, :, :, 0]).any()
    assert ((ids // M) == torch.arange(B).view(1, B, 1)).all()  # same utterance
    assert len(ids[:, 0, 0].unique()) == M - 1  # every other step gets drawn


def test_quantizer_eval_argmax_perplexity_and_temperature():
    q = GumbelQuantizer(8, 2, 5, 6).eval()
    x = torch.randn(64, 8)
    codes, prob_ppl, code_ppl, idx = q(x)
    logits = q.weight_proj(x).view(64, 2, 5)
    assert torch.equal(idx, logits.argmax(-1))
    expected = q.codevectors[0].view(2, 5, 3)[torch.arange(2), idx].reshape(64, 6)
    torch.testing.assert_close(codes, expected)
    p = logits.softmax(-1).mean(0)
    torch.testing.assert_close(prob_ppl, torch.exp(-(p * p.log()).sum(-1)).sum())
    assert 1.0 <= code_ppl <= 10.0
    model = mmzoo.create_model("wav2vec2_base", pretrain_head=True, depth=1, conv_dim=(8,) * 7, dim=16,
                               num_heads=2, conv_pos=4, conv_pos_groups=2)
    for step, temp in ((0, 2.0), (1000, 2.0 * 0.999995 ** 1000), (10 ** 6, 0.5)):
        model.set_num_updates(step)
        assert model.quantizer.temperature == pytest.approx(temp)


def test_loss_scaling_and_accuracy():
    from types import SimpleNamespace

    logits = torch.tensor([[5.0, 1.0, float("-inf")], [0.0, 3.0, 1.0]])
    out = SimpleNamespace(logits=logits, num_vars=10, prob_perplexity=torch.tensor(4.0),
                          features_pen=torch.tensor(0.5))
    losses = Wav2Vec2Loss(0.1, 10.0)(out)
    ce = torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(losses["contrastive"], ce)
    torch.testing.assert_close(losses["loss"], ce + 0.1 * 0.6 + 10 * 0.5)
    assert losses["accuracy"] == 0.5


def test_feature_grad_mult_scales_encoder_gradients():
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = mmzoo.create_model("wav2vec2_tiny", feature_grad_mult=mult, pretrain_head=False, num_classes=2,
                                   dropout=0.0, attn_drop=0.0, input_drop=0.0).train()
        model(_wav()).sum().backward()
        grads[mult] = model.feature_extractor.conv_layers[0].conv.weight.grad.clone()
    torch.testing.assert_close(grads[0.1], grads[1.0] * 0.1, atol=1e-7, rtol=1e-4)
    frozen = mmzoo.create_model("wav2vec2_tiny", freeze_feature_encoder=True, pretrain_head=False, num_classes=2)
    frozen(_wav()).sum().backward()
    assert all(p.grad is None for p in frozen.feature_extractor.parameters())


def test_bad_input_errors():
    model = mmzoo.create_model("wav2vec2_tiny")
    with pytest.raises(ValueError, match=r"shape \(B, samples\)"):
        model(torch.randn(2, 1, 8000))
    with pytest.raises(ValueError, match="feat_extract_norm"):
        mmzoo.create_model("wav2vec2_tiny", feat_extract_norm="batch")
    with pytest.raises(ValueError, match="pretrain_head=True"):
        mmzoo.create_model("wav2vec2_tiny", pretrain_head=False).forward_pretrain(_wav())
