"""Phrase grounding: does the model's word-to-patch similarity point at the finding's mask?

``medvl eval grounding`` needs a manifest whose rows carry binary masks: column ``mask`` lists the
mask paths (``|``-separated, 0/255 or 0/1 images at the image's resolution) and column
``mask_labels`` names the finding of each mask in the same order (``medvl data synth`` writes
both). For every (image, mask, finding) *pair* of the split:

1. **Query phrase.** The first sentence of the report that mentions the finding (its class name
   or a card synonym, case-insensitive, plural allowed) without negating it; else the class name
   itself (counted in the record config as ``n_fallback_phrases``). Why the report's own sentence
   rather than a prompt: grounding benchmarks (MS-CXR) query with the radiologist's phrase, and
   the sentence carries the laterality and location words a good model should use. Negation is
   NegEx-lite: the text is cut into clauses (``;``, "but", "however", "although"), and a mention
   is negated when a cue (no, without, negative for, free of, absence of, not, rule out) comes
   before it in its clause, or a post-cue (not seen, not identified, absent, resolved, ruled out)
   after it. So a sentence starting with "No ..." or containing "no <finding>" never qualifies.
   A wrongly negated sentence only costs a fallback; a wrongly kept one would ground "no effusion".
2. **Heat map.** With ``P`` the image's L2-normalised local features ``[h*w, E]`` (row-major over
   the tower's last feature map or ViT patch grid) and ``T`` the phrase's word-token features
   ``[n_words, E]`` (``word_mask``: no padding/[CLS]/[SEP]), each word attends over the patches
   with ``softmax(temperature * T @ P.T)`` and the map is the mean over words (GLoRIA, Huang et
   al. 2021, region attention). The temperature is a fixed argument (default 10), not the model's
   logit scale: that scale (up to 100) is tuned for contrasting whole images across a batch, and
   over patches it makes every word's attention one-hot, so the averaged map collapses to a few
   spikes; a fixed value also keeps maps of different models comparable. (For a single word the
   softmax is monotone in cosine, so pointing game and map AUROC do not depend on it; IoU and
   multi-word averages do.) The ``[h, w]`` map is upsampled **bilinearly** (``align_corners=False``,
   each cell's value at its centre, as for CAM) to the model's input size: a nearest upsampling
   would make blocks of tied pixels, turning the argmax and the AUROC ranking into tie-breaking.
3. **Masks** are read, binarised and resized exactly like the image (the model's
   :func:`~medvl.evaluate.features.preprocessing_of` size, aspect-preserving ``pad`` resize of
   :mod:`medvl.data.transforms`, but nearest-neighbour), so map and mask share one pixel frame.
   A mask that is empty or covers the whole image after resizing defines no localisation task
   (pointing is trivially 0 or 1, AUROC undefined); such pairs are left out with a warning and
   counted (``n_skipped_masks``).

Metrics per pair, averaged over pairs (records ``pointing_game``, ``iou@<threshold>``,
``map_auroc``; ``per_class`` = the mean per finding):

* ``pointing_game``: 1 if the map's argmax pixel lies inside the mask (Zhang et al. 2016; ties go
  to the first pixel in row-major order). Its chance level, the mean mask area fraction (a
  uniformly random point's hit rate), is in the config as ``chance_pointing_game`` (also per
  finding) so a useful map can be told from a random one;
* ``iou@t``: the map min-max normalised to [0, 1] and binarised at ``>= t``, IoU with the mask (a
  constant map predicts no region: IoU 0);
* ``map_auroc``: AUROC of the map's pixel values against the mask pixels (ties count 1/2; a
  constant map scores 0.5).

CIs are percentile bootstraps (:func:`medvl.evaluate.stats.bootstrap_statistic`) that resample
patients (``patient_id``; a row without one is its own group): all pairs of a patient's images
move together. Per-pair values are stored as ``extra`` arrays of the predictions (ids
``<image id>#<finding>``, labels one-hot over the classes, no scores, like retrieval), so ``medvl
eval compare`` can run paired tests between two models' grounding results.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from medvl.data.card import DatasetCard
from medvl.data.manifest import Manifest, Sample, load_manifest
from medvl.errors import ConfigError, ImageReadError, ManifestError, MedvlError

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 10.0
DEFAULT_THRESHOLD = 0.5
TASK = "grounding"
RESIZE_MODE = "pad"  # what ManifestDataset (hence every other evaluator) uses

# ----------------------------------------------------------------------------- metrics


def normalise_map(heatmap: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros (it singles out no region)."""
    h = np.asarray(heatmap, dtype=np.float64)
    lo, hi = float(h.min()), float(h.max())
    return (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)


