"""Point-BERT and its dVAE through the registry: shapes, gradients, attention paths, determinism,
masking, checkpoint round trip and head replacement."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmzoo
from mmzoo.models.point_bert import PointBERT, PointDVAE, block_mask
from mmzoo.convert import MMZOO_KEY, model_metadata

def save_model_checkpoint(model, path):
    """An mmzoo checkpoint of ``model`` alone, as a run's ``last.ckpt`` holds it (``model.`` keys + metadata)."""
    torch.save({MMZOO_KEY: model_metadata(model), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               path)
    return path


SMALL_BERT = dict(num_groups=8, group_size=8, depth=2)
SMALL_DVAE = dict(num_groups=8, group_size=8, num_tokens=32)


def test_presets_registered_with_paper_sizes():
    assert {"point_bert", "point_bert_tiny", "point_bert_dvae", "point_bert_dvae_tiny"} <= set(mmzoo.list_models("point_bert*"))
    bert, dvae = mmzoo.get_model_config("point_bert"), mmzoo.get_model_config("point_bert_dvae")
    assert (bert.dim, bert.depth, bert.num_heads, bert.num_groups, bert.group_size) == (384, 12, 6, 64, 32)
    assert (dvae.num_tokens, dvae.tokens_dim, dvae.num_groups, dvae.group_size) == (8192, 256, 64, 32)


def test_dvae_shapes_and_gradients():
    torch.manual_seed(0)
    model = mmzoo.create_model("point_bert_dvae_tiny", **SMALL_DVAE)
    assert isinstance(model, PointDVAE)
    out = model(torch.randn(3, 128, 3), temperature=0.5)
    assert out.neighborhood.shape == (3, 8, 8, 3) and out.centers.shape == (3, 8, 3)
    assert out.logits.shape == (3, 8, 32) and out.coarse.shape == (3, 8, 2, 3) and out.fine.shape == (3, 8, 8, 3)
    loss = sum(t.square().mean() for t in (out.logits, out.coarse, out.fine))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    x = torch.randn(2, 128, 3)
    a, b = model(x), model(x)
    assert torch.equal(a.fine, b.fine)  # eval decodes the arg-max tokens: deterministic
    ids = model.tokenize(a.neighborhood, a.centers)
    assert ids.shape == (2, 8) and torch.equal(ids, a.logits.argmax(-1))


def test_point_bert_shapes_gradients_and_determinism():
    torch.manual_seed(0)
    model = mmzoo.create_model("point_bert_tiny", num_classes=5, **SMALL_BERT)
    x = torch.randn(4, 128, 3)
    logits = model(x)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    nb, centers = model.group(x)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, :3] = True
    (logits.square().mean() + model.forward_groups(nb, centers, mask).square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    model.eval()
    assert torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model(torch.randn(2, 3, 128))


def test_mask_token_replaces_masked_patches_only():
    model = mmzoo.create_model("point_bert_tiny", num_classes=0, drop_path_rate=0.0, **SMALL_BERT).eval()
    x = torch.randn(2, 128, 3)
    nb, centers = model.group(x)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 2] = True
    changed = nb.clone()
    changed[:, 2] += 0.3  # the content of a masked patch must not matter
    assert torch.allclose(model.forward_groups(nb, centers, mask), model.forward_groups(changed, centers, mask), atol=1e-6)
    assert not torch.allclose(model.forward_groups(nb, centers), model.forward_groups(changed, centers), atol=1e-4)


def test_fused_and_reference_attention_agree():
    torch.manual_seed(0)
    fused = mmzoo.create_model("point_bert_tiny", num_classes=3, fused_attn=True, **SMALL_BERT).eval()
    ref = mmzoo.create_model("point_bert_tiny", num_classes=3, fused_attn=False, **SMALL_BERT).eval()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 128, 3)
    torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-4)


def test_block_mask_is_contiguous_with_requested_ratio():
    torch.manual_seed(0)
    centers = torch.rand(3, 20, 3)
    ratio = torch.tensor([0.25, 0.35, 0.45])
    mask = block_mask(centers, ratio)
    assert mask.sum(1).tolist() == [5, 7, 9]
    for b in range(3):
        inside, outside = centers[b, mask[b]], centers[b, ~mask[b]]
        # contiguous: some masked centre (the seed) is closer to every masked centre than to any visible one
        d_in = torch.cdist(inside, inside).max(1).values
        d_out = torch.cdist(inside, outside).min(1).values
        assert (d_in <= d_out).any()


def test_checkpoint_round_trip_and_new_head(tmp_path):
    torch.manual_seed(0)
    model = mmzoo.create_model("point_bert_tiny", num_classes=0, **SMALL_BERT).eval()
    path = save_model_checkpoint(model, tmp_path / "pre.ckpt")
    raw = torch.load(path, weights_only=True)
    assert raw["mmzoo"]["arch"] == "point_bert"
    again = mmzoo.create_model(pretrained=path).eval()
    x = torch.randn(2, 128, 3)
    assert torch.equal(model(x), again(x))
    # fine-tuning: same preset with a classifier; the encoder comes from the file, the head is new
    tuned = mmzoo.create_model("point_bert_tiny", pretrained=path, num_classes=7)
    assert isinstance(tuned, PointBERT) and tuned.head[-1].out_features == 7
    for k, v in model.state_dict().items():
        assert torch.equal(tuned.state_dict()[k], v), k


