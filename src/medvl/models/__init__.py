"""Models: registry (presets + overrides), towers, the CLIP dual encoder, checkpoints, encoders.

Public API::

    create_model(name_or_path, *, tokenizer_texts=None, tokenizer=None, pretrained=True, **overrides)
    list_models(); model_config(name_or_path, **overrides); model_summaries()
    CLIPModel, ModelConfig, ImageTowerConfig, TextTowerConfig
    Tokenizer, train_tokenizer
    save_model(model, dir, extra=None); load_model(dir, device="cpu")
    Encoder, load_encoder(spec, device="cpu", **kwargs), register_encoder_schema(prefix)
"""

from medvl.models.clip import CLIPModel
from medvl.models.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from medvl.models.encoder import Encoder, load_encoder, register_encoder_schema
from medvl.models.registry import create_model, list_models, model_config, model_summaries
from medvl.models.serialization import load_model, save_model
from medvl.models.tokenizer import Tokenizer, train_tokenizer

# isort: split
from medvl.models import volume_encoders as _volume_encoders  # noqa: F401  registers resnet3d:/acs:/2.5d:

__all__ = [
    "CLIPModel",
    "Encoder",
    "ImageTowerConfig",
    "ModelConfig",
    "TextTowerConfig",
    "Tokenizer",
    "create_model",
    "list_models",
    "load_encoder",
    "load_model",
    "model_config",
    "model_summaries",
    "register_encoder_schema",
    "save_model",
    "train_tokenizer",
]
