"""LightningModules: the only place that knows about optimizers, steps and logging."""
from .audio import AudioClassificationTask, CTCTask, Wav2Vec2PretrainTask
from .base import BaseTask
from .captioning import CaptioningTask
from .classification import ClassificationTask
from .contrastive import ContrastiveTask
from .distill import DistillationTask
from .language_modeling import LanguageModelingTask
from .point_bert import PointBERTPretrainTask, PointClassificationTask, PointDVAETask
from .video import VideoClassificationTask
from .vqa import VQATask

__all__ = [
    "BaseTask",
    "CaptioningTask",
    "ClassificationTask",
    "ContrastiveTask",
    "AudioClassificationTask",
    "CTCTask",
    "Wav2Vec2PretrainTask",
    "PointBERTPretrainTask",
    "PointClassificationTask",
    "PointDVAETask",
    "DistillationTask",
    "VideoClassificationTask",
    "VQATask",
    "LanguageModelingTask",
]
