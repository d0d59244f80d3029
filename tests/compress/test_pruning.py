"""Pruning: persistent masks through optimizer steps, exact structured choices (lowest-norm rows, heads),
iterative schedules, and the sparse export's exact round trip and real size."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmzoo.compress import (apply_masks, export_sparse, get_masks, iterative_prune, load_sparse, magnitude_masks,
                            prune, remove_masks, weight_sparsity)
from mmzoo.compress.pruning import pack_bits, unpack_bits
from mmzoo.layers import Attention
from mmzoo.models import create_model


def _vit():
    torch.manual_seed(0)
    return create_model("vit_nano_patch4_32")


@pytest.mark.parametrize("granularity", ["fine", "row", "head"])
def test_masks_persist_through_optimizer_steps(granularity):
    model = _vit()
    prune(model, 0.5, granularity)
    masks = get_masks(model)
    assert masks
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for name, mask in masks.items():
        mod_name, _, pname = name.rpartition(".")
        w = getattr(model.get_submodule(mod_name), pname)
        assert (w[~mask] == 0).all(), name
        if pname == "weight":  # (biases start at 0, and a key bias gets no gradient at all)
            assert (w[mask] != 0).float().mean() > 0.99, name
    # the kept weights did train
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(".parametrizations.weight.original" in n for n in changed)


def test_fine_pruning_exact_count_and_global_threshold():
    model = _vit()
    w = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"}
    masks = magnitude_masks(model, 0.6, "fine", "global")
    allw = torch.cat([v.abs().flatten() for v in w.values()])
    k = int(0.6 * allw.numel())
    threshold = allw.sort().values[k - 1]
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == k
    for n, m in masks.items():  # every removed weight is at or below the k-th smallest |w|, every kept one at or above
        v = w[n.removesuffix(".weight")].abs()
        assert (v[~m] <= threshold).all() and (v[m] >= threshold).all()
    assert "head.weight" not in masks


def test_row_pruning_removes_exactly_the_lowest_norm_rows_and_follows_mlp_channels():
    model = _vit()
    fc1 = model.blocks[0].mlp.fc1
    norms = fc1.weight.detach().norm(dim=1)
    n = int(0.25 * fc1.out_features)
    expected = set(norms.argsort()[:n].tolist())
    x = torch.randn(2, 3, 32, 32)
    masks = magnitude_masks(model, 0.25, "row")
    removed = set((~masks["blocks.0.mlp.fc1.weight"]).all(1).nonzero().flatten().tolist())
    assert removed == expected
    assert (~masks["blocks.0.mlp.fc1.bias"]).nonzero().flatten().tolist() == sorted(expected)
    # fc2 loses the same hidden units as input columns (and its own lowest-norm rows)
    fc2_cols_removed = set((~masks["blocks.0.mlp.fc2.weight"]).all(0).nonzero().flatten().tolist())
    assert fc2_cols_removed == expected
    # masking fc2's columns on top of fc1's rows changes nothing (GELU(0) = 0)
    only_rows = {k: v for k, v in masks.items() if k != "blocks.0.mlp.fc2.weight"}
    a, b = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    apply_masks(a, only_rows)
    cols_kept = ~(~masks["blocks.0.mlp.fc2.weight"]).all(0)  # fc2's column mask alone, without its row mask
    apply_masks(b, {**only_rows, "blocks.0.mlp.fc2.weight": cols_kept[None].expand_as(model.blocks[0].mlp.fc2.weight)})
    torch.testing.assert_close(a(x), b(x))


def test_head_pruning_removes_the_lowest_norm_head_exactly():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4).eval()
    with torch.no_grad():
        attn.proj.weight.view(16, 4, 4)[:, 2] *= 0.01
        attn.qkv.weight.view(3, 4, 4, 16)[:, 2] *= 0.01
    # reference scores: L2 norm of each head's q, k, v rows and proj columns
    wq = attn.qkv.weight.detach().view(3, 4, 4, 16)
    score = (wq.pow(2).sum(dim=(0, 2, 3)) + attn.proj.weight.detach().view(16, 4, 4).pow(2).sum(dim=(0, 2))).sqrt()
    assert score.argmin().item() == 2
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v)
    o[:, 2] = 0
    ref = attn.proj(o.transpose(1, 2).reshape(2, 5, 16))
    prune(attn, 0.25, "head")
    torch.testing.assert_close(attn(x), ref)
    assert (attn.qkv.weight.view(3, 4, 4, 16)[:, 2] == 0).all() and (attn.qkv.bias.view(3, 4, 4)[:, 2] == 0).all()
    assert (attn.qkv.weight.view(3, 4, 4, 16)[:, [0, 1, 3]] != 0).all()


def test_iterative_schedule_masks_only_grow():
    model = _vit()
    seen = []

    def retrain(m, s):
        seen.append((s, {k: v.clone() for k, v in get_masks(m).items()}))
        with torch.no_grad():  # "training" moves every kept weight
            for n, p in m.named_parameters():
                p.add_(0.01)

    rounds = iterative_prune(model, [0.3, 0.6, 0.8], retrain, "fine", evaluate=lambda m: weight_sparsity(m))
    assert [r["target"] for r in rounds] == [0.3, 0.6, 0.8]
    assert [round(r["weight_sparsity"], 2) for r in rounds] == [0.3, 0.6, 0.8]
    for (_, prev), (_, nxt) in zip(seen, seen[1:]):
        for k in prev:
            assert not (nxt[k] & ~prev[k]).any()  # a pruned weight never comes back
    with pytest.raises(ValueError, match="increasing"):
        iterative_prune(model, [0.5, 0.3], retrain)


def test_bits_pack_round_trip():
    b = torch.rand(37) > 0.5
    p = pack_bits(b)
    assert p.dtype == torch.uint8 and p.numel() == 5
    assert torch.equal(unpack_bits(p, 37), b)
    assert pack_bits(torch.tensor([True, False, False, True]))[0].item() == 0b1001


@pytest.mark.parametrize("granularity,sparsity,max_ratio", [("fine", 0.9, 0.55), ("row", 0.5, 0.8), ("head", 0.5, 0.9)])
def test_sparse_export_round_trip_and_real_size(tmp_path, granularity, sparsity, max_ratio):
    model = _vit()
    dense_bytes = export_sparse(model, tmp_path / "dense.safetensors")
    prune(model, sparsity, granularity)
    size = export_sparse(model, tmp_path / "sparse.safetensors")
    assert size == (tmp_path / "sparse.safetensors").stat().st_size
    assert size < max_ratio * dense_bytes
    state = load_sparse(tmp_path / "sparse.safetensors")
    baked = remove_masks(copy.deepcopy(model)).state_dict()
    assert state.keys() == baked.keys()
    for k, v in baked.items():
        assert torch.equal(state[k], v), k
    fresh = create_model("vit_nano_patch4_32")
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_bad_arguments():
    model = _vit()
    with pytest.raises(ValueError, match="granularity"):
        prune(model, 0.5, "block")
    with pytest.raises(ValueError, match="global"):
        prune(model, 0.5, "row", scope="global")
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"blocks.0.mlp.fc1.weight": torch.ones(3, dtype=torch.bool)})
