"""mmzoo: a multimodal model zoo of from-scratch transformers, trained with Lightning + Hydra."""
from .hub import from_pretrained, save_pretrained
from .models import create_model, get_model_config, list_models, register_model
from .preprocessing import create_model_and_transforms

__version__ = "0.1.0"
__all__ = ["create_model", "create_model_and_transforms", "from_pretrained", "get_model_config", "list_models", "register_model", "save_pretrained",
           "__version__"]
