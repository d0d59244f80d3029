"""Language-model objectives (masked LM, span corruption), the unigram baseline, and train.py end to end
for model=gpt / bert / t5, the checkpoint and the generate CLI."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.generate import main as generate_main
from mmzoo.tasks.language_modeling import IGNORE, mask_tokens, span_corrupt, span_lengths
from mmzoo.training import train

from ..data.test_text import _write_corpus


def test_mask_tokens_15_percent_80_10_10():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (64, 512), generator=g)
    inputs, labels = mask_tokens(tokens, mask_token_id=5000, num_regular_tokens=1000, generator=g)
    sel = labels != IGNORE
    assert torch.equal(labels[sel], tokens[sel]) and torch.equal(inputs[~sel], tokens[~sel])
    assert sel.float().mean().item() == pytest.approx(0.15, abs=0.01)
    masked = (inputs == 5000)[sel].float().mean().item()
    unchanged = (inputs == tokens)[sel].float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1 + 0.1 / 1000, abs=0.02)  # kept, or replaced by itself
    assert (inputs[sel] < 1000).float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert (sel.sum(1) >= 1).all()


def test_span_corruption_round_trips():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 100, (8, 64), generator=g)
    sentinels = list(range(200, 232))
    inputs, targets = span_corrupt(tokens, sentinels, eot_token_id=999, generator=g)
    noise, spans = span_lengths(64)
    assert (noise, spans) == (10, 3)
    assert inputs.shape == (8, 64 - noise + spans) and targets.shape == (8, noise + spans + 1)
    for inp, tgt, orig in zip(inputs.tolist(), targets.tolist(), tokens.tolist()):
        assert tgt[-1] == 999
        # fill each sentinel of the input with what follows it in the target
        fills, cur = {}, None
        for t in tgt[:-1]:
            if t in sentinels:
                cur = t
                fills[cur] = []
            else:
                fills[cur].append(t)
        assert list(fills) == sentinels[:spans] and all(fills.values())
        rebuilt = [x for t in inp for x in (fills[t] if t in sentinels else [t])]
        assert rebuilt == orig


TEXT_DATA = ["data=text_files", "data.context_length=32", "data.vocab_size=400", "data.num_sentinels=4",
             "data.val_percent=15", "data.test_percent=15", "data.chunk_chars=600", "data.batch_size=4"]


@pytest.mark.parametrize("model", ["gpt", "bert", "t5"])
def test_train_fast_dev_run(train_cfg, tmp_path, model):
    root = _write_corpus(tmp_path / "texts")
    name = {"gpt": "gpt_nano", "bert": "bert_nano", "t5": "t5_nano"}[model]
    metrics = train(train_cfg(f"model={model}", f"model.name={name}", *TEXT_DATA, f"data.root={root}",
                              f"data.cache_dir={tmp_path / 'cache'}", "debug=fdr"))
    assert metrics["global_step"] == 1
    for key in ("test/loss", "test/ppl", "test/unigram_ppl"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/ppl"] > 1


def test_train_moe_with_router_z_loss(train_cfg, tmp_path):
    """The MoE options are reachable from train.py: experts, capacity and the router z-loss."""
    root = _write_corpus(tmp_path / "texts")
    metrics = train(train_cfg("model=gpt", "model.name=gpt_nano", "+model.num_experts=4", "+model.moe_every=2",
                              "+model.moe_z_loss_weight=1e-3", *TEXT_DATA, f"data.root={root}",
                              f"data.cache_dir={tmp_path / 'cache'}", "debug=fdr"))
    assert metrics["global_step"] == 1 and math.isfinite(metrics["test/loss"])
    assert math.isfinite(metrics["train/aux_loss"]) and metrics["train/aux_loss"] > 0


def test_train_checkpoint_rebuild_and_generate_cli(train_cfg, tmp_path, capsys):
    """A few real steps: held-out perplexity falls below the unigram baseline; the checkpoint rebuilds the
    model and carries the tokenizer that `python -m mmzoo.generate` uses."""
    root = _write_corpus(tmp_path / "texts")
    cfg = train_cfg("model=gpt", "model.name=gpt_nano", *TEXT_DATA, f"data.root={root}",
                    f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=60", "trainer.val_check_interval=30",
                    "task.lr=3e-3", "task.num_generated_tokens=0")
    metrics = train(cfg)
    assert metrics["test/ppl"] < 0.5 * metrics["test/unigram_ppl"]
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["mmzoo"]["arch"] == "transformer_lm" and isinstance(ckpt["tokenizer"], str)
    model = mmzoo.create_model(pretrained=last).eval()
    assert model.cfg.vocab_size == ckpt["mmzoo"]["config"]["vocab_size"] and model.cfg.context_length == 32
    capsys.readouterr()  # drop what training printed
    assert generate_main([f"ckpt_path={last}", "prompt=The quick brown", "max_new_tokens=8"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("The quick brown") and len(printed) > len("The quick brown")
