"""CoCa: shapes, gradients, CLS padding invariance, KV-cached generation == recompute, decoding strategies,
the poolers of Algorithm 1 and the CLS position against written-out computations, old checkpoints."""
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


# -- attentional poolers (Algorithm 1) and the CLS position, against computations written out --------
def _pool_by_hand(pooler, context):
    """An attentional pooler written out: learned queries attend to the normed context, per head."""
    attn = pooler.attn
    H, Dh = attn.num_heads, attn.head_dim
    ctx = pooler.norm_context(context)  # (B, S, C)
    q = (pooler.queries[0] @ attn.q.weight.t() + attn.q.bias).view(-1, H, Dh)  # (Q, H, Dh)
    kv = (ctx @ attn.kv.weight.t() + attn.kv.bias).view(ctx.shape[0], ctx.shape[1], 2, H, Dh)
    k, v = kv[:, :, 0], kv[:, :, 1]  # (B, S, H, Dh)
    weights = torch.einsum("qhd,bshd->bhqs", q, k).mul(Dh ** -0.5).softmax(-1)
    out = torch.einsum("bhqs,bshd->bqhd", weights, v).flatten(2)  # (B, Q, D)
    return pooler.norm(out @ attn.proj.weight.t() + attn.proj.bias)


@pytest.mark.parametrize("pooler", ["parallel", "cascade"])
def test_poolers_follow_their_data_flow(pooler):
    torch.manual_seed(0)
    model = mmzoo.create_model("coca_nano", pooler=pooler).double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        img_tokens = model.visual.forward_features(images)  # the image encoder's tokens
        cap = _pool_by_hand(model.caption_pooler, img_tokens)  # cap_feature = cap_attn_pool(img_feature)
        # parallel (Algorithm 1): con_feature = con_attn_pool(img_feature); cascade: it reads cap_feature
        con = _pool_by_hand(model.contrastive_pooler, img_tokens if pooler == "parallel" else cap)[:, 0]
        caption_q, image_emb = model._image_queries(images)
        torch.testing.assert_close(caption_q, cap, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(image_emb, model.visual_proj(con), rtol=1e-10, atol=1e-10)
        model.caption_pooler.queries.add_(1.0)  # the contrastive embedding depends on it only in the cascade
        moved = not torch.allclose(model.encode_image(images), image_emb)
    assert moved == (pooler == "cascade")


def test_cls_token_gets_its_position_like_every_other_token():
    torch.manual_seed(0)
    model = mmzoo.create_model("coca_nano").double().eval()
    L = model.cfg.text.context_length
    assert model.pos_embed.shape[1] == L + 1  # room for a CLS after a full-length text
    with torch.no_grad():
        model.pos_embed.normal_()  # positions that matter
        tokens = torch.full((3, L), PAD)
        lengths = [4, 9, L]  # EOT at 3, 8 and at the last slot
        for row, n in enumerate(lengths):
            tokens[row, :n] = torch.randint(1, 1000, (n,), generator=torch.Generator().manual_seed(row))
            tokens[row, 0], tokens[row, n - 1] = SOT, EOT
        got = model.encode_text(tokens)
        for row, n in enumerate(lengths):  # the text and its CLS alone, positions 0..n, one causal pass
            x = model.token_embed(tokens[row:row + 1, :n])
            x = torch.cat([x, model.cls_token], 1) + model.pos_embed[:, :n + 1]
            for blk in model.unimodal_blocks:
                x = blk(x, is_causal=True)
            ref = model.text_proj(model.text_norm(x[:, -1]))
            torch.testing.assert_close(got[row:row + 1], ref, rtol=1e-10, atol=1e-10)


def test_checkpoint_without_pooler_fields_loads_with_the_old_behaviour(tmp_path):
    from mmzoo.convert import MMZOO_KEY, model_metadata

    torch.manual_seed(0)
    old = mmzoo.create_model("coca_nano", pooler="cascade", cls_pos_embed=False).eval()
    meta = model_metadata(old)
    del meta["config"]["pooler"], meta["config"]["cls_pos_embed"]  # written before the fields existed
    path = tmp_path / "old.ckpt"
    torch.save({MMZOO_KEY: meta, "state_dict": {f"model.{k}": v for k, v in old.state_dict().items()}}, path)
    loaded = mmzoo.create_model(pretrained=path).eval()
    assert (loaded.cfg.pooler, loaded.cfg.cls_pos_embed) == ("cascade", False)
    images, tokens = torch.randn(2, 3, 32, 32), _tokens()
    with torch.no_grad():
        a, b = old(images, tokens), loaded(images, tokens)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert mmzoo.create_model("coca_nano").cfg.pooler == "parallel"  # new models: Algorithm 1
    with pytest.raises(ValueError, match="pooler must be one of"):
        mmzoo.create_model("coca_nano", pooler="serial")
