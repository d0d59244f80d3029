"""LightningModules: the only place that knows about optimizers, steps and logging."""
from .base import BaseTask
from .captioning import CaptioningTask
from .classification import ClassificationTask
from .contrastive import ContrastiveTask
from .vqa import VQATask

__all__ = ["BaseTask", "CaptioningTask", "ClassificationTask", "ContrastiveTask", "VQATask"]
