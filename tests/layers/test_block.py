"""Block / Transformer: pre- vs post-norm, stochastic-depth ramp, KV-cached decoding == full recompute."""
from __future__ import annotations

import pytest
import torch

from mmzoo.layers import (Block, DropPath, GluMlp, KVCache, LayerScale, RotaryEmbedding, SwiGLU, Transformer,
                          build_blocks, run_blocks)
from mmzoo.layers import block as block_mod

DIM, HEADS, B = 32, 4, 2


def _randomize_norms(module: torch.nn.Module) -> None:
    """Non-trivial norm affines, so a norm applied in the wrong place changes the numbers."""
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)


def test_pre_and_post_norm_run_and_differ():
    torch.manual_seed(0)
    pre = Block(DIM, HEADS).eval()
    post = Block(DIM, HEADS, post_norm=True).eval()
    post.load_state_dict(pre.state_dict())  # same weights, only the residual wiring differs
    x = torch.randn(B, 6, DIM)
    with torch.no_grad():
        y_pre, y_post = pre(x), post(x)
    assert y_pre.shape == y_post.shape == x.shape
    assert torch.isfinite(y_pre).all() and torch.isfinite(y_post).all()
    assert not torch.allclose(y_pre, y_post, atol=1e-3)
    # post-norm ends with norm2 (unit affine at init): every token is normalised
    torch.testing.assert_close(y_post.mean(-1), torch.zeros(B, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y_post.var(-1, unbiased=False), torch.ones(B, 6), atol=1e-3, rtol=0)


def test_pre_norm_block_matches_manual_computation():
    torch.manual_seed(1)
    blk = Block(DIM, HEADS, init_values=0.5).eval()
    _randomize_norms(blk)
    x = torch.randn(B, 5, DIM)
    with torch.no_grad():
        h = x + blk.ls1.gamma * blk.attn(blk.norm1(x))
        expected = h + blk.ls2.gamma * blk.mlp(blk.norm2(h))
        torch.testing.assert_close(blk(x), expected)
        post = Block(DIM, HEADS, init_values=0.5, post_norm=True).eval()
        post.load_state_dict(blk.state_dict())
        h = post.norm1(x + post.ls1.gamma * post.attn(x))
        expected = post.norm2(h + post.ls2.gamma * post.mlp(h))
        torch.testing.assert_close(post(x), expected)


def test_block_options_build_the_right_modules():
    blk = Block(DIM, HEADS, init_values=1e-4, drop_path=0.1, mlp_layer=SwiGLU, cross_attn=True, context_dim=24,
                num_kv_heads=2, qk_norm=True)
    assert isinstance(blk.ls1, LayerScale) and torch.equal(blk.ls1.gamma, torch.full((DIM,), 1e-4))
    assert isinstance(blk.drop_path1, DropPath) and blk.drop_path1.drop_prob == 0.1
    assert isinstance(blk.mlp, GluMlp) and isinstance(blk.mlp.act, torch.nn.SiLU)
    assert blk.cross_attn.kv.in_features == 24 and blk.attn.num_kv_heads == 2
    plain = Block(DIM, HEADS)
    assert isinstance(plain.ls1, torch.nn.Identity) and isinstance(plain.drop_path1, torch.nn.Identity)
    assert plain.cross_attn is None
    out = blk.eval()(torch.randn(B, 3, DIM), context=torch.randn(B, 4, 24))
    assert out.shape == (B, 3, DIM)


def test_build_blocks_drop_path_ramp():
    blocks = build_blocks(5, drop_path_rate=0.2, dim=DIM, num_heads=HEADS)
    rates = [0.0 if isinstance(b.drop_path1, torch.nn.Identity) else b.drop_path1.drop_prob for b in blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert len(build_blocks(1, drop_path_rate=0.2, dim=DIM, num_heads=HEADS)) == 1


def test_run_blocks_grad_checkpointing_same_outputs_and_grads(monkeypatch):
    calls = []
    real = block_mod.checkpoint
    monkeypatch.setattr(block_mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(2)
    model = Transformer(DIM, 3, HEADS, drop_path_rate=0.2).train()
    x = torch.randn(B, 6, DIM)
    results = []
    for ckpt in (False, True):
        model.zero_grad()
        model.grad_checkpointing = ckpt
        torch.manual_seed(3)  # same drop-path draws; checkpoint restores the RNG on recompute
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(calls) == 3
    torch.testing.assert_close(results[0][0], results[1][0])
    for n, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][n], msg=n)


# -- KV-cached incremental decoding ------------------------------------------------------------------
def _decoder(fused: bool, cross: bool = False, rope: bool = False, num_kv_heads=None, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(DIM, 2, HEADS, causal=True, cross_attn=cross, context_dim=24 if cross else None,
                        num_kv_heads=num_kv_heads, qk_norm=True, fused_attn=fused,
                        rope=RotaryEmbedding(DIM // HEADS) if rope else None)
    _randomize_norms(model)
    return model.eval()


def _incremental(model: Transformer, x: torch.Tensor, steps: list[int], context=None, context_padding_mask=None,
                 drop_context: bool = False) -> torch.Tensor:
    """Feed x in chunks of the given sizes through fresh caches; returns the concatenated outputs."""
    caches = model.new_kv_caches()
    outs, start = [], 0
    for i, n in enumerate(steps):
        ctx = None if (drop_context and i > 0) else context  # cross K/V are cached after the first step
        outs.append(model(x[:, start:start + n], context=ctx, context_padding_mask=context_padding_mask,
                          kv_caches=caches))
        start += n
        assert all(c[0].length == start for c in caches)
    assert start == x.shape[1]
    return torch.cat(outs, dim=1)


SCHEDULES = {
    "prompt_then_tokens": [4, 1, 1, 1, 1],
    "chunks": [3, 3, 1, 2],
    "token_by_token": [1] * 9,
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", ["mha", "gqa_rope", "rope"])
def test_kv_cache_matches_full_causal(schedule, fused, variant):
    model = _decoder(fused, rope="rope" in variant, num_kv_heads=2 if "gqa" in variant else None)
    x = torch.randn(B, sum(SCHEDULES[schedule]), DIM)
    with torch.no_grad():
        full = model(x)
        inc = _incremental(model, x, SCHEDULES[schedule])
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["prompt_then_tokens", "chunks"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_matches_full_with_cross_attention(schedule, fused, rope):
    model = _decoder(fused, cross=True, rope=rope, num_kv_heads=1)
    steps = SCHEDULES[schedule]
    x = torch.randn(B, sum(steps), DIM)
    ctx = torch.randn(B, 5, 24)
    ctx_pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    with torch.no_grad():
        full = model(x, context=ctx, context_padding_mask=ctx_pad)
        inc = _incremental(model, x, steps, context=ctx, context_padding_mask=ctx_pad)
        inc_no_ctx = _incremental(model, x, steps, context=ctx, context_padding_mask=ctx_pad, drop_context=True)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inc_no_ctx, full, atol=1e-5, rtol=1e-5)
    # the context padding matters (so the test above checks it is applied)
    with torch.no_grad():
        unpadded = model(x, context=ctx)
    assert not torch.allclose(unpadded[1], full[1], atol=1e-4)


def test_fused_and_reference_decoders_agree():
    ref, fused = _decoder(False, cross=True, rope=True), _decoder(True, cross=True, rope=True)
    x, ctx = torch.randn(B, 6, DIM), torch.randn(B, 3, 24)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, context=ctx), ref(x, context=ctx), atol=1e-5, rtol=1e-5)


def test_causal_transformer_is_causal():
    model = _decoder(True, rope=True)
    x = torch.randn(B, 6, DIM)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(B, 2, DIM)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :4], model(x2)[:, :4])


def test_kv_cache_update_and_reorder():
    cache = KVCache()
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    cache.update(k, v)
    cache.update(k[:, :, :1], v[:, :, :1])
    assert cache.length == 5
    cache.reorder(torch.tensor([2, 0]))
    assert cache.k.shape == (2, 2, 5, 8)
    torch.testing.assert_close(cache.k[0, :, :4], k[2])
    static = KVCache(static=True)
    static.update(k, v)
    static.update(k[:, :, :1], v[:, :, :1])  # a static cache is replaced, not extended
    assert static.length == 1


def test_run_blocks_passes_caches_per_block():
    blocks = build_blocks(2, dim=DIM, num_heads=HEADS, fused_attn=False).eval()
    caches = [(KVCache(), KVCache(static=True)) for _ in blocks]
    with torch.no_grad():
        run_blocks(blocks, torch.randn(B, 3, DIM), kv_caches=caches, is_causal=True)
    assert [c[0].length for c in caches] == [3, 3]
    assert caches[0][0].k is not caches[1][0].k
