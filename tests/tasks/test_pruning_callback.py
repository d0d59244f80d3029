"""Prune -> retrain -> prune through train.py (callbacks=pruning): masks held through the optimizer steps,
plain checkpoints that every reader loads, and a resumed run that keeps the masks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmzoo.compress import get_masks, prune
from mmzoo.models import create_model
from mmzoo.tasks.pruning import IterativePruning
from mmzoo.training import train

TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=32", "debug=limit",
        "callbacks=pruning", "callbacks.progress_bar=null", "callbacks.sample_predictions=null"]


def _fc1_sparsity(state: dict, prefix: str = "model.") -> float:
    w = state[f"{prefix}blocks.0.mlp.fc1.weight"]
    return (w == 0).float().mean().item()


class _Task(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = create_model("vit_nano_patch4_32")
        self.device = torch.device("cpu")


class _Trainer:
    def print(self, *args) -> None:
        pass


def test_checkpoint_hooks_store_plain_weights_and_restore_masks():
    cb = IterativePruning([0], [0.6], granularity="row")
    task = _Task()
    prune(task.model, 0.6, "row")
    masks = get_masks(task)
    ckpt = {"state_dict": task.state_dict()}
    cb.on_save_checkpoint(_Trainer(), task, ckpt)
    assert not any(".parametrizations." in k for k in ckpt["state_dict"])
    assert ckpt["pruning_masks"].keys() == masks.keys()
    w = ckpt["state_dict"]["model.blocks.0.mlp.fc1.weight"]
    assert torch.equal(w != 0, masks["model.blocks.0.mlp.fc1.weight"])
    fresh = _Task()  # a resumed run: plain weights load first, then the masks are registered again
    fresh.load_state_dict(ckpt["state_dict"])
    cb.on_load_checkpoint(_Trainer(), fresh, ckpt)
    assert all(torch.equal(get_masks(fresh)[k], m) for k, m in masks.items())
    cb.on_fit_end(_Trainer(), fresh)  # baked in at the end of fit, still saved with the next checkpoint
    assert not get_masks(fresh) and torch.equal(fresh.model.blocks[0].mlp.fc1.weight, w)
    later = {"state_dict": fresh.state_dict()}
    cb.on_save_checkpoint(_Trainer(), fresh, later)
    assert later["pruning_masks"].keys() == masks.keys()


@pytest.mark.slow  # two short train.py runs (~30 s on idle cores, minutes on a loaded machine)
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
