"""Manifest -> embeddings -> case index: what ``medvl index build|add|search`` call.

Kept separate from :mod:`medvl.serve.index` (which only knows vectors and records) because this
module knows about encoders, manifests and image files; the index stays testable with plain
arrays and the benchmarks use it without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medvl.data.manifest import Manifest, Sample, load_manifest, require_known_labels
from medvl.errors import ImageReadError, MedvlError
from medvl.serve.images import encoder_spatial_dims, read_picture, thumbnail_png, to_model_input
from medvl.serve.index import EXACT_THRESHOLD, CaseIndex, CaseIndexError, CaseRecord, file_sha256

Progress = Callable[[int, int], None]


@dataclass
class EmbeddedCases:
    """Embeddings (L2-normalised rows) and records of a batch of manifest rows, aligned by position."""

    image_vectors: np.ndarray
    text_vectors: np.ndarray | None
    records: list[CaseRecord]


def _decode(manifest: Manifest, sample: Sample, volume: bool = False, volume_policy: Any = None) -> np.ndarray:
    """First view of a row as a uint8 picture (whole volume for 3D encoders); errors name file and row."""
    if not sample.image:
        raise ImageReadError(manifest.path, f"row {sample.row}: empty 'image' column")
    path = manifest.resolve(sample.image[0])
    try:
        return read_picture(path, volume=volume, volume_policy=volume_policy)
    except ImageReadError as exc:
        raise ImageReadError(exc.path, f"{exc.reason} (manifest {manifest.path}, row {sample.row})") from exc


def encode_pictures(encoder: Any, pictures: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 pictures -> [N, E] float32 L2-normalised image embeddings."""
    dims = encoder_spatial_dims(encoder)
    batch = torch.stack([to_model_input(p, encoder.image_size, encoder.in_chans, encoder.mean, encoder.std, dims)
                         for p in pictures])
    return _unit(encoder.encode_image(batch))


