"""Model families of the zoo. Importing this package registers every preset."""
from ._registry import (build_model, create_model, get_model_config, list_archs, list_models, register_arch,
                        register_model)
from . import clip, coca, fusion, language, point_bert, text, timesformer, vit, wav2vec2  # noqa: F401  (registers presets)
from .clip import CLIP, CLIPConfig, CLIPOutput
from .coca import CoCa, CoCaConfig, CoCaOutput
from .fusion import FusionConfig, FusionModel
from .language import LMConfig, LMOutput, TransformerLM
from .point_bert import PointBERT, PointBERTConfig, PointDVAE, PointDVAEConfig
from .text import TextConfig, TextTransformer
from .timesformer import TimeSformer, TimeSformerConfig
from .vit import VisionTransformer, ViTConfig
from .wav2vec2 import Wav2Vec2, Wav2Vec2Config

__all__ = [
    "build_model",
    "create_model",
    "get_model_config",
    "list_archs",
    "list_models",
    "register_arch",
    "register_model",
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "CoCa",
    "CoCaConfig",
    "CoCaOutput",
    "TextConfig",
    "TextTransformer",
    "VisionTransformer",
    "ViTConfig",
    "Wav2Vec2",
    "Wav2Vec2Config",
    "PointBERT",
    "PointBERTConfig",
    "PointDVAE",
    "PointDVAEConfig",
    "FusionConfig",
    "FusionModel",
    "TimeSformer",
    "TimeSformerConfig",
    "LMConfig",
    "LMOutput",
    "TransformerLM",
]
