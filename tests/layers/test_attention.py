"""Attention: fused (SDPA) path == reference path for every mask kind and head layout, GQA == repeated
MHA, global / per-module path switch, mask building."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmzoo.layers import Attention, RotaryEmbedding, build_attn_mask, set_fused_attn, use_fused_attn
from mmzoo.layers import attention as attention_mod

DIM, HEADS, B, L, S = 32, 4, 3, 7, 5  # head_dim 8; S = context length
HEAD_LAYOUTS = {"mha": None, "gqa": 2, "mqa": 1}
MASK_KINDS = ["none", "causal", "key_padding", "bool_mask", "float_mask", "causal_padding",
              "bool_mask_causal", "cross_padding"]


def _padding(batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """(B, length) True at padding: a random number of trailing pads, never every key of a row."""
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length  # one row without padding
    lengths[1] = 1  # one row with a single valid key
    return torch.arange(length)[None, :] >= lengths[:, None]


def _inputs(kind: str, seed: int = 0):
    """(x, forward kwargs) for a mask kind; every query row keeps at least one visible key."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, DIM, generator=g)
    if kind == "none":
        return x, {}
    if kind == "causal":
        return x, {"is_causal": True}
    if kind == "key_padding":
        return x, {"key_padding_mask": _padding(B, L, g)}
    if kind == "bool_mask":
        mask = torch.rand(B, 1, L, L, generator=g) > 0.5
        mask[..., 0] = True  # every query sees key 0
        return x, {"attn_mask": mask}
    if kind == "bool_mask_causal":
        mask = torch.rand(L, L, generator=g) > 0.5
        mask[:, 0] = True
        return x, {"attn_mask": mask, "is_causal": True}
    if kind == "float_mask":
        return x, {"attn_mask": torch.randn(B, HEADS, L, L, generator=g) * 2.0}
    if kind == "causal_padding":  # trailing padding: key 0 is always valid and causally visible
        return x, {"is_causal": True, "key_padding_mask": _padding(B, L, g)}
    if kind == "cross_padding":
        ctx = torch.randn(B, S, 24, generator=g)
        return x, {"context": ctx, "key_padding_mask": _padding(B, S, g)}
    raise AssertionError(kind)


