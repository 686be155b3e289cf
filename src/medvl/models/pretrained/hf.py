"""``hf:<folder>``: Hugging Face transformers vision models behind the Encoder interface.

Spec syntax::

    hf:/path/to/folder             CLIPModel / SiglipModel (image + text) or an image-only model
    hf:/path/to/folder?pool=mean   image-only models: cls (default), mean (patch tokens) or pooler
    hf:hf-hub:org/repo             the Hub (or the HF cache when offline)

What is loaded depends on ``config.json``: a dual encoder (a config with ``vision_config`` and
``text_config`` whose model has ``get_image_features``/``get_text_features``: CLIP, SigLIP,
MedSigLIP...) gives shared-space image *and* text embeddings; a vision config (ViT, DINOv2,
RAD-DINO...) gives image features pooled from ``last_hidden_state`` (``cls``: the first token,
the usual ViT/DINOv2 embedding; ``mean``: average of the patch tokens, register tokens excluded;
``pooler``: the model's ``pooler_output``). A text-only model (BERT family) is not an image
encoder: use it as a medvl text tower (``text.type: hf``). ``trust_remote_code`` is never used
(loading must not execute code from a model folder).

Preprocessing comes from the folder's ``preprocessor_config.json`` (``size``, ``crop_size``,
``do_center_crop``, ``resample``, ``rescale_factor``, ``image_mean``, ``image_std``); the tokenizer
from the folder. SigLIP-family text is padded to ``max_length`` (64 for MedSigLIP) because the
model was trained that way and pools the last position; CLIP pads to the longest caption (its
causal mask and EOS pooling make padding irrelevant).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvl.errors import CheckpointError, ConfigError, MedvlError
from medvl.models.encoder_registry import register_encoder_schema
from medvl.models.pretrained.base import ImagePreprocess, PretrainedEncoder, parse_spec, resolve_location

log = logging.getLogger(__name__)

OPTIONS = ("pool",)
POOLS = ("cls", "mean", "pooler")
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]
# PIL resampling ids as stored in preprocessor_config.json -> torch interpolate modes.
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing config.json (not a Hugging Face model folder)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc


def _field(obj: Any, key: str) -> Any:
    """``size["height"]`` for a dict (transformers 4) or ``size.height`` for a SizeDict (5)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def preprocess_from_processor(proc: Any, where: Path) -> ImagePreprocess:
    """A HF image processor's eval pipeline as an :class:`ImagePreprocess` (inputs are [0, 1] pixels)."""
    mean = list(getattr(proc, "image_mean", None) or [])
    std = list(getattr(proc, "image_std", None) or [])
    if not getattr(proc, "do_normalize", True):
        mean, std = [0.0] * 3, [1.0] * 3
    if not mean or not std:
        raise CheckpointError(f"{where}/preprocessor_config.json has no image_mean/image_std")
    resample = getattr(proc, "resample", 3)
    interp = _RESAMPLE.get(int(getattr(resample, "value", resample) if resample is not None else 3), "bicubic")
    # Inputs are p / 255; the model saw p * rescale_factor (or raw p without rescaling).
    factor = float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", True) else 1.0
    scale = factor * 255.0
    size = getattr(proc, "size", None)
    mode, target = "none", None
    if getattr(proc, "do_resize", True) and size is not None:
        h, w = _field(size, "height"), _field(size, "width")
        short, longest = _field(size, "shortest_edge"), _field(size, "longest_edge")
        if h and w:
            mode, target = "squash", (int(h), int(w))
        elif short:
            mode, target = "shortest", int(short)
        elif longest:
            mode, target = "longest", int(longest)
        else:
            raise CheckpointError(f"{where}/preprocessor_config.json: unsupported size {size!r}")
    crop = None
    if getattr(proc, "do_center_crop", False):
        cs = getattr(proc, "crop_size", None)
        ch, cw = _field(cs, "height"), _field(cs, "width")
        if not (ch and cw):
            raise CheckpointError(f"{where}/preprocessor_config.json: unsupported crop_size {cs!r}")
        crop = (int(ch), int(cw))
    if mode == "longest" and crop is None:
        crop = (target, target)  # keep a fixed model input: pad the short side like open_clip does
    return ImagePreprocess(mean=mean, std=std, resize_mode=mode, size=target, crop=crop, interpolation=interp,
                           scale=scale)


def _load_processor(folder: Path) -> Any:
    from transformers import AutoImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        raise CheckpointError(
            f"{folder}: missing preprocessor_config.json; medvl needs the model's own image size and "
            f"image_mean/image_std (a wrong normalisation silently gives near-constant predictions). Copy it from "
            f"the model's Hub repo (huggingface-cli download <org/repo> preprocessor_config.json --local-dir {folder})")
    try:
        return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{folder}: cannot read preprocessor_config.json: {exc}") from exc


