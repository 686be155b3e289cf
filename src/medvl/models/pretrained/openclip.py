"""``openclip:<folder>`` and ``openclip:hf-hub:org/repo``: open_clip models behind the Encoder interface.

Spec syntax::

    openclip:/path/to/folder                  folder with open_clip_config.json + weights
    openclip:/path/to/folder?text=/path/bert  + local folder of the HF text model the config names
    openclip:hf-hub:org/repo                  the Hub (or the HF cache when offline)

The folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and the weights
(``open_clip_model.safetensors`` preferred, else ``open_clip_pytorch_model.bin``, loaded with
``weights_only=True``).

The offline trap this module exists for: BiomedCLIP-style configs name a Hugging Face text model
and tokenizer *by hub id* (``text_cfg.hf_model_name``/``hf_tokenizer_name``), and open_clip then
calls ``AutoConfig.from_pretrained(<hub id>)`` even though the CLIP checkpoint already holds
every text weight -- so loading fails without network. medvl resolves the hub id to a local
folder first, in this order, and builds with ``pretrained_text=False`` (config only, weights from
the CLIP checkpoint):

1. ``?text=DIR`` in the spec (or ``load_encoder(spec, text=DIR)``);
2. a ``text/`` subfolder beside the weights;
3. the Hugging Face cache (after a ``huggingface-cli download <id>`` on this machine);
4. the Hub itself, only when online (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE unset).

The text folder needs the HF ``config.json`` and the tokenizer files (``tokenizer.json`` or
``vocab.txt`` + ``tokenizer_config.json``), no weights. The tokenizer comes from the model folder
itself when it holds tokenizer files (open_clip's own ``local-dir:`` convention), else from the
text folder. Preprocessing (size, mean/std, interpolation, resize mode) comes from the config's
``preprocess_cfg`` merged over open_clip's defaults, exactly as open_clip does.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvl.errors import CheckpointError, ConfigError, MedvlError
from medvl.models.encoder_registry import register_encoder_schema
from medvl.models.pretrained.base import (
    ImagePreprocess,
    PretrainedEncoder,
    hub_offline,
    hub_snapshot,
    parse_spec,
    resolve_location,
)

log = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TEXT_SUBFOLDER = "text"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")
OPTIONS = ("text",)
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.bin", "*.model"]
TEXT_HUB_PATTERNS = ["*.json", "*.txt", "*.model"]


def download_text_command(hub_id: str, dest: str) -> str:
    """The command that fetches what medvl needs of a HF text model (config + tokenizer, no weights)."""
    return f"huggingface-cli download {hub_id} --include '*.json' '*.txt' --local-dir {dest}"


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _is_text_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def read_openclip_config(folder: Path) -> dict[str, Any]:
    """``open_clip_config.json`` of ``folder`` (``model_cfg`` and ``preprocess_cfg``); CheckpointError if bad."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing {CONFIG_NAME} (an open_clip model folder holds {CONFIG_NAME} and "
                              f"{' or '.join(WEIGHT_NAMES)})")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("model_cfg"), dict):
        raise CheckpointError(f"{path}: no 'model_cfg' mapping (not an open_clip model config)")
    return doc


def find_weights(folder: Path) -> Path:
    """The CLIP weights file open_clip would load (safetensors first), or a CheckpointError."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    if others:
        return folder / others[0]
    raise CheckpointError(f"{folder}: no weights file; expected {' or '.join(WEIGHT_NAMES)} beside {CONFIG_NAME} "
                          f"(without weights the model would be randomly initialised)")


def resolve_text_folder(folder: Path, hub_id: str, explicit: str | Path | None, what: str) -> str:
    """Local folder (or, online, the hub id) for the HF text model/tokenizer a config names.

    ``what`` is the config key (for messages). Raises :class:`MedvlError` saying what to provide
    when nothing local exists and the Hub is offline.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise MedvlError(f"openclip: text folder not found: {path} (given with ?text=)")
        if not _is_text_folder(path):
            raise MedvlError(f"openclip: {path} has no config.json; the text folder must be a Hugging Face "
                             f"model folder of {hub_id!r} (config.json + tokenizer files)")
        return str(path)
    sub = folder / TEXT_SUBFOLDER
    if _is_text_folder(sub):
        return str(sub)
    if Path(hub_id).expanduser().is_dir():  # the config already names a local folder
        return str(Path(hub_id).expanduser())
    cached = hub_snapshot(hub_id, TEXT_HUB_PATTERNS, download=False)
    if cached is not None and _is_text_folder(cached):
        return str(cached)
    if not hub_offline():
        return hub_id  # open_clip/transformers fetch the config (and tokenizer) by id
    raise MedvlError(
        f"{folder / CONFIG_NAME} names the Hugging Face text model {hub_id!r} ({what}), which is not available "
        f"offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set and it is not in the HF cache). Provide its local folder "
        f"(config.json + tokenizer files such as vocab.txt/tokenizer.json; no weights needed, they are in the CLIP "
        f"checkpoint) as openclip:{folder}?text=/path/to/text-folder, or put it in {folder / TEXT_SUBFOLDER}/. "
        f"On a machine with internet: {download_text_command(hub_id, str(folder / TEXT_SUBFOLDER))}")


@contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs through the root logger (e.g. 'Loaded ... config'); keep a load silent but for errors."""
    from medvl.models.text_towers import quiet_transformers

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with quiet_transformers():
            yield
    finally:
        root.setLevel(level)


class _OpenClipImage(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


def preprocess_from_cfg(pp: dict[str, Any]) -> ImagePreprocess:
    """open_clip's eval transform (``image_transform_v2(cfg, is_train=False)``) as an :class:`ImagePreprocess`."""
    size = pp.get("size", 224)
    size_t = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    mode = pp.get("resize_mode", "shortest")
    interp = pp.get("interpolation", "bicubic")
    interp = "bilinear" if interp == "bilinear" else "bicubic"  # 'random' is bicubic at eval (open_clip)
    fill = float(pp.get("fill_color", 0)) / 255.0
    if mode == "squash":
        return ImagePreprocess(mean=pp["mean"], std=pp["std"], resize_mode="squash", size=size_t,
                               interpolation=interp, fill=fill)
    if mode not in ("shortest", "longest"):
        raise ConfigError(f"open_clip preprocess_cfg.resize_mode {mode!r} is not supported; valid: shortest, "
                          f"longest, squash")
    return ImagePreprocess(mean=pp["mean"], std=pp["std"], resize_mode=mode, size=size_t, crop=size_t,
                           interpolation=interp, fill=fill)


class OpenClipEncoder(PretrainedEncoder):
    """An open_clip ``CLIP``/``CustomTextCLIP``: projected, shared-space image and text embeddings."""

    has_text = True

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess_cfg: dict[str, Any], name: str,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.preprocess_cfg = dict(preprocess_cfg)
        self._init_preprocess(preprocess_from_cfg(self.preprocess_cfg), in_chans=3)
        self.embed_dim = int(self._probe_embed_dim())

    def _probe_embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        out = self.model.encode_text(self.tokenizer(["x"]).to(self.device))
        return int(out.shape[-1])

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def _image_module(self) -> nn.Module:
        return _OpenClipImage(self.model)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def load_openclip(folder: Path, text: str | Path | None = None, device: str = "cpu", name: str | None = None
                  ) -> OpenClipEncoder:
    """Build the open_clip model of ``folder`` offline-safely (see the module docstring)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    doc = read_openclip_config(folder)
    weights = find_weights(folder)
    model_cfg = copy.deepcopy(doc["model_cfg"])
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    overrides: dict[str, Any] = {}
    tokenizer_source: str | None = None
    if text_cfg.get("hf_model_name"):
        text_cfg["hf_model_name"] = resolve_text_folder(folder, text_cfg["hf_model_name"], text,
                                                        "text_cfg.hf_model_name")
        text_cfg["hf_model_pretrained"] = False  # the CLIP checkpoint holds the text weights
        overrides["text_cfg"] = text_cfg
    if text_cfg.get("hf_tokenizer_name"):
        if _has_tokenizer(folder):
            tokenizer_source = str(folder)
        elif text and _has_tokenizer(Path(text)):
            tokenizer_source = str(text)
        else:
            tokenizer_source = resolve_text_folder(folder, text_cfg["hf_tokenizer_name"], text,
                                                   "text_cfg.hf_tokenizer_name")
    try:
        with _quiet():
            model = open_clip.create_model(f"local-dir:{folder}", device=device, pretrained_hf=False,
                                           **overrides)
            if tokenizer_source is not None:
                tokenizer = HFTokenizer(tokenizer_source, context_length=text_cfg.get("context_length", 77),
                                        tokenizer_mode=text_cfg.get("tokenizer_mode"),
                                        **text_cfg.get("tokenizer_kwargs", {}))
            else:
                tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    except MedvlError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot build the open_clip model of {folder} (weights {weights.name}): "
                              f"{type(exc).__name__}: {exc}") from exc
    pp = open_clip.get_model_preprocess_cfg(model)
    return OpenClipEncoder(model, tokenizer, pp, name=name or f"openclip:{folder}", device=device)


@register_encoder_schema("openclip")
def load_openclip_encoder(rest: str, device: str = "cpu", **kwargs: Any) -> OpenClipEncoder:
    """``openclip:<folder>[?text=<dir>]`` or ``openclip:hf-hub:org/repo`` -> :class:`OpenClipEncoder`."""
    location, options = parse_spec(rest, OPTIONS, kwargs, "openclip")
    folder = resolve_location(location, "openclip", HUB_PATTERNS)
    return load_openclip(folder, text=options.get("text"), device=device, name=f"openclip:{location}")
