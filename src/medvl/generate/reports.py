"""Generated reports for a manifest split or single images, and their JSONL file.

The file format is the one the report metrics read (``medvl eval reports``): one JSON object
per line, ``{"study_id": ..., "report": ...}``, keyed by the manifest's study id (falling back
to the row's ``id`` column, then its row number, as the report metrics do). Rows that share a
study id get one report, written from the first row's image(s). Images go through the same preprocessing as training
(:class:`~medvl.data.dataset.ManifestDataset`, no augmentation; the model normalises inside).

Bad output is never written silently: an empty report (the decoder ended at once, or produced
only special tokens) raises naming the study; reports cut at ``max_new_tokens`` are listed in
:attr:`ReportRun.truncated` and flagged ``"truncated": true`` in the file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medvl.data.manifest import Manifest, Sample, load_manifest
from medvl.errors import ManifestError, MedvlError
from medvl.generate.decoding import DecodeConfig, Generation


class GenerationError(MedvlError):
    """A generation that cannot be used as a report (empty), named by study."""


def study_key(sample: Sample) -> str:
    """The id a report is stored under: the study id, else the row's ``id`` column, else its row
    number (the keys :func:`medvl.evaluate.reports.report_references` scores against)."""
    return sample.study_id or str(sample.extra.get("id") or "").strip() or str(sample.row)


@dataclass
class ReportRun:
    """Reports by study id, in manifest order, plus what a user must know about them."""

    reports: dict[str, str]
    truncated: list[str] = field(default_factory=list)
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def reports_per_s(self) -> float:
        return len(self.reports) / max(self.seconds, 1e-9)


def unique_studies(manifest: Manifest, split: str | None) -> list[Sample]:
    """One sample per study of ``split`` (``None``: every row), in manifest order."""
    samples = manifest.samples if split is None else [s for s in manifest.samples if s.split == split]
    if not samples:
        raise ManifestError(f"{manifest.path}: no rows in split {split!r}; splits present: "
                            f"{', '.join(manifest.splits) or '(none)'}")
    seen: dict[str, Sample] = {}
    for s in samples:
        seen.setdefault(study_key(s), s)
    return list(seen.values())


def image_batches(manifest: Manifest, samples: Sequence[Sample], image_size: int, channels: int,
                  batch_size: int, volume_policy: Any = None) -> Any:
    """``(study ids, images [B, C, H, W] in [0, 1])`` batches with the training preprocessing."""
    from medvl.data.dataset import ManifestDataset, collate_samples
    from medvl.train.data import IDENTITY_MEAN, IDENTITY_STD

    sub = manifest.subset(list(samples))
    ds = ManifestDataset(sub, split=None, image_size=image_size, channels=channels if channels in (1, 3) else 1,
                         augment=False, mean=IDENTITY_MEAN, std=IDENTITY_STD, volume_policy=volume_policy)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    by_row = {s.row: study_key(s) for s in samples}
    for batch in loader:
        yield [by_row[int(r)] for r in batch["row"]], batch["image"]


def single_image_manifest(path: str | Path) -> Manifest:
    """A one-row manifest for ``--image FILE`` (study id: the file name without its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"image not found: {path}")
    sample = Sample(row=1, image=[path.name], split="test", study_id=path.stem)
    return Manifest(path=path.parent / f".{path.stem}.manifest.csv", samples=[sample], classes=[])


def finish_reports(ids: Sequence[str], gens: Sequence[Generation], decode_tokens: Callable[[list[int]], str],
                   run: ReportRun) -> None:
    """Decode, refuse empty reports (one line naming the study), note truncated ones."""
    for sid, g in zip(ids, gens, strict=True):
        text = decode_tokens(g.tokens)
        if not text.strip():
            raise GenerationError(f"study {sid}: the generated report is empty ({len(g.tokens)} token(s), none "
                                  f"a word); raise --min-tokens or check that the model was trained with "
                                  f"the caption objective")
        run.reports[sid] = text
        if not g.finished:
            run.truncated.append(sid)


def generate_reports(captioner: Any, manifest: Manifest | str | Path, split: str | None = "test",
                     cfg: DecodeConfig | None = None, batch_size: int = 16) -> ReportRun:
    """Write one report per study of ``split`` with ``captioner`` (see the module docstring)."""
    cfg = captioner.check_config(cfg or DecodeConfig())
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    samples = unique_studies(manifest, split)
    run = ReportRun(reports={}, meta={"model": getattr(captioner, "name", ""), "manifest": str(manifest.path),
                                      "split": split, "decoding": vars(cfg).copy()})
    t0 = time.perf_counter()
    for ids, images in image_batches(manifest, samples, captioner.image_size, captioner.in_chans, batch_size,
                                     captioner.volume_policy):
        finish_reports(ids, captioner.generate(images, cfg), captioner.decode_tokens, run)
    run.seconds = time.perf_counter() - t0
    return run


def write_predictions(run: ReportRun | dict[str, str], path: str | Path) -> Path:
    """JSONL ``{"study_id", "report"}`` (plus ``"truncated": true`` where cut), written atomically."""
    path = Path(path)
    reports = run.reports if isinstance(run, ReportRun) else run
    cut = set(run.truncated) if isinstance(run, ReportRun) else set()
    lines = []
    for sid, text in reports.items():
        row: dict[str, Any] = {"study_id": sid, "report": text}
        if sid in cut:
            row["truncated"] = True
        lines.append(json.dumps(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    tmp.replace(path)
    return path
