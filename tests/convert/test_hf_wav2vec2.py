"""Hugging Face parity: random-init HF wav2vec 2.0 models saved with ``save_pretrained`` reproduce their
last hidden states in mmzoo (post-LN and stable-layer-norm, encoder-only and pretraining checkpoints), and in
training mode with dropout on (same random stream, same dropout placement)."""
from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Config as HFConfig, Wav2Vec2ForPreTraining, Wav2Vec2Model

import mmzoo
from mmzoo.layers import Attention

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16,) * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, codevector_dim=32, proj_codevector_dim=24,
             num_codevectors_per_group=8)


def _overrides(stable: bool, pretrain: bool) -> dict:
    return dict(conv_dim=(16,) * 7, dim=32, depth=2, num_heads=4, mlp_ratio=2.0, conv_pos=16, conv_pos_groups=4,
                codevector_dim=32, proj_codevector_dim=24, num_codevectors=8, layer_norm_first=stable,
                feat_extract_norm="layer" if stable else "group", conv_bias=stable, pretrain_head=pretrain)


@pytest.mark.parametrize("stable", [False, True], ids=["post_ln", "stable_layer_norm"])
@pytest.mark.parametrize("hf_cls", [Wav2Vec2Model, Wav2Vec2ForPreTraining])
@pytest.mark.parametrize("fused", [True, False])
def test_hidden_states_match_hugging_face(tmp_path, stable, hf_cls, fused):
    torch.manual_seed(0)
    hf = hf_cls(HFConfig(**SMALL, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group",
                         conv_bias=stable)).eval()
    with torch.no_grad():  # perturb every weight so a dropped or misplaced one changes the output
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    pretrain = hf_cls is Wav2Vec2ForPreTraining
    for source in (tmp_path, tmp_path / "model.safetensors"):  # the directory or its weights file
        model = mmzoo.create_model("wav2vec2_tiny", pretrained=source, **_overrides(stable, pretrain)).eval()
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused_attn = fused
        x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = (hf if not pretrain else hf.wav2vec2)(x).last_hidden_state
            out = model(x)
        assert ref.std() > 0.1
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    if pretrain:
        torch.testing.assert_close(model.quantizer.codevectors, hf.quantizer.codevectors)
        torch.testing.assert_close(model.final_proj.weight, hf.project_hid.weight)


def test_encoder_only_checkpoint_into_pretraining_model_keeps_fresh_quantizer(tmp_path):
    torch.manual_seed(0)
    Wav2Vec2Model(HFConfig(**SMALL)).save_pretrained(tmp_path)
    model = mmzoo.create_model("wav2vec2_tiny", pretrained=tmp_path, **_overrides(False, True))
    assert model.quantizer.codevectors.shape == (1, 16, 16)


@pytest.mark.parametrize("stable", [False, True], ids=["post_ln", "stable_layer_norm"])
def test_training_mode_dropout_matches_hugging_face(stable):
    """With dropout on, the same random stream gives the same hidden states in training mode: every
    dropout sits where Hugging Face (and fairseq) put it, the one after the positional convolution (and
    its LayerNorm, post-LN) included. Attention / activation dropout are off (they draw differently)."""
    torch.manual_seed(0)
    hf = Wav2Vec2Model(HFConfig(**SMALL, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group",
                                conv_bias=stable, hidden_dropout=0.3, feat_proj_dropout=0.2, attention_dropout=0.0,
                                activation_dropout=0.0, layerdrop=1e-9, apply_spec_augment=False)).train()
    model = mmzoo.create_model("wav2vec2_tiny", **_overrides(stable, False), dropout=0.3, input_drop=0.2,
                               attn_drop=0.0, act_drop=0.0, layerdrop=1e-9).train()
    model.load_state_dict(_convert(hf, model))
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(7)
        ref = hf(x).last_hidden_state
        torch.manual_seed(7)
        out = model(x)
        torch.manual_seed(8)
        other = model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, other, atol=1e-3)  # dropout is active: another stream, other states


def _convert(hf, model):
    from mmzoo.convert import convert_foreign

    return convert_foreign(hf.state_dict(), model)