def encode_texts(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """Texts -> [N, E] float32 L2-normalised; empty texts give zero rows (they match nothing)."""
    out = np.zeros((len(texts), 0), np.float32)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if idx:
        vec = _unit(encoder.encode_text([texts[i] for i in idx]))
        out = np.zeros((len(texts), vec.shape[1]), np.float32)
        out[idx] = vec
    return out


def _unit(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _PreparedRows(torch.utils.data.Dataset):
    """Row ``i`` -> (model input, thumbnail PNG): the per-image work, done in DataLoader workers."""

    def __init__(self, manifest: Manifest, samples: Sequence[Sample], encoder: Any, thumb_size: int):
        self.manifest, self.samples, self.thumb_size = manifest, list(samples), thumb_size
        self.dims = encoder_spatial_dims(encoder)
        self.pre = (encoder.image_size, encoder.in_chans, encoder.mean, encoder.std, self.dims)
        self.volume_policy = getattr(encoder, "volume_policy", None)  # the checkpoint's (data.volume at training)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bytes]:
        pic = _decode(self.manifest, self.samples[i], volume=self.dims == 3, volume_policy=self.volume_policy)
        return to_model_input(pic, *self.pre), thumbnail_png(pic, self.thumb_size)


def _stack(items: list[tuple[torch.Tensor, bytes]]) -> tuple[torch.Tensor, list[bytes]]:
    return torch.stack([x for x, _ in items]), [t for _, t in items]


def embed_manifest(encoder: Any, manifest: Manifest, *, batch_size: int = 32, thumb_size: int = 96,
                   progress: Progress | None = None, num_workers: int | None = None) -> EmbeddedCases:
    """Embed every row of ``manifest`` (image, and report when the encoder has a text tower).

    A row whose image cannot be read raises (naming file and row) rather than being dropped:
    a silently shorter index would make "the case is missing" undiagnosable later. Decoding,
    resizing and thumbnails run in DataLoader workers (``None``: one per spare core, see
    :func:`medvl.evaluate.features.loader_workers`), batches in pinned memory on CUDA; the
    vectors are the same as with ``num_workers=0``.
    """
    from medvl.evaluate.features import loader_workers, on_cuda

    samples = manifest.samples
    image_chunks: list[np.ndarray] = []
    text_chunks: list[np.ndarray] = []
    records: list[CaseRecord] = []
    with_text = bool(getattr(encoder, "has_text", False))
    workers = loader_workers(num_workers) if num_workers is not None or len(samples) > batch_size else 0
    loader = torch.utils.data.DataLoader(_PreparedRows(manifest, samples, encoder, thumb_size),
                                         batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_stack, pin_memory=on_cuda(encoder))
    for start, (batch, thumbs) in zip(range(0, len(samples), batch_size), loader, strict=True):
        chunk = samples[start:start + batch_size]
        image_chunks.append(_unit(encoder.encode_image(batch)))
        if with_text:
            text_chunks.append(encode_texts(encoder, [s.text for s in chunk]))
        for s, thumb in zip(chunk, thumbs, strict=True):
            records.append(CaseRecord(image="|".join(s.image), text=s.text, labels=dict(s.labels),
                                      patient_id=s.patient_id, split=s.split, row=s.row,
                                      source=str(manifest.path.name), thumbnail=thumb))
        if progress:
            progress(min(start + batch_size, len(samples)), len(samples))
    dim = int(getattr(encoder, "embed_dim", 0) or (image_chunks[0].shape[1] if image_chunks else 0))
    image_vectors = np.concatenate(image_chunks) if image_chunks else np.zeros((0, dim), np.float32)
    text_vectors = None
    if with_text:
        fixed = [t if t.shape[1] else np.zeros((len(t), image_vectors.shape[1]), np.float32) for t in text_chunks]
        text_vectors = np.concatenate(fixed) if fixed else np.zeros((0, dim), np.float32)
    return EmbeddedCases(image_vectors, text_vectors, records)


def _select(manifest: Manifest, splits: Sequence[str] | None) -> Manifest:
    """The rows to index; a label the card does not know is refused (the row's case would show no finding)."""
    require_known_labels(manifest)
    if not splits:
        return manifest
    unknown = sorted(set(splits) - set(manifest.splits))
    if unknown:
        raise MedvlError(f"{manifest.path}: no rows in split(s) {', '.join(unknown)}; "
                         f"splits present: {', '.join(manifest.splits)}")
    return manifest.subset([s for s in manifest.samples if s.split in set(splits)])


def _manifest_entry(manifest: Manifest, splits: Sequence[str] | None, n: int) -> dict[str, Any]:
    return {"path": str(manifest.path.resolve()), "sha256": file_sha256(manifest.path),
            "splits": list(splits or []), "rows": n}


def model_spec_string(spec: str | Path) -> str:
    """Checkpoint directories are recorded absolute so ``medvl serve --index DIR`` finds the model."""
    p = Path(str(spec))
    return str(p.resolve()) if p.is_dir() else str(spec)


def encoder_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu`` (:func:`medvl.models.encoder.resolve_device`)."""
    from medvl.models.encoder import resolve_device

    return resolve_device(device)


def build_index(model: str | Path, manifest_path: str | Path, out: str | Path, *, splits: Sequence[str] | None = None,
                kind: str = "auto", overwrite: bool = False, encoder: Any = None, batch_size: int = 32,
                threshold: int = EXACT_THRESHOLD, progress: Progress | None = None,
                device: str = "auto") -> CaseIndex:
    """Embed a manifest with ``model`` (on the GPU when present, see :func:`encoder_device`) and
    write a new index directory at ``out`` (atomically)."""
    if encoder is None:
        from medvl.models.encoder import load_encoder

        encoder = load_encoder(model, device=encoder_device(device))
    manifest = _select(load_manifest(manifest_path), splits)
    if len(manifest) == 0:
        raise MedvlError(f"{manifest_path}: no rows to index")
    cases = embed_manifest(encoder, manifest, batch_size=batch_size, progress=progress)
    card_yaml = yaml.safe_dump(manifest.card.to_dict(), sort_keys=False) if manifest.card else None
    return CaseIndex.create(out, model=model_spec_string(model), image_vectors=cases.image_vectors,
                            text_vectors=cases.text_vectors, records=cases.records, kind=kind,
                            manifest=_manifest_entry(manifest, splits, len(manifest)), card_yaml=card_yaml,
                            overwrite=overwrite, threshold=threshold)


def add_to_index(index_dir: str | Path, manifest_path: str | Path, *, splits: Sequence[str] | None = None,
                 encoder: Any = None, batch_size: int = 32, progress: Progress | None = None,
                 device: str = "auto") -> range:
    """Embed another manifest with the index's own model and append it; returns the new ids."""
    index = CaseIndex.open(index_dir)
    if encoder is None:
        from medvl.models.encoder import load_encoder

        encoder = load_encoder(index.meta.model, device=encoder_device(device))
    manifest = _select(load_manifest(manifest_path), splits)
    sha = file_sha256(manifest.path)
    if any(m.get("sha256") == sha and m.get("splits") == list(splits or []) for m in index.meta.manifests):
        raise CaseIndexError(f"{manifest_path} (same content and splits) is already in {index_dir}; "
                             f"adding it again would duplicate every case")
    cases = embed_manifest(encoder, manifest, batch_size=batch_size, progress=progress)
    if index.meta.has_text and cases.text_vectors is None:
        raise CaseIndexError(f"{index_dir} indexes report text but this encoder has no text tower")
    try:
        return index.add(cases.image_vectors, cases.records,
                         text_vectors=cases.text_vectors if index.meta.has_text else None,
                         manifest=_manifest_entry(manifest, splits, len(manifest)))
    finally:
        index.close()


def search_index(index_dir: str | Path, *, text: str | None = None, image: str | Path | None = None, k: int = 10,
                 space: str = "image", encoder: Any = None) -> list[tuple[float, CaseRecord]]:
    """CLI search: a report-like text or a local image file -> top-k (cosine, record), best first."""
    if (text is None) == (image is None):
        raise MedvlError("give exactly one of --text or --image")
    index = CaseIndex.open(index_dir)
    if encoder is None:
        from medvl.models.encoder import load_encoder

        encoder = load_encoder(index.meta.model)
    if text is not None:
        if not encoder.has_text:
            raise MedvlError(f"model {index.meta.model!r} has no text tower; search with --image")
        query = encode_texts(encoder, [text])
    else:
        query = encode_pictures(encoder, [read_picture(Path(image), volume=encoder_spatial_dims(encoder) == 3,  # type: ignore[arg-type]
                                                       volume_policy=getattr(encoder, "volume_policy", None))])
    hits = index.search(query, k, space=space)[0]
    records = index.get([i for i, _ in hits], thumbnails=False)
    index.close()
    return [(score, rec) for (_, score), rec in zip(hits, records, strict=True)]
