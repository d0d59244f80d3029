"""DataModules: built-in (shapes, digits, shapes_captions) and on-disk (image folder, CIFAR-10, captions) data."""
from .audio import AudioDataModule, AudioFolderDataModule, SynthSpeechDataModule
from .base import BaseDataModule, ImageClassificationDataModule, SeededTransformDataset
from .captions import (CaptionsDataModule, CocoCaptionsDataModule, CsvCaptionsDataModule,
                       WebDatasetCaptionsDataModule)
from .cifar10 import CIFAR10DataModule
from .digits import DigitsDataModule
from .image_folder import ImageFolderDataModule
from .moving_shapes import MovingShapesDataModule
from .video import VideoDataModule
from .sampler import ResumableSampler
from .points import PointCloudDataModule, ProceduralShapesDataModule
from .point_files import ModelNet40DataModule, PointFolderDataModule, ShapeNet55DataModule
from .shapes import ShapesDataModule
from .shapes_captions import ShapesCaptionsDataModule
from .shapes_vqa import ShapesVQADataModule
from .streaming import (StreamAudioDataModule, StreamImageDataModule, StreamImageTextDataModule,
                        StreamingDataModule, StreamPointCloudDataModule, StreamVideoDataModule)
from .text import TextCorpusDataModule

__all__ = [
    "BaseDataModule",
    "ImageClassificationDataModule",
    "SeededTransformDataset",
    "ResumableSampler",
    "ShapesDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "CIFAR10DataModule",
    "ShapesCaptionsDataModule",
    "CaptionsDataModule",
    "CsvCaptionsDataModule",
    "WebDatasetCaptionsDataModule",
    "CocoCaptionsDataModule",
    "AudioDataModule",
    "AudioFolderDataModule",
    "SynthSpeechDataModule",
    "PointCloudDataModule",
    "ProceduralShapesDataModule",
    "ShapesVQADataModule",
    "MovingShapesDataModule",
    "VideoDataModule",
    "TextCorpusDataModule",
    "ModelNet40DataModule",
    "ShapeNet55DataModule",
    "PointFolderDataModule",
    "StreamingDataModule",
    "StreamImageTextDataModule",
    "StreamImageDataModule",
    "StreamAudioDataModule",
    "StreamVideoDataModule",
    "StreamPointCloudDataModule",
]
