"""Prune -> retrain -> prune through train.py (callbacks=pruning): masks held through the optimizer steps,
plain checkpoints that every reader loads, and a resumed run that keeps the masks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmzoo.models import create_model
from mmzoo.tasks.pruning import IterativePruning
from mmzoo.training import train

TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=32", "debug=limit",
        "callbacks=pruning", "callbacks.progress_bar=null", "callbacks.sample_predictions=null"]


def _fc1_sparsity(state: dict, prefix: str = "model.") -> float:
    w = state[f"{prefix}blocks.0.mlp.fc1.weight"]
    return (w == 0).float().mean().item()


def test_pruning_schedule_through_training_and_resume(train_cfg):
    cfg = train_cfg(*TINY, "trainer.max_epochs=3", "callbacks.pruning.epochs=[0,1]",
                    "callbacks.pruning.sparsities=[0.5,0.75]", "callbacks.model_checkpoint.every_n_epochs=1",
                    "callbacks.model_checkpoint.save_top_k=-1", run="prune")
    train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    epoch0 = torch.load(sorted(ckpts.glob("epoch000-*.ckpt"))[0], weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    # plain keys, masks on the side; 50% after epoch 0, 75% held through epoch 2's steps after the last round
    assert not any(".parametrizations." in k for k in last["state_dict"])
    assert _fc1_sparsity(epoch0["state_dict"]) == pytest.approx(0.5, abs=0.01)
    assert _fc1_sparsity(last["state_dict"]) == pytest.approx(0.75, abs=0.01)
    mask = last["pruning_masks"]["model.blocks.0.mlp.fc1.weight"]
    assert torch.equal(last["state_dict"]["model.blocks.0.mlp.fc1.weight"] != 0, mask)
    assert (epoch0["pruning_masks"]["model.blocks.0.mlp.fc1.weight"] | ~mask).all()  # masks only grow
    model = create_model(pretrained=str(ckpts / "last.ckpt"))  # any reader loads it
    assert (model.blocks[0].mlp.fc1.weight == 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    # resume from epoch 1's checkpoint for one more epoch: the masks are held again
    resumed = train_cfg(*TINY, "trainer.max_epochs=3", "callbacks.pruning.epochs=[0,1]",
                        "callbacks.pruning.sparsities=[0.5,0.75]",
                        f"ckpt_path={sorted(ckpts.glob('epoch001-*.ckpt'))[0]}", run="resume")
    train(resumed)
    state = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    w = state["state_dict"]["model.blocks.0.mlp.fc1.weight"]
    assert not w[~mask].any() and (w[mask] != 0).all()


def test_bad_schedule():
    with pytest.raises(ValueError, match="equal length"):
        IterativePruning([1, 2], [0.5])
    with pytest.raises(ValueError, match="increase"):
        IterativePruning([2, 1], [0.5, 0.7])
