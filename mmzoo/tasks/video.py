"""Video classification (TimeSformer).

Bertasius et al. initialise every TimeSformer from an image ViT; trained from scratch on the built-in
``moving_shapes`` clips, the tiny presets sat at chance for thousands of steps (how long depended on
the seed). ``python train.py model=timesformer`` therefore runs as a pipeline of two ordinary runs
(:mod:`mmzoo.pipeline`, ``configs/pipeline/timesformer.yaml``): an image ViT of the model's shape learns
the built-in ``shapes`` images (the renderer the clips are drawn with) in ``RUN/image/``, and the video
model is built from its checkpoint in ``RUN/video/`` (``model.pretrained_image=``,
:func:`mmzoo.convert.timesformer.load_image_weights`: spatial attention copied into the temporal
attention, temporal projections at zero).
"""
from __future__ import annotations

from .classification import ClassificationTask


class VideoClassificationTask(ClassificationTask):
    """Clip classification: clips (B, C, T, H, W) -> class logits (see :class:`ClassificationTask`)."""
