"""Prefix keys/values in the shared Attention, compression utilities, distillation, and the train.py
integration (peft group, finetune.from, adaptation checkpoint)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmzoo.convert import adapt_input_channels
from mmzoo.layers import Attention, KVCache
from mmzoo.models import create_model
from mmzoo.peft import PrefixKV, load_adaptation
from mmzoo.peft.compress import magnitude_prune, model_bytes, prune_heads, quantize_int8
from mmzoo.tasks.distill import distillation_loss
from mmzoo.training import train


def _attn_with_prefix(fused: bool) -> Attention:
    torch.manual_seed(0)
    a = Attention(16, num_heads=4, num_kv_heads=2, fused_attn=fused).eval()
    a.prefix = PrefixKV(2, 3, 4)
    return a


def test_prefix_matches_manual_attention():
    a = _attn_with_prefix(fused=False)
    x = torch.randn(2, 5, 16)
    kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out = a(x, key_padding_mask=kpm, is_causal=True)
    # manual: keys/values = [prefix; projected], prefix always visible, causal + padding on the rest
    q, k, v = a.qkv(x).split([16, 8, 8], dim=-1)
    q = q.view(2, 5, 4, 4).transpose(1, 2)
    k = torch.cat([a.prefix.k.expand(2, -1, -1, -1), k.view(2, 5, 2, 4).transpose(1, 2)], 2).repeat_interleave(2, 1)
    v = torch.cat([a.prefix.v.expand(2, -1, -1, -1), v.view(2, 5, 2, 4).transpose(1, 2)], 2).repeat_interleave(2, 1)
    mask = torch.ones(5, 8, dtype=torch.bool).tril(diagonal=3) & ~F.pad(kpm, (3, 0))[:, None, None, :]
    w = ((q @ k.transpose(-2, -1)) / 2.0).masked_fill(~mask, float("-inf")).softmax(-1)
    ref = a.proj((w @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(_attn_with_prefix(fused=True)(x, key_padding_mask=kpm, is_causal=True), ref)


@pytest.mark.parametrize("fused", [True, False])
def test_prefix_with_kv_cache_decoding_matches_full_pass(fused):
    a = _attn_with_prefix(fused)
    x = torch.randn(1, 6, 16)
    full = a(x, is_causal=True)
    cache = KVCache()
    steps = [a(x[:, :3], is_causal=True, kv_cache=cache)] + [a(x[:, i:i + 1], is_causal=True, kv_cache=cache)
                                                            for i in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert cache.length == 6  # the prefix is never cached


def test_prefix_with_dense_masks():
    a = _attn_with_prefix(fused=False)
    x = torch.randn(1, 4, 16)
    allow = torch.ones(4, 4, dtype=torch.bool)
    torch.testing.assert_close(a(x, attn_mask=allow), a(x))
    torch.testing.assert_close(a(x, attn_mask=torch.zeros(4, 4)), a(x))


def test_magnitude_pruning_reaches_target():
    torch.manual_seed(0)
    m = create_model("vit_nano_patch4_32")
    head_before = m.head.weight.clone()
    assert magnitude_prune(m, 0.6, "global") == pytest.approx(0.6, abs=1e-3)
    assert torch.equal(m.head.weight, head_before)  # heads are skipped
    m = create_model("vit_nano_patch4_32")
    magnitude_prune(m, 0.3, "layer")
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "head":
            assert (mod.weight == 0).float().mean().item() == pytest.approx(0.3, abs=0.01), name


def test_head_pruning_removes_whole_heads():
    torch.manual_seed(0)
    a = Attention(16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        a.proj.weight.view(16, 4, 4)[:, 1] *= 0.01  # make head 1 the weakest
    pruned = prune_heads(a, 0.25)
    assert pruned == 1
    assert a.proj.weight.view(16, 4, 4)[:, 1].abs().sum() == 0
    # equal to the attention computed with head 1's output removed
    q, k, v = a.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v)
    o[:, 1] = 0
    torch.testing.assert_close(a(x), a.proj(o.transpose(1, 2).reshape(2, 5, 16)))


def test_int8_quantization_error_and_size():
    torch.manual_seed(0)
    m = create_model("vit_nano_patch4_32")
    w = m.blocks[0].mlp.fc1.weight.detach().clone()
    before = model_bytes(m)
    q = quantize_int8(m)
    qw, scale = q["blocks.0.mlp.fc1"]
    assert qw.dtype == torch.int8 and scale.shape == (w.shape[0],)
    err = (m.blocks[0].mlp.fc1.weight - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert model_bytes(m, q) < 0.4 * before


def test_adapt_input_channels():
    w = torch.randn(8, 3, 4, 4)
    x = torch.randn(2, 1, 4, 4)
    # a grey image seen as three equal planes gives the same response
    torch.testing.assert_close(F.conv2d(x, adapt_input_channels(w, 1)), F.conv2d(x.expand(-1, 3, -1, -1), w))
    assert adapt_input_channels(w, 4).shape == (8, 4, 4, 4)


def test_distillation_loss_reference():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    T, alpha = 3.0, 0.6
    p_t = (t / T).softmax(-1)
    kl = (p_t * (p_t.log() - (s / T).log_softmax(-1))).sum(-1).mean()
    ref = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, T, alpha), ref)
    assert distillation_loss(t, t, y, T, 1.0).abs() < 1e-6


TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=128", "debug=fdr"]


def test_train_with_peft_writes_adaptation_checkpoint(train_cfg, caplog):
    cfg = train_cfg(*TINY, "peft=lora", "peft.r=2")
    with caplog.at_level("INFO", logger="mmzoo"):
        train(cfg)
    assert any("trainable" in r.message and "optimizer state" in r.message for r in caplog.records)
    adapter = Path(cfg.paths.output_dir) / "checkpoints" / "adapter.pt"
    raw = torch.load(adapter, weights_only=True)
    assert raw["peft"]["method"] == "lora" and raw["base"]["model_name"] == "vit_nano_patch4_32"
    assert all("lora_" in k or k.startswith("head.") for k in raw["state_dict"])
    model = load_adaptation(adapter)
    assert sum(p.requires_grad for p in model.parameters()) == len(raw["state_dict"])


def test_finetune_from_other_data_and_distill(train_cfg):
    # pretrain on shapes (3 channels, 8 classes), fine-tune on digits (1 channel, 10 classes)
    src = train_cfg("model=vit", "model.name=vit_nano_patch4_32", "data=shapes", "data.num_train=256",
                    "data.num_val=64", "data.num_test=64", "debug=fdr", run="src")
    train(src)
    ckpt = Path(src.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = train_cfg(*TINY, f"finetune.from={ckpt}", "peft=bitfit", run="ft")
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    teacher = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    # the teacher checkpoint holds LoRA-free weights here (BitFit adds no parameters)
    dist = train_cfg(*TINY, "task=distill", f"task.teacher={teacher}", "+model.embed_dim=32",
                     "+task.feature_layers=[[blocks.1,blocks.1]]", run="distill")
    assert train(dist)["global_step"] == 1
    with pytest.raises(FileNotFoundError, match="finetune.from"):
        train(train_cfg(*TINY, "finetune.from=/nonexistent.ckpt", run="bad"))
