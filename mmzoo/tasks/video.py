"""Video classification (TimeSformer), starting from an image ViT as the paper does.

Bertasius et al. initialise every TimeSformer from an image ViT; trained from scratch on the built-in
``moving_shapes`` clips, the tiny presets sat at chance for thousands of steps (how long depended on
the seed). :class:`VideoClassificationTask` therefore runs an image stage first when the video model
was built from nothing: an image ViT of the model's shape learns the built-in ``shapes`` images (the
renderer the clips are drawn with) for ``image_pretrain_steps`` steps, saying so, and the video model
is built from it (:func:`mmzoo.convert.timesformer.load_image_weights`: spatial attention copied into
the temporal attention, temporal projections at zero). The image model is saved as
``RUN/image_pretrain/last.ckpt``; a resumed run reuses it, and other runs can start from it with
``model.pretrained_image=PATH`` (which skips the stage, as does any model built from weights).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import build_model
from ..models.timesformer import TimeSformer
from ..models.vit import ViTConfig
from .classification import ClassificationTask
from .stages import fit_plain, run_dir, save_model_checkpoint, stage_device

log = logging.getLogger("mmzoo")


def image_vit_for(model: TimeSformer, num_classes: int) -> nn.Module:
    """An image ViT whose weights map onto ``model`` (same patching, width, depth, heads, MLP, norms)."""
    c = model.cfg
    vit = build_model(ViTConfig(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans,
                                num_classes=num_classes, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
                                mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, norm_layer=c.norm_layer,
                                act_layer=c.act_layer))
    vit.model_name = None
    return vit


def pretrain_image_vit(model: TimeSformer, steps: int, lr: float, batch_size: int, num_train: int, seed: int,
                       device: torch.device) -> nn.Module:
    """Train :func:`image_vit_for` ``model`` on the built-in ``shapes`` images at the clips' frame size."""
    from ..data import ShapesDataModule

    size = model.cfg.img_size
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ValueError(f"the image stage draws square shapes images; the model's frames are {tuple(size)}: "
                             "set task.image_pretrain_steps=0 or pass model.pretrained_image=PATH")
        size = size[0]
    if model.cfg.in_chans != 3:
        raise ValueError(f"the image stage draws RGB shapes images; the model takes {model.cfg.in_chans} channels: "
                         "set task.image_pretrain_steps=0 or pass model.pretrained_image=PATH")
    dm = ShapesDataModule(batch_size=batch_size, seed=seed, image_size=size, num_train=num_train, num_val=0,
                          num_test=0)
    dm.setup("fit")
    vit = image_vit_for(model, dm.num_classes).to(device)
    vit.train()

    def step(batch, progress):
        x, y = batch[0].to(device), batch[1].to(device)
        logits = vit(x)
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(-1) == y).float().mean()}

    fit_plain(vit, dm.train_dataloader(), steps, lr, step, "image ViT on shapes", log_every=250)
    return vit.eval()


class VideoClassificationTask(ClassificationTask):
    """Clip classification; runs the image stage (see the module docstring) before fitting.

    Args:
        model: a video classifier mapping clips (B, C, T, H, W) to logits.
        image_pretrain_steps: image-ViT steps on ``shapes`` before fitting a TimeSformer built from nothing
            (0 = off: train the video model from its own init).
        image_pretrain_lr: that stage's AdamW learning rate.
        image_pretrain_batch_size: its batch size.
        image_pretrain_num_train: its number of distinct training images.
        **kwargs: optimisation options of :class:`BaseTask`.

    ``num_classes``, ``label_smoothing``, ``class_names``: see :class:`ClassificationTask`.
    """

    def __init__(self, model: nn.Module, num_classes: int, label_smoothing: float = 0.0,
                 class_names: Optional[list[str]] = None, image_pretrain_steps: int = 0,
                 image_pretrain_lr: float = 2e-3, image_pretrain_batch_size: int = 128,
                 image_pretrain_num_train: int = 16000, **kwargs: Any) -> None:
        super().__init__(model, num_classes, label_smoothing, class_names, **kwargs)
        self.save_hyperparameters(ignore=["model"])
        self._image_stage_done = False

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage != "fit" or hp.image_pretrain_steps <= 0 or self._image_stage_done:
            return
        self._image_stage_done = True
        if getattr(self.model, "init_source", None) is not None:
            log.info("video model built from %s: no image stage", self.model.init_source)
            return
        if not isinstance(self.model, TimeSformer):
            raise ValueError(f"task.image_pretrain_steps needs a TimeSformer, got {type(self.model).__name__}; "
                             "set task.image_pretrain_steps=0")
        from ..convert.timesformer import load_image_weights

        path = run_dir(self) / "image_pretrain" / "last.ckpt"
        if path.is_file():
            log.info("reusing the image ViT this run trained before, %s", path)
        else:
            log.warning("the video model starts from nothing: training an image ViT of its shape on the built-in "
                        "shapes images first (%d steps, task.image_pretrain_steps), saved to %s; "
                        "model.pretrained_image=PATH starts from a given one", hp.image_pretrain_steps, path)
            seed = getattr(getattr(self.trainer, "datamodule", None), "seed", 0)
            vit = pretrain_image_vit(self.model, hp.image_pretrain_steps, hp.image_pretrain_lr,
                                     hp.image_pretrain_batch_size, hp.image_pretrain_num_train, seed,
                                     stage_device(self))
            save_model_checkpoint(vit, path)
        load_image_weights(self.model, path)
        self.model.init_source = str(path)
