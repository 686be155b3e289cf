"""Model registry: preset name or YAML path + dotted overrides -> :class:`CLIPModel`.

Single source of truth for presets: ``src/medvl/models/presets/*.yaml``, read with
``importlib.resources`` so they ship inside the package; ``configs/models/*.yaml`` are symlinks
to those files (for browsing and for passing a path). Adding a preset is adding one YAML file.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

from medvl.config import from_dict, load_yaml
from medvl.errors import ConfigError
from medvl.models.clip import CLIPModel
from medvl.models.config import ModelConfig
from medvl.models.text_towers import read_hf_folder
from medvl.models.tokenizer import Tokenizer, train_tokenizer

PRESET_PACKAGE = "medvl.models"
PRESET_DIR = "presets"


def _preset_files() -> dict[str, Any]:
    root = resources.files(PRESET_PACKAGE).joinpath(PRESET_DIR)
    return {p.name[: -len(".yaml")]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def list_models() -> list[str]:
    """Names of the built-in presets, sorted."""
    return sorted(_preset_files())


def _load_raw(name_or_path: str | Path) -> dict[str, Any]:
    presets = _preset_files()
    key = str(name_or_path)
    if key in presets:
        import yaml

        data = yaml.safe_load(presets[key].read_text()) or {}
    elif Path(key).suffix in (".yaml", ".yml") or Path(key).is_file():
        data = load_yaml(key)
    else:
        raise ConfigError(f"unknown model {key!r}: not a preset ({', '.join(list_models())}) nor a YAML file")
    # A checkpoint's config.yaml nests the model config under "model".
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    return data


def _set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            _set_dotted(node[last], k, v)
    else:
        node[last] = copy.deepcopy(value)


def model_config(name_or_path: str | Path, **overrides: Any) -> ModelConfig:
    """Resolve a preset/YAML plus overrides (``{"image.name": "resnet18"}`` or nested dicts) to a config.

    Unknown keys raise :class:`ConfigError` listing the valid keys at that level.
    """
    raw = _load_raw(name_or_path)
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    return from_dict(ModelConfig, raw)


def create_model(
    name_or_path: str | Path,
    *,
    tokenizer_texts: list[str] | None = None,
    tokenizer: Tokenizer | None = None,
    pretrained: bool = True,
    **overrides: Any,
) -> CLIPModel:
    """Build a fresh :class:`CLIPModel` from a preset name or a YAML file.

    ``overrides`` are dotted keys (pass them as ``**{"image.name": "resnet18"}``) or plain ones
    (``embed_dim=64``). ``tokenizer_texts`` trains the from-scratch tokenizer right away (on the
    training reports, never on evaluation text); ``pretrained=False`` skips local pretrained
    weights (timm ``pretrained_weights``, HF folder weights). For an HF text tower the folder's
    config and tokenizer are copied into the model config so checkpoints are self-contained;
    ``text.hf_path: known:<name>`` names a known text model (e.g. ``known:all-minilm-l6-v2``,
    bundled offline) instead of a machine-specific path.
    To load a trained model use :func:`medvl.models.load_model`.
    """
    cfg = model_config(name_or_path, **overrides)
    if cfg.text.type == "hf" and cfg.text.hf_path and str(cfg.text.hf_path).startswith("known:"):
        from medvl.models.pretrained.known import resolve_hf_path

        cfg.text.hf_path = resolve_hf_path(cfg.text.hf_path)  # e.g. known:all-minilm-l6-v2 (bundled)
    if cfg.text.type == "hf" and cfg.text.hf_path and (cfg.text.hf_config is None or not cfg.text.tokenizer):
        hf_cfg, tok_json = read_hf_folder(cfg.text.hf_path)
        cfg.text.hf_config = cfg.text.hf_config or hf_cfg
        cfg.text.tokenizer = cfg.text.tokenizer or tok_json
    if tokenizer is None and tokenizer_texts is not None:
        if cfg.text.type != "transformer":
            raise ConfigError("tokenizer_texts only applies to text.type 'transformer' "
                              "(a Hugging Face tower brings its own tokenizer)")
        tokenizer = train_tokenizer(tokenizer_texts, cfg.text.vocab_size, kind=cfg.text.tokenizer_type,
                                    context_length=cfg.text.context_length)
    return CLIPModel(cfg, tokenizer, load_pretrained=pretrained)


def model_summaries() -> list[dict[str, Any]]:
    """One row per preset (name, towers, embed dim, parameter count) for ``medvl models list``."""
    rows = []
    for name in list_models():
        cfg = model_config(name)
        model = CLIPModel(cfg, load_pretrained=False)
        text = cfg.text.hf_path if cfg.text.type == "hf" else (
            f"transformer w{cfg.text.width} L{cfg.text.layers} ({'causal' if cfg.text.causal else 'bidir'})")
        rows.append({
            "name": name,
            "image_tower": f"{cfg.image.type}:{cfg.image.name} ({cfg.image.in_chans}ch, {cfg.image.image_size}px)",
            "text_tower": text,
            "embed_dim": cfg.embed_dim,
            "objective": cfg.objective,
            "params": model.num_params(),
        })
    return rows