def _attention(kind: str, num_kv_heads, qk_norm: bool = False, rope: bool = False, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    cross = kind.startswith("cross")
    attn = Attention(DIM, HEADS, num_kv_heads=num_kv_heads, qk_norm=qk_norm, cross_attn=cross,
                     context_dim=24 if cross else None, rope=RotaryEmbedding(DIM // HEADS) if rope else None)
    if qk_norm:  # non-trivial norm affine so a skipped norm would show
        for norm in (attn.q_norm, attn.k_norm):
            torch.nn.init.normal_(norm.weight, 1.0, 0.3)
            torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    return attn


def _both_paths(attn: Attention, x: torch.Tensor, kw: dict) -> tuple[torch.Tensor, torch.Tensor]:
    attn.fused_attn = True
    fused = attn(x, **kw)
    attn.fused_attn = False
    ref = attn(x, **kw)
    return fused, ref


@pytest.mark.parametrize("layout", list(HEAD_LAYOUTS))
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_fused_matches_reference(kind, layout):
    attn = _attention(kind, HEAD_LAYOUTS[layout]).eval()
    x, kw = _inputs(kind)
    with torch.no_grad():
        fused, ref = _both_paths(attn, x, kw)
    assert fused.shape == (B, L, DIM)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", list(HEAD_LAYOUTS))
@pytest.mark.parametrize("kind", ["none", "causal", "causal_padding", "cross_padding"])
@pytest.mark.parametrize("variant", ["qk_norm", "rope", "qk_norm_rope"])
def test_fused_matches_reference_qk_norm_rope(kind, layout, variant):
    attn = _attention(kind, HEAD_LAYOUTS[layout], qk_norm="qk_norm" in variant, rope="rope" in variant).eval()
    x, kw = _inputs(kind, seed=1)
    with torch.no_grad():
        fused, ref = _both_paths(attn, x, kw)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["none", "causal", "key_padding", "cross_padding"])
def test_fused_matches_reference_train_mode_with_grads(kind):
    """In train mode with dropout 0 both paths agree, gradients too."""
    attn = _attention(kind, 2, qk_norm=True).train()
    assert attn.attn_drop.p == 0.0
    x, kw = _inputs(kind, seed=2)
    grads = []
    for fused in (True, False):
        attn.zero_grad()
        attn.fused_attn = fused
        xi = x.clone().requires_grad_(True)
        out = attn(xi, **kw)
        out.square().sum().backward()
        grads.append((out.detach(), xi.grad, {n: p.grad.clone() for n, p in attn.named_parameters()}))
    (o1, gx1, gp1), (o2, gx2, gp2) = grads
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx1, gx2, atol=1e-5, rtol=1e-5)
    for n in gp1:
        torch.testing.assert_close(gp1[n], gp2[n], atol=1e-5, rtol=1e-5, msg=n)


def test_masked_keys_are_ignored():
    """Changing a padded key (or a causally hidden one) leaves the output unchanged, on both paths."""
    attn = _attention("none", 2).eval()
    x, kw = _inputs("key_padding", seed=3)
    pad = kw["key_padding_mask"]
    x2 = x.clone()
    x2[pad] = torch.randn_like(x2[pad])
    for fused in (True, False):
        attn.fused_attn = fused
        with torch.no_grad():
            a, b = attn(x, **kw), attn(x2, **kw)
        keep = ~pad
        torch.testing.assert_close(a[keep], b[keep], atol=1e-6, rtol=1e-6)
        # causal: changing the last position does not affect earlier queries
        x3 = x.clone()
        x3[:, -1] += 1.0
        with torch.no_grad():
            c, d = attn(x, is_causal=True), attn(x3, is_causal=True)
        torch.testing.assert_close(c[:, :-1], d[:, :-1], atol=1e-6, rtol=1e-6)


def test_reference_matches_manual_formula():
    """The reference path is softmax(q k^T / sqrt(d) + mask) v, per head, then the output projection."""
    attn = _attention("none", None).eval()
    attn.fused_attn = False
    x, kw = _inputs("float_mask", seed=4)
    Dh = DIM // HEADS
    with torch.no_grad():
        q, k, v = attn.qkv(x).split(DIM, dim=-1)
        heads = []
        for h in range(HEADS):
            sl = slice(h * Dh, (h + 1) * Dh)
            scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / Dh ** 0.5 + kw["attn_mask"][:, h]
            heads.append(scores.softmax(-1) @ v[..., sl])
        expected = attn.proj(torch.cat(heads, dim=-1))
        torch.testing.assert_close(attn(x, **kw), expected, atol=1e-5, rtol=1e-5)


def _gqa_to_mha(gqa: Attention) -> Attention:
    """An MHA module whose k/v heads are the GQA ones repeated per query group."""
    H, Hkv, Dh = gqa.num_heads, gqa.num_kv_heads, gqa.head_dim
    rep = H // Hkv
    mha = Attention(DIM, H, cross_attn=gqa.cross_attn, context_dim=gqa.kv.in_features if gqa.cross_attn else None)
    sd = gqa.state_dict()

    def expand(t: torch.Tensor) -> torch.Tensor:  # (Hkv*Dh, ...) -> (H*Dh, ...), heads contiguous
        return t.reshape(Hkv, Dh, *t.shape[1:]).repeat_interleave(rep, dim=0).reshape(H * Dh, *t.shape[1:])

    for p in ("weight", "bias"):
        if gqa.cross_attn:  # kv rows: [k | v]
            k, v = sd[f"kv.{p}"].split(Hkv * Dh, dim=0)
            sd[f"kv.{p}"] = torch.cat([expand(k), expand(v)], dim=0)
        else:  # qkv rows: [q | k | v]
            q, k, v = sd[f"qkv.{p}"].split([H * Dh, Hkv * Dh, Hkv * Dh], dim=0)
            sd[f"qkv.{p}"] = torch.cat([q, expand(k), expand(v)], dim=0)
    mha.load_state_dict(sd)
    return mha


@pytest.mark.parametrize("num_kv_heads", [2, 1])
@pytest.mark.parametrize("kind", ["none", "causal", "key_padding", "cross_padding"])
@pytest.mark.parametrize("fused", [True, False])
def test_gqa_equals_mha_with_repeated_kv_heads(num_kv_heads, kind, fused):
    gqa = _attention(kind, num_kv_heads).eval()
    mha = _gqa_to_mha(gqa).eval()
    assert mha.num_kv_heads == mha.num_heads == HEADS
    gqa.fused_attn = mha.fused_attn = fused
    x, kw = _inputs(kind, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(gqa(x, **kw), mha(x, **kw), atol=1e-5, rtol=1e-5)


def test_gqa_parameter_shapes():
    attn = Attention(DIM, HEADS, num_kv_heads=1)
    assert attn.qkv.weight.shape == (DIM + 2 * (DIM // HEADS), DIM)
    with pytest.raises(ValueError, match="num_kv_heads"):
        Attention(DIM, HEADS, num_kv_heads=3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Attention(30, HEADS)


def test_float_mask_with_causal_raises():
    with pytest.raises(ValueError, match="boolean attn_mask"):
        build_attn_mask(4, 4, is_causal=True, attn_mask=torch.zeros(4, 4))


def test_build_attn_mask_bottom_right_causal():
    """With 3 cached keys, 2 new queries at positions 3 and 4 see keys 0..3 and 0..4."""
    m = build_attn_mask(2, 5, is_causal=True)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    pad = torch.tensor([[False, False, False, True, True]])
    m = build_attn_mask(2, 5, is_causal=True, key_padding_mask=pad)
    assert m.shape == (1, 1, 2, 5)
    assert m[0, 0].tolist() == [[True, True, True, False, False], [True, True, True, False, False]]
    assert build_attn_mask(3, 3) is None


def test_set_fused_attn_toggles_default_but_explicit_choice_wins(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    x = torch.randn(1, 4, DIM)
    default_attn = Attention(DIM, HEADS)  # fused_attn=None: follows the global default
    forced_fused = Attention(DIM, HEADS, fused_attn=True)
    forced_ref = Attention(DIM, HEADS, fused_attn=False)
    before = use_fused_attn()
    try:
        for enable in (False, True):
            set_fused_attn(enable)
            assert use_fused_attn() is enable
            assert default_attn._use_fused() is enable
            assert forced_fused._use_fused() is True
            assert forced_ref._use_fused() is False
            calls.clear()
            default_attn(x)
            assert len(calls) == int(enable)
            calls.clear()
            forced_fused(x)
            forced_ref(x)
            assert len(calls) == 1  # only the module forced to fused called SDPA
    finally:
        set_fused_attn(before)
    assert attention_mod.use_fused_attn() is before


def test_env_var_forces_reference_path():
    """MMZOO_FUSED_ATTN=0 is read at import: a fresh interpreter defaults to the reference path."""
    env = dict(os.environ, MMZOO_FUSED_ATTN="0")
    code = ("from mmzoo.layers import Attention, use_fused_attn; "
            "print(use_fused_attn(), Attention(8, 2)._use_fused())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_bad_input_shape_names_it():
    with pytest.raises(ValueError, match=r"\(B, L, dim\).*\(4, 32\)"):
        Attention(DIM, HEADS)(torch.randn(4, DIM))
    with pytest.raises(ValueError, match="context"):
        Attention(DIM, HEADS, cross_attn=True)(torch.randn(1, 4, DIM))