def _check_shapes(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, m = np.asarray(heatmap), np.asarray(mask).astype(bool)
    if h.shape != m.shape:
        raise ValueError(f"heat map {h.shape} and mask {m.shape} differ in shape")
    return h, m


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1.0 if the map's maximum (first in row-major order on ties) lies inside the mask, else 0.0."""
    h, m = _check_shapes(heatmap, mask)
    return float(m.flat[int(np.argmax(h))])


def iou_at_threshold(heatmap: np.ndarray, mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """IoU of ``normalise_map(heatmap) >= threshold`` with the mask (NaN when both are empty)."""
    h, m = _check_shapes(heatmap, mask)
    pred = normalise_map(h) >= threshold
    union = int(np.sum(pred | m))
    return float(np.sum(pred & m) / union) if union else float("nan")


def map_auroc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of pixel values vs mask pixels (Mann-Whitney with midranks, = sklearn's roc_auc_score).

    NaN when the mask is empty or full. Written with ``rankdata`` rather than sklearn because it
    runs once per pair on every pixel, where sklearn's input validation costs more than the ranking.
    """
    h, m = _check_shapes(heatmap, mask)
    y = m.ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(h.ravel().astype(np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def metric_names(threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """Record names in report order: ``pointing_game``, ``iou@<threshold>``, ``map_auroc``."""
    return ["pointing_game", f"iou@{threshold:g}", "map_auroc"]


def pair_metrics(heatmap: np.ndarray, mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The three grounding metrics of one (map, mask) pair, keyed by :func:`metric_names`."""
    pg, iou, auc = metric_names(threshold)
    return {pg: pointing_game(heatmap, mask), iou: iou_at_threshold(heatmap, mask, threshold),
            auc: map_auroc(heatmap, mask)}


# ----------------------------------------------------------------------------- heat maps


def grounding_map(patch_features: torch.Tensor, grid: Sequence[int], word_features: torch.Tensor,
                  size: Sequence[int] | None = None, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Word-to-patch attention map of one image and one phrase, ``[H, W]`` (or ``[h, w]`` without ``size``).

    ``patch_features`` ``[h*w, E]`` row-major (cell ``(r, c)`` at index ``r * w + c``) and
    ``word_features`` ``[n_words, E]``, both L2-normalised; each word's softmax over patches of
    ``temperature * cos`` is averaged over words, reshaped to the grid and upsampled bilinearly
    to ``size`` (see the module docstring for why).
    """
    if len(grid) not in (2, 3):
        raise ConfigError(f"grounding needs a 2D (h, w) or 3D (d, h, w) patch grid, got {tuple(grid)}")
    dims = tuple(int(g) for g in grid)
    p = patch_features.float()
    t = word_features.float()
    if p.ndim != 2 or p.shape[0] != int(np.prod(dims)):
        raise ValueError(f"patch features {tuple(p.shape)} do not match a {'x'.join(map(str, dims))} grid")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != p.shape[1]:
        raise ValueError(f"word features {tuple(t.shape)} do not match patch features {tuple(p.shape)}")
    attn = torch.softmax(temperature * (t @ p.T), dim=-1)  # [n_words, P]
    cells = attn.mean(0).reshape(1, 1, *dims)
    if size is None:
        return cells[0, 0]
    mode = "bilinear" if len(dims) == 2 else "trilinear"  # volumes: word-to-voxel maps
    out = F.interpolate(cells, size=tuple(int(v) for v in size), mode=mode, align_corners=False)
    return out[0, 0]


# ----------------------------------------------------------------------------- query phrases

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_HEADER = re.compile(r"^\s*(?:[A-Z][A-Z /&-]*[A-Z]|(?i:findings|impressions?|indications?|history|comparison|"
                     r"technique|conclusions?))\s*:\s*")
_CLAUSE = re.compile(r";|,?\s+\bbut\b\s+|,?\s+\bhowever\b,?\s+|,?\s+\balthough\b\s+", re.IGNORECASE)
_PRE_CUE = re.compile(r"\b(?:no|without|negative for|free of|absence of|not|rule out)\b", re.IGNORECASE)
_POST_CUE = re.compile(r"\b(?:(?:is|are|was|were)\s+)?(?:not (?:seen|identified|present|visible|evident)|absent|"
                       r"(?:has |have )?resolved|ruled out|excluded)\b", re.IGNORECASE)


def split_sentences(report: str) -> list[str]:
    """Sentences of a report, section headers ("FINDINGS:", "Impression:") and end punctuation removed."""
    out = []
    for raw in _SENTENCE_END.split(report or ""):
        s = raw.strip()
        while True:  # "IMPRESSION: ..." (also a header left at the start of a later sentence)
            stripped = _HEADER.sub("", s, count=1)
            if stripped == s:
                break
            s = stripped
        s = s.strip().rstrip(".!?;: ").strip()
        if s:
            out.append(s)
    return out


def finding_terms(finding: str, card: DatasetCard | None = None) -> list[str]:
    """The words that name a finding: its class name and the card's synonyms, longest first."""
    terms = [finding]
    if card is not None and finding in card.class_names:
        terms += card.class_info(finding).synonyms
    uniq = list(dict.fromkeys(t.strip() for t in terms if t.strip()))
    return sorted(uniq, key=len, reverse=True)


def _term_pattern(terms: Sequence[str]) -> re.Pattern[str]:
    alts = "|".join(r"\s+".join(re.escape(w) for w in t.split()) for t in terms)
    return re.compile(rf"\b(?:{alts})(?:e?s)?\b", re.IGNORECASE)


def mentions(sentence: str, terms: Sequence[str]) -> list[bool]:
    """For each mention of ``terms`` in ``sentence``: is it negated? (empty list: not mentioned)."""
    if not terms:
        return []
    pattern = _term_pattern(terms)
    out = []
    for clause in _CLAUSE.split(sentence):
        for m in pattern.finditer(clause):
            before, after = clause[: m.start()], clause[m.end():]
            out.append(bool(_PRE_CUE.search(before)) or bool(_POST_CUE.search(after)))
    return out


def query_phrase(report: str, finding: str, card: DatasetCard | None = None) -> tuple[str, bool]:
    """``(phrase, fell_back)``: the first sentence naming ``finding`` without negating it, else its name.

    Example: for "No left pneumothorax. Small right pneumothorax." and ``pneumothorax`` the
    phrase is "Small right pneumothorax"; with no qualifying sentence it is ``("pneumothorax", True)``.
    """
    terms = finding_terms(finding, card)
    for sentence in split_sentences(report):
        found = mentions(sentence, terms)
        if found and not all(found):
            return sentence, False
    return finding, True


# ----------------------------------------------------------------------------- model


def grounding_encoder(model: Any, device: str, options: dict[str, Any] | None = None) -> Any:
    """A :class:`~medvl.models.encoder.CLIPEncoder` around a medvl CLIP model with local features.

    Accepts a spec (checkpoint directory...), an ``Encoder`` or a ``CLIPModel``; refuses with a
    message anything that cannot give both word features and a 2D patch grid.
    """
    from medvl.models.encoder import CLIPEncoder, load_encoder

    if isinstance(model, (str, Path)):
        model = load_encoder(model, device=device, **(options or {}))
    name = str(getattr(model, "name", type(model).__name__))
    if hasattr(model, "encode_image_tokens") and hasattr(model, "cfg"):  # a bare CLIPModel
        model = CLIPEncoder(model, name=name, device=device)
    net = getattr(model, "model", None)
    if net is None or not hasattr(net, "encode_image_tokens"):
        if name.startswith("timm:") or not getattr(model, "has_text", False):
            raise MedvlError(f"grounding needs a text tower to embed the query phrases; {name!r} is an image-only "
                             "encoder (timm: specs have no text tower); use a medvl CLIP checkpoint")
        raise MedvlError(f"grounding needs local (patch) image features, which medvl CLIP checkpoints give; "
                         f"{name!r} ({type(model).__name__}) gives pooled embeddings only")
    if not getattr(model, "has_text", False) or not getattr(net.tokenizer, "trained", False):
        raise MedvlError(f"grounding needs a text tower with a trained tokenizer to embed the query phrases; "
                         f"{name!r} has none")
    image_cfg = net.cfg.image
    if not hasattr(net.visual, "forward_tokens"):
        raise ConfigError(f"grounding needs an image tower with local features (a patch grid); {name!r} has "
                          f"image.type={image_cfg.type!r} (its tower gives no local features)")
    return model


@torch.no_grad()
def word_features(net: Any, phrases: Sequence[str], device: torch.device,
                  batch_size: int = 64) -> list[torch.Tensor]:
    """Per phrase: its normalised word-token features ``[n_words, E]`` on CPU (all tokens if none are words)."""
    out: list[torch.Tensor] = []
    for i in range(0, len(phrases), batch_size):
        tok = net.tokenizer(list(phrases[i:i + batch_size]))
        ids, att = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        _, tokens = net.encode_text_tokens(ids, att)
        tokens = F.normalize(tokens.float(), dim=-1).cpu()
        words = net.word_mask(ids, att).bool().cpu()
        for j in range(tokens.shape[0]):
            keep = words[j] if words[j].any() else att[j].bool().cpu()
            out.append(tokens[j][keep])
    return out


# ----------------------------------------------------------------------------- data


@dataclass
class GroundingPair:
    """One (image, mask, finding) to evaluate; ``mask_path`` resolved against the manifest."""

    sample: Sample
    finding: str
    mask_path: Path
    phrase: str
    fell_back: bool


def _mask_labels(sample: Sample) -> str:
    return str(sample.extra.get("mask_labels") or "").strip()


def grounding_pairs(manifest: Manifest, split: str) -> list[GroundingPair]:
    """Every (row, mask, finding) of ``split`` with its query phrase; malformed rows raise naming the row."""
    from medvl.evaluate.features import split_samples

    samples = split_samples(manifest, split)
    with_mask = [s for s in samples if s.mask or _mask_labels(s)]
    if not with_mask:
        raise ManifestError(
            f"{manifest.path}: no row of split {split!r} has a mask; grounding needs the columns 'mask' "
            "(binary mask image paths, '|'-separated) and 'mask_labels' (the finding of each mask, in the "
            "same order), e.g. as written by `medvl data synth`")
    if not any("mask_labels" in s.extra for s in manifest.samples):
        raise ManifestError(f"{manifest.path}: column 'mask_labels' is missing; grounding needs it beside 'mask' "
                            "(the finding each mask outlines, '|'-separated in the order of 'mask')")
    pairs = []
    for s in with_mask:
        paths = [p.strip() for p in s.mask.split("|") if p.strip()]
        labels = [x.strip() for x in _mask_labels(s).split("|") if x.strip()]
        if len(paths) != len(labels):
            raise ManifestError(f"{manifest.path}, row {s.row}: {len(paths)} mask path(s) in 'mask' but "
                                f"{len(labels)} finding(s) in 'mask_labels' ({s.mask!r} vs {_mask_labels(s)!r}); "
                                "they must pair up one to one")
        for rel, finding in zip(paths, labels, strict=True):
            path = manifest.resolve(rel)
            if not path.exists():
                raise ManifestError(f"{manifest.path}, row {s.row}: mask file not found: {path}")
            phrase, fell_back = query_phrase(s.text, finding, manifest.card)
            pairs.append(GroundingPair(s, finding, path, phrase, fell_back))
    return pairs


def binary_mask(manifest: Manifest, pair: GroundingPair) -> np.ndarray:
    """The mask as a 2D bool array at its own resolution (0/1, 0/255, 16-bit or RGB masks)."""
    from medvl.data.io import read_image

    try:
        arr = np.asarray(read_image(pair.mask_path).array)
    except (ImageReadError, ConfigError, ValueError, OSError) as exc:
        raise ManifestError(f"{manifest.path}, row {pair.sample.row}: cannot read mask {pair.mask_path}: "
                            f"{getattr(exc, 'reason', exc)}") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4:
        arr = arr[..., :3].max(-1)
    if arr.ndim not in (2, 3):
        raise ManifestError(f"{manifest.path}, row {pair.sample.row}: mask {pair.mask_path} has shape "
                            f"{arr.shape}; grounding needs 2D masks (or 3D masks for volumes)")
    a = arr.astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    scale = 1.0 if top <= 1 else (255.0 if top <= 255 else top)
    return a >= scale / 2


def _load_image(manifest: Manifest, sample: Sample, pre: dict[str, Any],
                transform: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The model-ready image (the same decode + resize + transforms as ManifestDataset) and its source shape."""
    from medvl.data.cache import decode_uint8
    from medvl.data.transforms import prepare_uint8
    from medvl.data.volume_preprocess import as_volume_policy

    if not sample.image:
        raise ManifestError(f"{manifest.path}, row {sample.row}: empty 'image' column")
    path = manifest.resolve(sample.image[0])
    volume = pre.get("volume")  # the checkpoint's volume policy: map intensities as in training
    if volume and volume.get("target_spacing"):
        raise ConfigError("grounding does not support a volume policy with target_spacing yet (the masks would "
                          "have to be resampled too); evaluate a checkpoint trained without resampling")
    try:
        arr, dims = decode_uint8(path, as_volume_policy(volume))
    except ImageReadError as exc:
        raise ImageReadError(exc.path, f"{exc.reason} (manifest {manifest.path}, row {sample.row})") from exc
    try:
        u8 = prepare_uint8(arr, pre["image_size"], pre["channels"], RESIZE_MODE, dims)
    except (ValueError, ConfigError, OSError) as exc:
        raise ImageReadError(path, f"{exc} (manifest {manifest.path}, row {sample.row})") from exc
    return transform({"image": u8})["image"], tuple(int(v) for v in arr.shape[:dims])


def _model_mask(manifest: Manifest, pair: GroundingPair, image_shape: tuple[int, ...], size: int) -> np.ndarray:
    """The binary mask in the model's input frame: the image's pad-resize with nearest interpolation."""
    m = binary_mask(manifest, pair)
    if m.ndim != len(image_shape) or (m.ndim == 3 and m.shape != tuple(image_shape)):
        raise ManifestError(f"{manifest.path}, row {pair.sample.row}: mask {pair.mask_path} has shape {m.shape} but "
                            f"the image is {tuple(image_shape)}; a volume's mask must have its shape")
    if m.ndim == 3:
        return frame_mask(m, size)
    (mh, mw), (ih, iw) = m.shape, image_shape
    if abs(mh / mw - ih / iw) > 0.01 * (ih / iw):
        raise ManifestError(f"{manifest.path}, row {pair.sample.row}: mask {pair.mask_path} is {mh}x{mw} but the "
                            f"image is {ih}x{iw}; a mask must cover the image (same size or aspect ratio)")
    return frame_mask(m, size)


def frame_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A 2D (or 3D) bool mask pad-resized (nearest) into the model's square (cubic) input frame, as images are."""
    from medvl.data.transforms import resize

    t = torch.from_numpy(mask.astype(np.uint8) * 255)[None]
    return (resize(t, size, RESIZE_MODE, interp="nearest")[0] > 127).numpy()


# ----------------------------------------------------------------------------- evaluation


def _pair_ids(pairs: Sequence[GroundingPair], image_ids: dict[int, str]) -> list[str]:
    ids, seen = [], {}
    for p in pairs:
        base = f"{image_ids[p.sample.row]}#{p.finding}"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids


def grounding_eval(model: Any, manifest: Manifest | str | Path, split: str = "test", *, n_boot: int = 1000,
                   seed: int = 0, batch_size: int = 64, threshold: float = DEFAULT_THRESHOLD,
                   temperature: float = DEFAULT_TEMPERATURE, device: str = "cpu", model_name: str | None = None,
                   dataset: str | None = None) -> Any:
    """Grounding result (:class:`~medvl.evaluate.results.EvalResult`) of ``model`` on the masks of ``split``.

    ``model``: a medvl checkpoint spec, its ``CLIPEncoder`` or a ``CLIPModel`` (the image tower must
    give a 2D grid of local features and the text tower word features). Records ``pointing_game``,
    ``iou@<threshold>`` and ``map_auroc`` with patient-level bootstrap CIs and per-finding values;
    the config holds the chance level, the fallback-phrase count and the settings.
    """
    from medvl.data.transforms import build_transforms
    from medvl.evaluate.features import preprocessing_of, sample_ids
    from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, _clean
    from medvl.evaluate.stats import bootstrap_statistic

    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"--threshold must be in (0, 1] (the min-max normalised map is binarised at it), "
                          f"got {threshold}")
    if not float(temperature) > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    enc = grounding_encoder(model, device)
    net = enc.model
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    pairs = grounding_pairs(manifest, split)
    pre = preprocessing_of(enc)
    size = int(pre["image_size"])
    transform = build_transforms(size, pre["channels"], False, pre["mean"], pre["std"], resize_mode=RESIZE_MODE)
    phrases = list(dict.fromkeys(p.phrase for p in pairs))
    words = dict(zip(phrases, word_features(net, phrases, enc.device, batch_size), strict=True))

    by_row: dict[int, list[GroundingPair]] = {}
    for p in pairs:
        by_row.setdefault(p.sample.row, []).append(p)
    samples = [ps[0].sample for ps in by_row.values()]
    names = metric_names(threshold)
    kept: list[GroundingPair] = []
    values: dict[str, list[float]] = {n: [] for n in names}
    fractions: list[float] = []
    skipped: list[str] = []
    grid_seen: tuple[int, ...] = ()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        loaded = [_load_image(manifest, s, pre, transform) for s in chunk]
        images = torch.stack([img for img, _ in loaded]).to(enc.device, torch.float32)
        if images.shape[1] != net.cfg.image.in_chans:  # grey data into an RGB tower (as Encoder does)
            images = enc._adapt_channels(images)
        with torch.no_grad():
            _, patches, grid = net.encode_image_tokens(images)
        grid_seen = tuple(int(g) for g in grid)
        patches = F.normalize(patches.float(), dim=-1).cpu()
        for b, (s, (_, shape)) in enumerate(zip(chunk, loaded, strict=True)):
            for p in by_row[s.row]:
                mask = _model_mask(manifest, p, shape, size)
                frac = float(mask.mean())
                if frac in (0.0, 1.0):
                    skipped.append(f"row {s.row} {p.finding} ({'empty' if frac == 0 else 'full'})")
                    continue
                heat = grounding_map(patches[b], grid_seen, words[p.phrase], mask.shape, temperature).numpy()
                for k, v in pair_metrics(heat, mask, threshold).items():
                    values[k].append(v)
                fractions.append(frac)
                kept.append(p)
    if skipped:
        warnings.warn(f"grounding: {len(skipped)} mask(s) are empty or cover the whole image at {size} px and "
                      f"are left out: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
                      RuntimeWarning, stacklevel=2)
    if not kept:
        raise ManifestError(f"{manifest.path}: no usable mask in split {split!r} ({len(skipped)} empty/full "
                            f"at {size} px)")

    classes = list(manifest.classes) + sorted({p.finding for p in kept} - set(manifest.classes))
    labels = np.zeros((len(kept), len(classes)), dtype=np.float32)
    for j, p in enumerate(kept):
        labels[j, classes.index(p.finding)] = 1.0
    image_ids = dict(zip([s.row for s in samples], sample_ids(samples).tolist(), strict=True))
    groups = np.array([p.sample.group_id for p in kept], dtype=str)
    per_pair = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    findings = np.array([p.finding for p in kept])
    frac_arr = np.asarray(fractions)
    present = [c for c in classes if np.any(findings == c)]
    n_fallback = sum(p.fell_back for p in kept)
    config = {
        "threshold": float(threshold), "temperature": float(temperature), "image_size": size,
        "patch_grid": list(grid_seen), "resize_mode": RESIZE_MODE, "upsampling": "bilinear",
        "n_pairs": len(kept), "n_images": len({p.sample.row for p in kept}),
        "n_fallback_phrases": int(n_fallback), "n_skipped_masks": len(skipped),
        "chance_pointing_game": float(frac_arr.mean()),
        "chance_pointing_game_per_class": {c: float(frac_arr[findings == c].mean()) for c in present},
        "pairs_per_class": {c: int(np.sum(findings == c)) for c in present},
        "n_boot": n_boot, "bootstrap_seed": seed,
    }
    model_name = model_name if model_name is not None else str(getattr(enc, "name", ""))
    dataset = dataset if dataset is not None else (manifest.card.name if manifest.card else manifest.root.name)
    preds = Predictions(ids=_pair_ids(kept, image_ids), scores=np.zeros((len(kept), 0)), labels=labels,
                        label_task="", classes=classes, patient_ids=groups,
                        rows=np.array([p.sample.row for p in kept], dtype=np.int64), extra=per_pair)
    preds.meta.update({"model": model_name, "task": TASK, "dataset": dataset, "split": split,
                       "config": _clean(config), "phrases": [p.phrase for p in kept]})
    records = []
    for name in names:
        v = per_pair[name]
        ci = (bootstrap_statistic(v, np.nanmean, groups, n_boot=n_boot, seed=seed, name=name)
              if n_boot else None)
        per_class = {c: (float(np.nanmean(v[findings == c])) if np.any(~np.isnan(v[findings == c])) else None)
                     for c in present}
        records.append(MetricRecord(
            model=model_name, task=TASK, dataset=dataset, split=split, metric=name,
            value=float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan"),
            ci_low=ci.low if ci else None, ci_high=ci.high if ci else None, n=preds.n, n_groups=preds.n_groups,
            config=_clean(config), classes=list(classes), per_class=per_class))
    log.info("grounding: %d pairs of %d images, grid %s, %d fallback phrases", len(kept), config["n_images"],
             grid_seen, n_fallback)
    return EvalResult(records=records, predictions=preds)


def grounding_table(result: Any) -> Any:
    """Rich table per finding: pairs, each metric and the pointing-game chance level."""
    from rich.table import Table

    recs = result.records
    cfg = recs[0].config if recs else {}
    table = Table(title="grounding per finding (chance = mean mask area, the pointing game of a random point)")
    for col in ["finding", "pairs", *[r.metric for r in recs], "chance"]:
        table.add_column(col, justify="left" if col == "finding" else "right")

    def fmt(v: Any) -> str:
        return "nan" if v is None else f"{float(v):.3f}"

    for c, n in (cfg.get("pairs_per_class") or {}).items():
        table.add_row(c, str(n), *[fmt((r.per_class or {}).get(c)) for r in recs],
                      fmt((cfg.get("chance_pointing_game_per_class") or {}).get(c)))
    table.add_section()
    table.add_row("all", str(cfg.get("n_pairs", "")), *[fmt(r.value) for r in recs],
                  fmt(cfg.get("chance_pointing_game")))
    table.caption = (f"{cfg.get('n_fallback_phrases', 0)} of {cfg.get('n_pairs', 0)} query phrases fell back to the "
                     f"class name; threshold {cfg.get('threshold')}, temperature {cfg.get('temperature')}, "
                     f"grid {cfg.get('patch_grid')}")
    return table
