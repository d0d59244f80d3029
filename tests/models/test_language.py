"""Language models (GPT / BERT / T5 and their options): shapes, gradients, attention paths, KV cache,
relative position bias against T5's reference bucketing, speculative decoding, decoding options."""
from __future__ import annotations

import pytest
import torch

import mmzoo
from mmzoo.layers import set_fused_attn, use_fused_attn
from mmzoo.models import LMOutput
from mmzoo.models.generation import apply_repetition_penalty, sample
from mmzoo.models.language import RelativePositionBias

# (preset, overrides): every family and every option of the shared layers
VARIANTS = {
    "gpt": ("gpt_nano", {}),
    "gpt_gqa_rope_swiglu": ("gpt_nano", dict(num_kv_heads=2, pos_embed="rope", mlp_layer="swiglu",
                                             norm_layer="rmsnorm", tie_embeddings=False)),
    "gpt_mqa_sinusoidal_postnorm": ("gpt_nano", dict(num_kv_heads=1, pos_embed="sinusoidal", post_norm=True)),
    "gpt_relative": ("gpt_nano", dict(pos_embed="relative")),
    "gpt_moe": ("gpt_nano", dict(num_experts=4, moe_top_k=2, moe_capacity_factor=0)),
    "bert": ("bert_nano", {}),
    "bert_rope_gqa": ("bert_nano", dict(pos_embed="rope", num_kv_heads=2, post_norm=False)),
    "t5": ("t5_nano", {}),
    "t5_moe_gqa": ("t5_nano", dict(num_experts=2, moe_top_k=1, moe_capacity_factor=0, num_kv_heads=1)),
}


def _build(variant, **extra):
    name, overrides = VARIANTS[variant]
    torch.manual_seed(0)
    return mmzoo.create_model(name, **{**overrides, **extra})


def _run(model, tokens):
    if model.cfg.kind == "encoder_decoder":
        return model(tokens, tokens[:, :7])
    return model(tokens)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shapes_gradients_and_determinism(variant):
    model = _build(variant).train()
    tokens = torch.randint(0, 500, (4, 24))
    out = _run(model, tokens)
    assert isinstance(out, LMOutput)
    L = 7 if model.cfg.kind == "encoder_decoder" else 24
    assert out.logits.shape == (4, L, 512) and torch.isfinite(out.logits).all()
    assert out.aux_loss.shape == () and (out.aux_loss > 0) == bool(model.cfg.num_experts)
    (out.logits.logsumexp(-1).mean() + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_run(model, tokens).logits, _run(model, tokens).logits, rtol=0, atol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_matches_reference(variant):
    model = _build(variant).eval()
    tokens = torch.randint(0, 500, (2, 20))
    before = use_fused_attn()
    try:
        set_fused_attn(True)
        with torch.no_grad():
            fused = _run(model, tokens).logits
        set_fused_attn(False)
        with torch.no_grad():
            ref = _run(model, tokens).logits
    finally:
        set_fused_attn(before)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


def test_decoder_is_causal_and_encoder_is_not():
    gpt, bert = _build("gpt").eval(), _build("bert").eval()
    a = torch.randint(0, 500, (1, 12))
    b = a.clone()
    b[0, 8] = (a[0, 8] + 1) % 500
    with torch.no_grad():
        ga, gb = gpt(a).logits, gpt(b).logits
        ba, bb = bert(a).logits, bert(b).logits
    torch.testing.assert_close(ga[:, :8], gb[:, :8])  # the past never sees the future
    assert not torch.allclose(ga[:, 8:], gb[:, 8:])
    assert not torch.allclose(ba[:, :8], bb[:, :8])  # bidirectional


@pytest.mark.parametrize("variant", ["gpt", "gpt_gqa_rope_swiglu", "gpt_mqa_sinusoidal_postnorm", "gpt_relative", "t5"])
def test_kv_cached_logits_equal_full_recompute(variant):
    model = _build(variant).eval().double()
    tokens = torch.randint(0, 500, (2, 14))
    context = model.encode(torch.randint(0, 500, (2, 9))) if model.cfg.kind == "encoder_decoder" else None
    with torch.no_grad():
        full = model.decode(tokens, context)
        forward, _, _ = model.decoder_step_fns(context)
        pieces = [forward(tokens[:, :5])] + [forward(tokens[:, i:i + 1]) for i in range(5, 11)] + [forward(tokens[:, 11:])]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant,strategy", [("gpt", "greedy"), ("gpt_gqa_rope_swiglu", "beam"), ("t5", "greedy"),
                                              ("t5", "beam")])
