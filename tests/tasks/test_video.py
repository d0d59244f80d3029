"""VideoClassificationTask's image stage: a TimeSformer built from nothing starts from an image ViT trained on
the shapes images; one built from weights does not."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.tasks.video import image_vit_for, pretrain_image_vit
from mmzoo.training import train

TINY = ["model=timesformer", "data.num_train=12", "data.num_val=6", "data.num_test=6", "data.batch_size=6",
        "data.image_size=16", "+model.patch_size=8", "data.num_frames=4", "task.image_pretrain_steps=3",
        "task.image_pretrain_num_train=16", "task.image_pretrain_batch_size=8", "trainer.max_epochs=1",
        "test=false"]


def test_image_stage_trains_a_vit_and_builds_the_video_model_from_it(train_cfg, caplog):
    cfg = train_cfg(*TINY, "trainer.max_epochs=0")  # setup (the stage) runs, no video step: last.ckpt = the init
    with caplog.at_level("WARNING", logger="mmzoo"):
        train(cfg)
    assert "training an image ViT" in caplog.text
    run = Path(cfg.paths.output_dir)
    vit = mmzoo.create_model(pretrained=run / "image_pretrain" / "last.ckpt")
    assert vit.arch_name == "vit" and vit.num_classes == 8  # the shapes classes
    video = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    img = vit.state_dict()
    for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"):
        assert torch.equal(video[f"model.{k}"], img[k]), k
    assert torch.equal(video["model.blocks.0.temporal_attn.qkv.weight"], img["blocks.0.attn.qkv.weight"])
    assert torch.count_nonzero(video["model.blocks.0.temporal_fc.weight"]) == 0
    assert video["model.head.weight"].shape[0] == 6  # the video classes, not the image ones


def test_image_stage_is_reused_on_resume_and_skipped_for_built_models(train_cfg, caplog):
    cfg = train_cfg(*TINY, run="first")
    train(cfg)
    vit_path = Path(cfg.paths.output_dir) / "image_pretrain" / "last.ckpt"
    before = vit_path.stat().st_mtime_ns
    # the same run directory: the image model is read back, not trained again
    again = train_cfg(*TINY, run="first")
    with caplog.at_level("INFO", logger="mmzoo"):
        train(again)
    assert "reusing the image ViT" in caplog.text and vit_path.stat().st_mtime_ns == before
    caplog.clear()
    # a model built from image weights needs no stage
    other = train_cfg(*TINY, f"model.pretrained_image={vit_path}", run="second")
    with caplog.at_level("INFO", logger="mmzoo"):
        train(other)
    assert "no image stage" in caplog.text
    assert not (Path(other.paths.output_dir) / "image_pretrain").exists()


def test_image_vit_matches_the_video_model_shape():
    video = mmzoo.create_model("timesformer_tiny_axial")
    vit = image_vit_for(video, 8)
    own = video.state_dict()
    for k, v in vit.state_dict().items():
        if not k.startswith("head."):
            assert own[k].shape == v.shape, k


def test_image_stage_refuses_non_rgb_clips():
    with pytest.raises(ValueError, match="RGB"):
        pretrain_image_vit(mmzoo.create_model("timesformer_tiny", in_chans=1), 1, 1e-3, 2, 2, 0, torch.device("cpu"))
