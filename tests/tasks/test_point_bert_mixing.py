"""Point patch mixing inside Point-BERT pre-training: the mixing contrast trains the online encoder and
never the momentum encoder, and the paper's recipe (masked point modeling + MoCo + mixing) trains from its
Hydra config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmzoo.models import create_model
from mmzoo.tasks import PointBERTPretrainTask
from mmzoo.tasks.point_bert import mpm_losses
from mmzoo.training import train

SMALL = ["data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=8", "data.num_points=128",
         "+model.num_groups=8", "+model.group_size=8", "+model.depth=1"]
SMALL_DVAE = ["model=point_bert_dvae", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=8",
              "data.num_points=128", "+model.num_groups=8", "+model.group_size=8", "+model.num_tokens=32"]


def _task(**kw) -> PointBERTPretrainTask:
    import tempfile

    from mmzoo.convert import MMZOO_KEY, model_metadata

    torch.manual_seed(0)
    model = create_model("point_bert_tiny", num_groups=8, group_size=8, depth=1, num_classes=0)
    dvae = create_model("point_bert_dvae_tiny", num_groups=8, group_size=8)
    with tempfile.TemporaryDirectory() as d:  # an mmzoo checkpoint of an untrained tokenizer
        path = Path(d) / "dvae.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in dvae.state_dict().items()},
                    MMZOO_KEY: model_metadata(dvae)}, path)
        return PointBERTPretrainTask(model, dvae_checkpoint=str(path), moco_queue=16, **kw)


def test_mixing_gradient_reaches_the_online_encoder_only():
    task = _task(mix_weight=1.0, moco_momentum=0.5)
    assert task.hparams.moco_weight == 0 and hasattr(task, "key_model")  # mixing alone builds the momentum encoder
    # let gradients reach the key encoder if anything used its output with autograd on
    task.key_model.requires_grad_(True), task.key_proj.requires_grad_(True)
    points = torch.randn(4, 128, 3)
    out = mpm_losses(task.model, task.lm_head, task.dvae, points, task.hparams.mask_ratio)
    key_before = [p.detach().clone() for p in task.key_model.parameters()]
    keys = task.momentum_keys(points)
    assert not keys.requires_grad
    mix = task.mix_losses(out, keys, task.queue.clone())
    assert torch.isfinite(mix["contrast"]) and torch.isfinite(mix["mpm"])
    mix["contrast"].backward()
    assert all(p.grad is None for p in [*task.key_model.parameters(), *task.key_proj.parameters()])
    grads = {n: p.grad for n, p in task.model.named_parameters()}
    for prefix in ("patch_embed.", "reduce_dim.", "blocks.0.", "pos_embed."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.moco_proj.parameters())
    assert task.lm_head.weight.grad is None  # the contrast alone does not touch the token head
    # the key encoder moved only by its momentum update, towards the online encoder
    for k0, k, q in zip(key_before, task.key_model.parameters(), task.model.parameters()):
        torch.testing.assert_close(k.detach(), 0.5 * k0 + 0.5 * q.detach())


def test_bad_mixing_options():
    with pytest.raises(ValueError, match="task.mix_ratio"):
        _task(mix_weight=1.0, mix_ratio=(0.8, 0.2))
    with pytest.raises(ValueError, match="task.mix_weight"):
        _task(mix_weight=-1.0)


def test_paper_recipe_trains(train_cfg):
    dvae_cfg = train_cfg(*SMALL_DVAE, "trainer.max_epochs=1", "test=false", run="dvae")
    train(dvae_cfg)
    dvae_ckpt = Path(dvae_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = train_cfg("experiment=point_bert_paper", *SMALL, f"task.dvae_checkpoint={dvae_ckpt}", "task.moco_queue=64",
                    "trainer.max_steps=2", "trainer.max_epochs=-1", "test=false", run="paper")
    assert cfg.task.moco_weight == 1.0 and cfg.task.mix_weight == 1.0
    m = train(cfg)
    for key in ("train/loss", "train/mpm_loss", "train/moco_loss", "train/mix_loss", "train/mix_mpm_loss"):
        assert torch.isfinite(torch.tensor(m[key])), key
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["queue_ptr"]) == 2 * 8  # each step enqueues its batch's keys once