def test_generate_with_cache_equals_without(variant, strategy):
    model = _build(variant).eval().double()
    prompt = torch.randint(0, 500, (2, 4))
    kw = dict(encoder_tokens=torch.randint(0, 500, (2, 6))) if model.cfg.kind == "encoder_decoder" else {}
    a = model.generate(prompt, 12, strategy, eot_token_id=3, num_beams=3, **kw)
    b = model.generate(prompt, 12, strategy, eot_token_id=3, num_beams=3, use_cache=False, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_gqa_mqa_shrink_the_kv_cache(num_kv_heads):
    model = mmzoo.create_model("gpt_nano", num_kv_heads=num_kv_heads).eval()
    caches = model.new_kv_caches()
    with torch.no_grad():
        model.decode(torch.randint(0, 500, (1, 10)), kv_caches=caches)
    nbytes = sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c, _ in caches)
    mha = 2 * 2 * 10 * 32 * 4  # layers x (k, v) x positions x dim x float32 bytes
    assert nbytes * (4 // num_kv_heads) == mha


def _scramble(model, seed):
    """Large random weights: a model whose greedy choices vary (random-init LMs repeat one token)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3
    return model


def test_speculative_decoding_equals_target_greedy():
    target = _scramble(mmzoo.create_model("gpt_nano", vocab_size=64), 1).eval().double()
    draft = _scramble(mmzoo.create_model("gpt_nano", vocab_size=64, depth=1, embed_dim=16), 2).eval().double()
    for seed in range(2):
        prompt = torch.randint(0, 64, (1, 3), generator=torch.Generator().manual_seed(seed))
        ref = target.generate(prompt, 30)
        assert len(set(ref[0, 3:].tolist())) >= 3  # the test exercises varied output
        out, stats = target.generate_speculative(draft, prompt, 30, num_draft_tokens=4)
        assert torch.equal(out, ref)
        assert stats.acceptance_rate < 0.9  # a disagreeing draft: rejections and cache roll-backs happen
        same, st = target.generate_speculative(target, prompt, 30, num_draft_tokens=4)
        assert torch.equal(same, ref)
        assert st.acceptance_rate == 1.0 and st.target_calls == 6  # 5 tokens per target forward


def test_speculative_decoding_stops_at_stop_token():
    target = _scramble(mmzoo.create_model("gpt_nano", vocab_size=64), 1).eval().double()
    draft = _scramble(mmzoo.create_model("gpt_nano", vocab_size=64, depth=1), 3).eval().double()
    prompt = torch.tensor([[1, 2, 3]])
    ref = target.generate(prompt, 30)[0, 3:].tolist()
    stop = ref[7]
    out, _ = target.generate_speculative(draft, prompt, 30, 3, stop_token_ids=[stop])
    assert out[0, 3:].tolist() == ref[: ref.index(stop) + 1]


def test_repetition_penalty_and_stop_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 1.0]]))
    # logits preferring 5 (3.0) over 6 (2.0): penalised, 5 drops to 1.5 < 2.0 once, then both are penalised
    def step(new):
        return torch.tensor([[0.0] * 5 + [3.0, 2.0, 0.0]]).expand(new.shape[0], -1)

    prompt = torch.zeros(1, 1, dtype=torch.long)
    assert sample(step, prompt, 4, eot_token_id=99, greedy=True)[0].tolist() == [0, 5, 5, 5, 5]
    assert sample(step, prompt, 4, eot_token_id=99, greedy=True, repetition_penalty=2.0)[0].tolist() == [0, 5, 6, 5, 5]
    assert sample(step, prompt, 4, eot_token_id=99, greedy=True, stop_token_ids=[5])[0].tolist() == [0, 5]


def test_relative_position_buckets_match_t5_reference():
    T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention
    rel = torch.arange(-300, 300)
    for bidirectional in (True, False):
        ours = RelativePositionBias(4, 32, 128, bidirectional).bucket(rel)
        ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(ours, ref)


def test_relative_bias_changes_with_distance_only():
    bias = RelativePositionBias(2, 8, 16, bidirectional=True)
    b = bias(6, 6)[0]
    assert b.shape == (2, 6, 6)
    torch.testing.assert_close(b[:, 1:, 1:], b[:, :-1, :-1])  # Toeplitz: depends on key - query only
    torch.testing.assert_close(bias(2, 6, offset=4)[0], b[:, 4:])  # cached decoding offsets


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="kind must be one of"):
        mmzoo.create_model("gpt_nano", kind="gpt")
    with pytest.raises(ValueError, match="context_length"):
        mmzoo.create_model("gpt_nano")(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="decoder_tokens"):
        mmzoo.create_model("t5_nano")(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="does not generate"):
        mmzoo.create_model("bert_nano").generate(torch.zeros(1, 2, dtype=torch.long))


def test_familiar_presets_have_their_parameter_counts():
    # on the meta device: shapes only, no memory
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in mmzoo.create_model(n).parameters()) for n in
                  ("gpt2_small", "bert_base", "t5_small")}
    assert 124.0e6 < counts["gpt2_small"] < 124.5e6  # GPT-2 small: 124.4M with tied embeddings
    assert 108e6 < counts["bert_base"] < 110e6  # BERT-base: 110M with token types and pooler, which mmzoo omits
    assert 55e6 < counts["t5_small"] < 62e6  # T5-small: 60.5M
