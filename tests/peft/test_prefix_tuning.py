"""Prefix tuning as published (Li & Liang 2021) and LoRA on tied weights.

* the MLP reparameterisation against its formula written out (float64), and an attention with
  reparameterised prefixes against attention over hand-concatenated keys/values;
* collapsing the MLP into plain tables leaves every output unchanged (float64, tight), on a decoder, an
  encoder-decoder with cross-attention prefixes and a two-tower model, and the adaptation checkpoint
  holds the tables;
* prefixes on T5: the relative position bias gives prefix keys 0, the decoder's cross-attention is
  prefixed, KV-cached decoding equals the full recompute;
* LoRA on GPT's ``lm_head`` (tied to the token embedding): refused with an error naming both, or untied
  first, after which merging leaves the embedding untouched.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmzoo.layers import Attention
from mmzoo.models import create_model
from mmzoo.peft import (LoRALinear, PrefixFromMLP, PrefixKV, PrefixMLP, apply_peft, collapse_prefix, load_adaptation,
                        merge_lora, save_adaptation, unmerge_lora)
from mmzoo.training import train

DT = torch.float64


def _mlp_reference(mlp: PrefixMLP) -> torch.Tensor:
    """Li & Liang's reparameterisation written out: tanh(P' W1^T + b1) W2^T + b2, (P, sum 2 Hkv Dh)."""
    hid = torch.tanh(mlp.embed.weight @ mlp.fc1.weight.T + mlp.fc1.bias)
    return hid @ mlp.fc2.weight.T + mlp.fc2.bias


def _layer_reference(mlp: PrefixMLP, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``index``'s columns [k | v] of the full output, cut into (Hkv, P, Dh) tables."""
    out = _mlp_reference(mlp)
    widths = [h * d for h, d in mlp.kv_shapes]
    start = 2 * sum(widths[:index])
    h, d = mlp.kv_shapes[index]
    k = out[:, start:start + h * d].reshape(-1, h, d).transpose(0, 1)
    v = out[:, start + h * d:start + 2 * h * d].reshape(-1, h, d).transpose(0, 1)
    return k, v


def test_prefix_mlp_matches_formula():
    torch.manual_seed(0)
    mlp = PrefixMLP(5, [(2, 4), (1, 3), (4, 2)], dim=6, hidden=7).to(DT)
    assert mlp().shape == (5, 2 * (8 + 3 + 8))
    torch.testing.assert_close(mlp(), _mlp_reference(mlp), rtol=0, atol=1e-13)
    for i in range(3):
        k, v = mlp.layer(i)
        rk, rv = _layer_reference(mlp, i)
        assert k.shape == rk.shape == (mlp.kv_shapes[i][0], 5, mlp.kv_shapes[i][1])
        torch.testing.assert_close(k, rk, rtol=0, atol=1e-13)
        torch.testing.assert_close(v, rv, rtol=0, atol=1e-13)