def _features(out: Any) -> torch.Tensor:
    """transformers 4 returns a tensor from get_*_features, 5 a BaseModelOutputWithPooling."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise MedvlError(f"unexpected output {type(out).__name__} from a Hugging Face get_*_features call")
    return pooled


class _DualImage(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))


class _PooledImage(nn.Module):
    """Image-only HF model -> pooled token features (see the module docstring for the pools)."""

    def __init__(self, model: nn.Module, pool: str, skip_tokens: int):
        super().__init__()
        self.model = model
        self.pool = pool
        self.skip_tokens = skip_tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.pool == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ConfigError(f"{type(self.model).__name__} has no pooler_output; use pool=cls or pool=mean")
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # convolutional backbones: [B, C, H, W]
            if self.pool == "cls":
                raise ConfigError(f"{type(self.model).__name__} has no CLS token; use pool=mean or pool=pooler")
            return hidden.mean(dim=(2, 3))
        if self.pool == "cls":
            return hidden[:, 0]
        return hidden[:, self.skip_tokens:].mean(dim=1)


class HFDualEncoder(PretrainedEncoder):
    """A transformers dual encoder (CLIPModel, SiglipModel, ...): shared-space image and text embeddings."""

    has_text = True

    def __init__(self, model: nn.Module, tokenizer: Any, processor: Any, folder: Path, name: str,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        self.model_type = str(cfg.model_type)
        self._init_preprocess(preprocess_from_processor(processor, folder),
                              in_chans=int(getattr(cfg.vision_config, "num_channels", 3)))
        proj = getattr(cfg, "projection_dim", None)
        self.embed_dim = int(proj if proj else cfg.vision_config.hidden_size)
        # SigLIP pools the last position and was trained on max_length padding.
        self.pad_to_max = "siglip" in self.model_type
        limits = [getattr(cfg.text_config, "max_position_embeddings", None),
                  getattr(tokenizer, "model_max_length", None)]
        self.max_length = min(int(v) for v in limits if v and int(v) < 1_000_000)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def _image_module(self) -> nn.Module:
        return _DualImage(self.model)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """What the model's processor would give: SigLIP ``max_length`` padding, CLIP longest."""
        enc = self.tokenizer(list(texts), padding="max_length" if self.pad_to_max else True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        names = getattr(self.tokenizer, "model_input_names", None) or list(enc.keys())
        return {k: v.to(self.device) for k, v in enc.items() if k in names}

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return _features(self.model.get_text_features(**self.tokenize(texts)))


class HFImageEncoder(PretrainedEncoder):
    """An image-only transformers model (ViT, DINOv2, RAD-DINO...): pooled image features, no text."""

    has_text = False

    def __init__(self, model: nn.Module, processor: Any, folder: Path, name: str, pool: str = "cls",
                 device: str | torch.device = "cpu"):
        if pool not in POOLS:
            raise ConfigError(f"hf: unknown pool {pool!r}; valid: {', '.join(POOLS)}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = name
        self.pool = pool
        cfg = model.config
        self.skip_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS (+ DINOv2 registers)
        self._init_preprocess(preprocess_from_processor(processor, folder),
                              in_chans=int(getattr(cfg, "num_channels", 3)))
        width = getattr(cfg, "hidden_size", None) or (getattr(cfg, "hidden_sizes", None) or [None])[-1]
        if width is None:
            size = self.pre.output_size or (self.image_size, self.image_size)
            with torch.no_grad():
                width = self._image_features(torch.zeros(1, self.in_chans, *size, device=self.device)).shape[-1]
        self.embed_dim = int(width)

    def _image_module(self) -> nn.Module:
        # Built on demand (not an attribute) so the weights are held, and fingerprinted, once.
        return _PooledImage(self.model, self.pool, self.skip_tokens)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._image_module()(pixel_values)


def _kind(cfg: dict[str, Any]) -> str:
    if isinstance(cfg.get("vision_config"), dict) and isinstance(cfg.get("text_config"), dict):
        return "dual"
    if "num_channels" in cfg or "image_size" in cfg or "patch_size" in cfg:
        return "image"
    return "text"


def load_hf(folder: Path, pool: str | None = None, device: str = "cpu", name: str | None = None
            ) -> HFDualEncoder | HFImageEncoder:
    """Load the transformers model of ``folder`` as an encoder (offline, no remote code)."""
    from transformers import AutoModel, AutoTokenizer

    from medvl.models.text_towers import quiet_transformers

    cfg = _read_config(folder)
    kind = _kind(cfg)
    model_type = cfg.get("model_type", "?")
    if kind == "text":
        raise MedvlError(
            f"hf:{folder} is a text-only model (model_type {model_type!r}), not an image encoder; use it as a "
            f"medvl text tower: create_model('clip-tiny', **{{'text.type': 'hf', 'text.hf_path': '{folder}', "
            f"'text.pool': 'cls'}}) or in a training config model.overrides.text.{{type: hf, hf_path: {folder}}}")
    if pool is not None and kind == "dual":
        raise ConfigError(f"hf:{folder}: pool applies to image-only models; {model_type!r} has its own projection")
    processor = _load_processor(folder)
    try:
        with quiet_transformers():
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = (AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
                         if kind == "dual" else None)
    except Exception as exc:
        raise CheckpointError(f"cannot load the Hugging Face model in {folder} (model_type {model_type!r}): "
                              f"{type(exc).__name__}: {exc}") from exc
    label = name or f"hf:{folder}"
    if kind == "dual":
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise MedvlError(f"hf:{folder}: {type(model).__name__} has no get_image_features/get_text_features")
        return HFDualEncoder(model, tokenizer, processor, folder, label, device=device)
    return HFImageEncoder(model, processor, folder, label, pool=pool or "cls", device=device)


@register_encoder_schema("hf")
def load_hf_encoder(rest: str, device: str = "cpu", **kwargs: Any) -> HFDualEncoder | HFImageEncoder:
    """``hf:<folder>[?pool=cls|mean|pooler]`` or ``hf:hf-hub:org/repo`` -> an encoder."""
    location, options = parse_spec(rest, OPTIONS, kwargs, "hf")
    folder = resolve_location(location, "hf", HUB_PATTERNS)
    return load_hf(folder, pool=options.get("pool"), device=device, name=f"hf:{location}")