def test_decoder_dgcnn_norm_switch_and_old_checkpoints(tmp_path):
    """The released dVAE keeps GroupNorm in both DGCNNs; the tiny preset drops it on the decoder side only.
    A checkpoint whose config predates the switch rebuilds with the norm (its weights load unchanged)."""
    norms = lambda m: sum(isinstance(x, torch.nn.GroupNorm) for x in m.modules())  # noqa: E731
    full = mmzoo.create_model("point_bert_dvae")
    assert norms(full.dgcnn_1) == norms(full.dgcnn_2) == 5
    tiny = mmzoo.create_model("point_bert_dvae_tiny")
    assert norms(tiny.dgcnn_1) == 5 and norms(tiny.dgcnn_2) == 0
    # an older tiny checkpoint: GroupNorm on both sides, config without the field
    old = mmzoo.create_model("point_bert_dvae_tiny", decoder_dgcnn_norm=True)
    path = save_model_checkpoint(old, tmp_path / "old.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["mmzoo"]["config"].pop("decoder_dgcnn_norm")
    torch.save(ckpt, path)
    loaded = mmzoo.create_model(pretrained=path)
    assert norms(loaded.dgcnn_2) == 5
    for k, v in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_dvae_kl_is_uniform_against_each_clouds_mean_token_distribution():
    from mmzoo.tasks.point_bert import dvae_losses, token_usage_kl

    torch.manual_seed(0)
    dvae = mmzoo.create_model("point_bert_dvae_tiny").train()
    points = torch.randn(3, 512, 3)
    torch.manual_seed(1)
    out = dvae_losses(dvae, points, temperature=1.0, kl_weight=0.1)
    torch.manual_seed(1)
    logits = dvae(points, 1.0).logits  # (B, G, T)
    # Point-BERT's term: F.kl_div(log mean_g softmax, log uniform, batchmean, log_target) = KL(U || q̄)
    log_qy = torch.log(F.softmax(logits, dim=-1).mean(dim=1))
    log_uniform = torch.full_like(log_qy, -math.log(logits.shape[-1]))
    ref = F.kl_div(log_qy, log_uniform, reduction="batchmean", log_target=True)
    assert torch.allclose(out["kl"], ref, rtol=1e-5, atol=1e-6)
    # confident patches spread over the codebook cost far less than confident patches all on one token;
    # a per-patch KL(q || U) would rate the two the same
    T, G = 64, 16
    spread, same = torch.full((2, G, T), -8.0), torch.full((2, G, T), -8.0)
    spread[:, torch.arange(G), torch.arange(G) * (T // G)] = 8.0
    same[:, :, 0] = 8.0
    assert token_usage_kl(spread) < token_usage_kl(same) - 2.0
    assert token_usage_kl(torch.zeros(2, G, T)).abs() < 1e-6  # uniform q: no cost


def test_dvae_gumbel_noise_scale():
    from mmzoo.tasks.point_bert import gumbel_noise_scale

    torch.manual_seed(0)
    dvae = mmzoo.create_model("point_bert_dvae_tiny").train()
    points = torch.randn(2, 512, 3)
    nb, ct = dvae.group(points)
    logits = dvae.encode(nb, ct)
    # noise 1: exactly torch's Gumbel-softmax sample (same draws)
    torch.manual_seed(3)
    full = dvae(points, 0.5, 1.0).fine
    torch.manual_seed(3)  # the same RNG use as the forward: grouping, then the sample
    nb3, ct3 = dvae.group(points)
    ref = dvae.decode(F.gumbel_softmax(dvae.encode(nb3, ct3), tau=0.5, dim=-1), ct3)[1]
    assert torch.allclose(full, ref, atol=1e-6)
    # noise 0: the plain softmax at that temperature, whatever the seed
    zero = dvae(points, 0.5, 0.0).fine
    assert torch.allclose(zero, dvae.decode((logits / 0.5).softmax(-1), ct)[1], atol=1e-6)
    assert [gumbel_noise_scale(0.5, p) for p in (0.0, 0.25, 0.5, 1.0)] == [0.0, 0.5, 1.0, 1.0]
    assert gumbel_noise_scale(0.0, 0.0) == 1.0  # Point-BERT: full noise from the first step


def test_dvae_task_rejects_noise_ramp_outside_unit_interval():
    from mmzoo.tasks.point_bert import PointDVAETask

    with pytest.raises(ValueError, match="noise_ramp"):
        PointDVAETask(mmzoo.create_model("point_bert_dvae_tiny"), noise_ramp=1.5)
