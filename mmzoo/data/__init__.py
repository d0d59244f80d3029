"""DataModules: built-in (shapes, digits, shapes_captions) and on-disk (image folder, CIFAR-10, captions) data."""
from .base import BaseDataModule, ImageClassificationDataModule, SeededTransformDataset
from .captions import (CaptionsDataModule, CocoCaptionsDataModule, CsvCaptionsDataModule,
                       WebDatasetCaptionsDataModule)
from .cifar10 import CIFAR10DataModule
from .digits import DigitsDataModule
from .image_folder import ImageFolderDataModule
from .sampler import ResumableSampler
from .shapes import ShapesDataModule
from .shapes_captions import ShapesCaptionsDataModule
from .text import TextCorpusDataModule

__all__ = ["BaseDataModule", "ImageClassificationDataModule", "SeededTransformDataset", "ResumableSampler",
           "ShapesDataModule", "DigitsDataModule", "ImageFolderDataModule", "CIFAR10DataModule",
           "ShapesCaptionsDataModule", "CaptionsDataModule", "CsvCaptionsDataModule", "WebDatasetCaptionsDataModule",
           "CocoCaptionsDataModule", "TextCorpusDataModule"]
