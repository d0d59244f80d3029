"""The image stage of model=timesformer (experiment=timesformer_image, configs/pipeline/timesformer.yaml) trains
an image ViT whose weights map onto the video model (the hand-off itself: tests/test_pipeline.py)."""
from __future__ import annotations

from omegaconf import OmegaConf

import mmzoo


def test_image_stage_vit_has_the_video_model_shape(train_cfg):
    cfg = train_cfg("experiment=timesformer_image", "pipeline=none")
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs.update(img_size=32, in_chans=3, num_classes=8)  # the `auto` values from the shapes images
    for key in ("pretrained", "compile", "grad_checkpointing"):
        kwargs.pop(key)
    vit = mmzoo.create_model(kwargs.pop("name"), **kwargs)
    video = mmzoo.create_model("timesformer_tiny")
    own = video.state_dict()
    for k, v in vit.state_dict().items():
        if not k.startswith("head."):
            assert own[k].shape == v.shape, k
    assert vit.cfg.drop_path_rate == 0.0 and cfg.task.label_smoothing == 0.0
    assert cfg.trainer.max_steps == 3000 and cfg.data.num_train == 16000 and cfg.task.lr == 2e-3