@pytest.mark.parametrize("fused", [False, True])
def test_reparameterised_prefix_attention_equals_concatenated_keys_values(fused):
    """GQA self-attention, causal + key padding: softmax(q [Pk; k]^T / sqrt(d) + mask) [Pv; v] by hand,
    the prefixes taken from the MLP formula, every prefix column visible to every query."""
    torch.manual_seed(0)
    a = Attention(16, num_heads=4, num_kv_heads=2, fused_attn=fused).to(DT).eval()
    mlp = PrefixMLP(3, [(2, 4)], dim=16, hidden=8).to(DT)
    a.prefix = PrefixFromMLP(mlp, 0)
    x = torch.randn(2, 5, 16, dtype=DT)
    kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out = a(x, key_padding_mask=kpm, is_causal=True)

    pk, pv = _layer_reference(mlp, 0)  # (2, 3, 4)
    q, k, v = a.qkv(x).split([16, 8, 8], dim=-1)
    q = q.view(2, 5, 4, 4).transpose(1, 2)
    k = torch.cat([pk.expand(2, -1, -1, -1), k.view(2, 5, 2, 4).transpose(1, 2)], 2).repeat_interleave(2, 1)
    v = torch.cat([pv.expand(2, -1, -1, -1), v.view(2, 5, 2, 4).transpose(1, 2)], 2).repeat_interleave(2, 1)
    keep = torch.ones(5, 8, dtype=torch.bool).tril(diagonal=3) & ~F.pad(kpm, (3, 0))[:, None, None, :]
    w = ((q @ k.transpose(-2, -1)) / 2.0).masked_fill(~keep, float("-inf")).softmax(-1)
    ref = a.proj((w @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_cross_attention_prefix_with_bias_reference(fused):
    """Cross-attention with padded context and self-attention with an additive position bias: the
    prefix columns are always visible and get bias 0."""
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, dtype=DT), torch.randn(2, 6, 12, dtype=DT)
    cross = Attention(16, num_heads=2, cross_attn=True, context_dim=12, fused_attn=fused).to(DT).eval()
    cross.prefix = PrefixKV(2, 3, 8).to(DT)
    cpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    out = cross(x, context=ctx, key_padding_mask=cpm)
    q = cross.q(x).view(2, 4, 2, 8).transpose(1, 2)
    k, v = cross.kv(ctx).view(2, 6, 2, 2, 8).permute(2, 0, 3, 1, 4)
    k = torch.cat([cross.prefix.k.expand(2, -1, -1, -1), k], 2)
    v = torch.cat([cross.prefix.v.expand(2, -1, -1, -1), v], 2)
    logits = (q @ k.transpose(-2, -1)) / 8 ** 0.5
    w = logits.masked_fill(F.pad(cpm, (3, 0))[:, None, None, :], float("-inf")).softmax(-1)
    torch.testing.assert_close(out, cross.proj((w @ v).transpose(1, 2).reshape(2, 4, 16)), rtol=0, atol=1e-12)

    selfa = Attention(16, num_heads=2, fused_attn=fused).to(DT).eval()
    selfa.prefix = PrefixKV(2, 3, 8).to(DT)
    bias = torch.randn(1, 2, 4, 4, dtype=DT)
    out = selfa(x, attn_bias=bias, is_causal=True)
    q, k, v = selfa.qkv(x).view(2, 4, 3, 2, 8).permute(2, 0, 3, 1, 4)
    k = torch.cat([selfa.prefix.k.expand(2, -1, -1, -1), k], 2)
    v = torch.cat([selfa.prefix.v.expand(2, -1, -1, -1), v], 2)
    logits = (q @ k.transpose(-2, -1)) / 8 ** 0.5 + F.pad(bias, (3, 0))
    keep = torch.ones(4, 7, dtype=torch.bool).tril(diagonal=3)
    w = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, selfa.proj((w @ v).transpose(1, 2).reshape(2, 4, 16)), rtol=0, atol=1e-12)


def _inputs(name: str, model):
    g = torch.Generator().manual_seed(0)
    if name.startswith("clip"):
        return (torch.randn(2, 3, 32, 32, generator=g, dtype=DT),
                torch.randint(1, model.cfg.text.vocab_size, (2, model.cfg.text.context_length), generator=g))
    tokens = torch.randint(1, model.cfg.vocab_size, (2, 7), generator=g)
    if model.cfg.kind == "encoder_decoder":
        return tokens, torch.randint(1, model.cfg.vocab_size, (2, 5), generator=g)
    return (tokens,)


def _floats(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(t) and t.is_floating_point()]


@pytest.mark.parametrize("name", ["gpt_nano", "t5_nano", "clip_nano"])
def test_collapse_keeps_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).to(DT).eval()
    inputs = _inputs(name, model)
    with torch.no_grad():
        base = _floats(model(*inputs))
    apply_peft(model, {"method": "prefix", "num_tokens": 3, "cross_attn": True, "reparam": True,
                       "reparam_hidden": 16})
    mlp = model.prefix_mlp
    slots = [m for m in model.modules() if isinstance(m, Attention)]
    assert all(isinstance(m.prefix, PrefixFromMLP) for m in slots)  # self- and cross-attentions
    if name == "t5_nano":
        assert any(m.cross_attn for m in slots)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mlp_names = {f"prefix_mlp.{n}" for n, _ in mlp.named_parameters()}
    assert {n for n in trainable if n.startswith("prefix_mlp.")} == mlp_names
    assert not any(".prefix." in n for n in model.state_dict())  # the MLP is saved once, on the model
    with torch.no_grad():
        for p in mlp.parameters():  # a trained-looking MLP
            p.add_(torch.randn_like(p) * 0.3)
        before = _floats(model(*inputs))
        assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, base))  # the prefixes do act
    path = save_adaptation(model, tmp_path / "adapter.pt", {"model_name": name, "overrides": {}})
    collapse_prefix(model)
    assert not hasattr(model, "prefix_mlp") and model.peft_config["reparam"] is False
    assert all(isinstance(m.prefix, PrefixKV) and m.prefix.k.requires_grad for m in slots)
    with torch.no_grad():
        after = _floats(model(*inputs))
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the adaptation checkpoint holds the collapsed tables, which rebuild the same prefixes
    raw = torch.load(path, weights_only=True)
    assert raw["peft"]["reparam"] is False and not any(k.startswith("prefix_mlp.") for k in raw["state_dict"])
    tables = {k: v for k, v in raw["state_dict"].items() if ".prefix." in k}
    assert len(tables) == 2 * len(slots)
    own = dict(model.named_parameters())
    for k, v in tables.items():
        assert torch.equal(v, own[k])


