"""LightningModules: the only place that knows about optimizers, steps and logging."""
from .base import BaseTask
from .captioning import CaptioningTask
from .classification import ClassificationTask
from .contrastive import ContrastiveTask
from .language_modeling import LanguageModelingTask

__all__ = ["BaseTask", "CaptioningTask", "ClassificationTask", "ContrastiveTask", "LanguageModelingTask"]
