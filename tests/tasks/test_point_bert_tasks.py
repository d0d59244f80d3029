"""Point-BERT's three stages train from their Hydra configs (fast_dev_run) and hand checkpoints to each other
(run as one pipeline: tests/test_pipeline.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.training import train

SMALL = ["data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=8", "data.num_points=128",
         "+model.num_groups=8", "+model.group_size=8", "+model.depth=1"]
SMALL_DVAE = ["model=point_bert_dvae", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=8",
              "data.num_points=128", "+model.num_groups=8", "+model.group_size=8", "+model.num_tokens=32"]


def test_dvae_then_pretrain_then_finetune(train_cfg):
    dvae_cfg = train_cfg(*SMALL_DVAE, "trainer.max_epochs=1", "test=false", run="dvae")
    m = train(dvae_cfg)
    assert m["val/chamfer_l1"] > 0 and 0 < m["val/codebook_usage"] <= 1
    dvae_ckpt = Path(dvae_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert isinstance(mmzoo.create_model(pretrained=dvae_ckpt), mmzoo.models.PointDVAE)

    pre_cfg = train_cfg("model=point_bert", *SMALL, f"task.dvae_checkpoint={dvae_ckpt}", "trainer.max_epochs=1",
                        "trainer.max_epochs=1", "test=false", run="pre")
    m = train(pre_cfg)
    assert 0 <= m["val/mpm_acc"] <= 1
    pre_ckpt = Path(pre_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    pretrained = mmzoo.create_model(pretrained=pre_ckpt)
    assert pretrained.num_classes == 0

    ft_cfg = train_cfg("model=point_bert", "task=point_classification", *SMALL, f"model.pretrained={pre_ckpt}",
                       "task.vote_num=2", "debug=fdr", run="ft")
    m = train(ft_cfg)
    assert 0 <= m["test/acc1"] <= 1


def test_pretrain_without_tokenizer_names_the_fix(train_cfg):
    """Masked point modeling never trains a tokenizer itself: alone (pipeline=none) it asks for one."""
    from mmzoo.training import build

    with pytest.raises(Exception, match="task.dvae_checkpoint is null.*model=point_bert_dvae"):  # via instantiate
        build(train_cfg("model=point_bert", *SMALL, "pipeline=none"))


def test_pretrain_with_moco_updates_queue_and_key_encoder(train_cfg, tmp_path):
    """The momentum-encoder term trains (backward through the InfoNCE logits while the queue is refreshed),
    the key encoder moves towards the query encoder, and the queue fills with keys."""
    dvae_cfg = train_cfg(*SMALL_DVAE, "trainer.max_epochs=1", "test=false", run="dvae")
    train(dvae_cfg)
    dvae_ckpt = Path(dvae_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = train_cfg("model=point_bert", *SMALL, f"task.dvae_checkpoint={dvae_ckpt}", "task.moco_weight=1.0",
                    "task.moco_momentum=0.5", "task.moco_queue=16", "trainer.max_steps=3", "trainer.max_epochs=-1",
                    "test=false", run="moco")
    m = train(cfg)
    assert torch.isfinite(torch.tensor(m["train/loss"]))
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    queue = state["queue"]
    assert queue.shape == (16, 256) and int(state["queue_ptr"]) == (3 * 8) % 16
    # rows written by the three steps are unit-norm keys; key and query encoders differ but moved together
    assert torch.allclose(queue.norm(dim=-1), torch.ones(16), atol=1e-5)
    q = state["model.reduce_dim.weight"]
    k = state["key_model.reduce_dim.weight"]
    assert not torch.equal(q, k)
