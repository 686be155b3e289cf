"""One entry point for every report writer: ``run_system(name, checkpoint, data=... | image=...)``.

Why: the CLI (``medvl generate --system``), ``medvl eval report-gen`` and the bench task all
need "reports of system X for split S" and must get them the same way, baselines included.
"""

from __future__ import annotations

from pathlib import Path

from medvl.data.manifest import load_manifest
from medvl.errors import ConfigError
from medvl.generate.baselines import BASELINES, normal_reports, retrieval_reports, template_reports
from medvl.generate.decoding import DecodeConfig
from medvl.generate.reports import ReportRun, generate_reports, single_image_manifest

SYSTEMS = ("model", *BASELINES)


def run_system(system: str, model: str | Path, *, data: str | Path | None = None, image: str | Path | None = None,
               split: str | None = "test", cfg: DecodeConfig | None = None, batch_size: int = 16,
               train_split: str = "train", device: str = "cpu", train_data: str | Path | None = None) -> ReportRun:
    """Reports of ``system`` for ``split`` of ``data`` (or for one ``image``).

    Baselines learn from ``train_split`` of ``train_data`` (default: ``data``); with ``--image``
    they need ``train_data``.
    """
    if system not in SYSTEMS:
        raise ConfigError(f"unknown report system {system!r}; valid: {', '.join(SYSTEMS)}")
    if (data is None) == (image is None):
        raise ConfigError("give exactly one of data (a manifest) or image (a file)")
    query = single_image_manifest(image) if image is not None else load_manifest(data)  # type: ignore[arg-type]
    split = "test" if image is not None else split
    if system == "model":
        from medvl.models.llava import is_llava_dir, load_llava

        if is_llava_dir(model):  # a LLaVA-style adapter directory (medvl llava train)
            return generate_reports(load_llava(model, device=device), query, split, cfg, batch_size)
        from medvl.generate.captioner import load_captioner

        return generate_reports(load_captioner(model, device=device), query, split, cfg, batch_size)
    source = train_data if train_data is not None else data
    if source is None:
        raise ConfigError(f"the {system!r} baseline learns from a training manifest: pass --train-data MANIFEST "
                          f"with --image")
    train = load_manifest(source)
    if system == "normal":
        return normal_reports(train, split, train_split, query=query)
    from medvl.generate.captioner import resolve_checkpoint
    from medvl.models.encoder import load_encoder

    # Baselines need only image embeddings: any encoder spec works (a medvl run, biomedclip, timm:...).
    spec = str(resolve_checkpoint(model)) if Path(model).is_dir() else str(model)
    encoder = load_encoder(spec, device=device)
    if system == "retrieval":
        return retrieval_reports(encoder, train, split, train_split, query=query)
    return template_reports(encoder, train, split, train_split, query=query)
