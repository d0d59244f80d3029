"""LightningModules: the only place that knows about optimizers, steps and logging."""
from .base import BaseTask
from .captioning import CaptioningTask
from .classification import ClassificationTask
from .contrastive import ContrastiveTask
from .distill import DistillationTask

__all__ = ["BaseTask", "CaptioningTask", "ClassificationTask", "ContrastiveTask", "DistillationTask"]
