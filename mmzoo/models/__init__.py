"""Model families of the zoo. Importing this package registers every preset."""
from ._registry import (build_model, create_model, get_model_config, list_archs, list_models, register_arch,
                        register_model)
from . import clip, coca, text, vit  # noqa: F401  (registers presets)
from . import language  # noqa: F401  (registers presets)
from .clip import CLIP, CLIPConfig, CLIPOutput
from .coca import CoCa, CoCaConfig, CoCaOutput
from .language import LMConfig, LMOutput, TransformerLM
from .text import TextConfig, TextTransformer
from .vit import VisionTransformer, ViTConfig

__all__ = ["build_model", "create_model", "get_model_config", "list_archs", "list_models", "register_arch",
           "register_model", "CLIP", "CLIPConfig", "CLIPOutput", "CoCa", "CoCaConfig", "CoCaOutput", "TextConfig", "TextTransformer",
           "VisionTransformer", "ViTConfig", "LMConfig", "LMOutput", "TransformerLM"]