def test_t5_prefix_decoding_with_cache_equals_recompute():
    """T5 with prefixes on encoder, decoder and cross-attention (crashed before: the relative bias had no
    columns for the prefix): greedy decoding with the KV cache equals decoding by full recompute."""
    torch.manual_seed(0)
    model = create_model("t5_nano").eval()
    apply_peft(model, {"method": "prefix", "num_tokens": 4, "cross_attn": True, "reparam": True, "reparam_hidden": 16})
    with torch.no_grad():
        for p in model.prefix_mlp.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    src = torch.randint(1, 500, (2, 9))
    start = torch.zeros(2, 1, dtype=torch.long)
    cached = model.generate(start, 6, encoder_tokens=src, use_cache=True)
    full = model.generate(start, 6, encoder_tokens=src, use_cache=False)
    assert torch.equal(cached, full)
    # the decoder's cross-attention prefix is used: changing it alone changes the logits
    dec = torch.randint(1, 500, (2, 5))
    out = model(src, dec).logits
    with torch.no_grad():
        ca = model.decoder_blocks[0].cross_attn
        plain = PrefixKV(ca.num_kv_heads, 4, ca.head_dim)
        ca.prefix = plain
    assert (model(src, dec).logits - out).abs().max() > 1e-4


def test_train_prefix_reparam_writes_collapsed_adapter(train_cfg):
    cfg = train_cfg("model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=64", "debug=fdr",
                    "peft=prefix", "peft.reparam=true", "peft.num_tokens=2", "peft.reparam_hidden=8", "test=false")
    train(cfg)
    adapter = Path(cfg.paths.output_dir) / "checkpoints" / "adapter.pt"
    raw = torch.load(adapter, weights_only=True)
    assert raw["peft"]["reparam"] is False
    assert any(k.endswith(".prefix.k") for k in raw["state_dict"])
    assert not any(k.startswith("prefix_mlp.") for k in raw["state_dict"])
    restored = load_adaptation(adapter)
    assert not hasattr(restored, "prefix_mlp")
    # the full checkpoint keeps the MLP (resume trains it further)
    full = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("model.prefix_mlp.") for k in full)


# -- LoRA on a tied weight ---------------------------------------------------------------------------
def _lm_head_input(model, tokens):
    seen = {}
    handle = model.lm_head.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))  # returns None
    logits = model(tokens).logits
    handle.remove()
    return seen["x"], logits


def test_lora_on_tied_lm_head_refused_or_untied():
    torch.manual_seed(0)
    model = create_model("gpt_nano").to(DT).eval()
    assert model.lm_head.weight is model.token_embed.weight
    with pytest.raises(ValueError, match=r"lm_head\.weight is tied to \['token_embed\.weight'\].*peft\.untie=true"):
        apply_peft(model, {"method": "lora", "r": 2, "target": ["lm_head"]})
    assert not isinstance(model.lm_head, LoRALinear)  # refused before anything changed

    embed0 = model.token_embed.weight.detach().clone()
    tokens = torch.randint(1, 500, (2, 6))
    apply_peft(model, {"method": "lora", "r": 2, "alpha": 4.0, "target": ["lm_head"], "untie": True})
    head = model.lm_head
    assert isinstance(head, LoRALinear) and head.weight is not model.token_embed.weight
    assert not head.weight.requires_grad and torch.equal(head.weight, embed0)
    with torch.no_grad():
        head.lora_B.normal_(std=0.1)
        x, unmerged = _lm_head_input(model, tokens)
        merge_lora(model)
        _, merged = _lm_head_input(model, tokens)
    # reference: the head's input times (W + (alpha / r) B A)^T, W the original embedding matrix
    ref = x @ (embed0 + 2.0 * head.lora_B @ head.lora_A).T
    torch.testing.assert_close(unmerged, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(merged, ref, rtol=0, atol=1e-12)
    assert torch.equal(model.token_embed.weight, embed0)  # the input embedding is left alone
    unmerge_lora(model)


def test_merge_refuses_a_still_tied_weight():
    """A LoRALinear built on the tied head by hand (what apply_lora did before) cannot be merged: it would
    add the update to the input embedding as well."""
    model = create_model("gpt_nano").eval()
    model.lm_head = LoRALinear(model.lm_head, r=2)
    assert model.lm_head.weight is model.token_embed.weight
    with pytest.raises(ValueError, match=r"merge_lora: lm_head\.weight is tied to \['token_embed\.weight'\]"):
        merge_lora(model)
    assert not model.lm_head.merged
