"""Phrase-grounding thumbnails for the bench report: what does the model look at for a finding?

For a few (image, finding) pairs of a split, chosen deterministically (the first usable pair of
each of the first ``n`` distinct findings, in manifest row order), :func:`grounding_examples`
recomputes the word-to-patch attention map of the pair's query phrase with the trained model
and draws one small PNG: the image in grey (as the model sees it: same decode and ``pad``
resize), the map as a semi-transparent colour overlay (opacity grows with attention, so
unattended regions stay plain grey), the finding's mask as a cyan outline and the map's maximum
as a black ``+``. Each example also says whether the pointing game hit.

The phrases, maps and pointing game come from :mod:`medvl.evaluate.grounding`
(:func:`~medvl.evaluate.grounding.grounding_pairs`, :func:`~medvl.evaluate.grounding.grounding_map`,
:func:`~medvl.evaluate.grounding.pointing_game`) with the evaluated temperature, so a thumbnail
shows the same map the metric scored. Its model, image and mask loading helpers are private, so
the few lines they need (encoder checks, word-token features, decode + resize, mask binarising)
are re-implemented here with the same public building blocks (:func:`~medvl.data.transforms.prepare_uint8`,
:func:`~medvl.data.transforms.resize`, ``CLIPModel.encode_image_tokens`` / ``encode_text_tokens``).

:func:`bench_grounding_examples` runs this for every grounding section of a finished bench (the
report knows each model's encoder spec or trained checkpoint), and :func:`examples_html`
renders the rows as self-contained HTML (base64 PNG data URIs, no external URL).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.errors import MedvlError

if TYPE_CHECKING:
    from medvl.bench.suite import Suite
    from medvl.data.manifest import Manifest, Sample
    from medvl.evaluate.grounding import GroundingPair

log = logging.getLogger(__name__)

THUMB_SIZE = 96  # px; larger than the 72 px retrieval thumbnails so the overlay and outline stay readable
N_EXAMPLES = 4
PHRASE_CHARS = 60
MAX_ALPHA = 0.65  # overlay opacity at the map's maximum (0 at its minimum)
OUTLINE_RGB = (0, 229, 255)  # cyan: stands out from both the grey image and the warm colour map
MARKER_RGB = (0, 0, 0)
# inferno-like ramp (dark purple -> red -> yellow): monotone in lightness, readable in grey print
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


@dataclass
class GroundingExample:
    """One thumbnail: the pair it shows, its query phrase, the pointing game and the PNG bytes."""

    image: str  # the image path as written in the manifest
    finding: str
    phrase: str
    fell_back: bool  # the phrase is the class name (no report sentence names the finding)
    hit: bool  # the map's maximum lies inside the mask
    png: bytes


# ----------------------------------------------------------------------------- images
def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB floats ``[..., 3]`` in [0, 255] along the colour ramp."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.minimum(np.floor(v).astype(int), len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    return _RAMP[lo] * (1.0 - frac) + _RAMP[lo + 1] * frac


def overlay_png(grey: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """PNG bytes (``size`` x ``size``, RGB) of a grey image with the map overlaid and the mask outlined.

    ``grey`` ``[H, W]`` uint8, ``heatmap`` ``[H, W]`` (any range, min-max normalised here) and
    ``mask`` ``[H, W]`` bool share one pixel frame (the model's input). The image and map are
    resized bilinearly, the mask with nearest neighbours; the outline is the mask's inner border
    at the thumbnail's resolution (1 px), the ``+`` marks the map's (first) maximum.
    """
    from PIL import Image
    from scipy import ndimage

    from medvl.evaluate.grounding import normalise_map

    g = np.asarray(grey)
    if g.shape != np.shape(heatmap) or g.shape != np.shape(mask):
        raise ValueError(f"image {g.shape}, map {np.shape(heatmap)} and mask {np.shape(mask)} differ in shape")
    h, w = g.shape
    base = np.asarray(Image.fromarray(g.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float64)
    heat = normalise_map(heatmap).astype(np.float32)
    heat = np.clip(np.asarray(Image.fromarray(heat).resize((size, size), Image.BILINEAR)), 0.0, 1.0)
    alpha = (MAX_ALPHA * heat)[..., None]
    rgb = base[..., None] * (1.0 - alpha) + colorize(heat) * alpha
    m = np.asarray(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
                   .resize((size, size), Image.NEAREST)) > 127
    rgb[m & ~ndimage.binary_erosion(m, border_value=0)] = OUTLINE_RGB
    r, c = np.unravel_index(int(np.argmax(np.asarray(heatmap))), (h, w))  # argmax as the pointing game takes it
    y, x = int((r + 0.5) * size / h), int((c + 0.5) * size / w)
    arm = max(2, size // 32)
    rgb[max(0, y - arm):y + arm + 1, min(x, size - 1)] = MARKER_RGB
    rgb[min(y, size - 1), max(0, x - arm):x + arm + 1] = MARKER_RGB
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- model and data
def _load_u8(manifest: Manifest, sample: Sample, pre: dict[str, Any]) -> torch.Tensor:
    """The model-frame uint8 image ``[C, S, S]``: decode, channels, pad resize (as the evaluator loads it)."""
    from medvl.data.cache import decode_uint8
    from medvl.data.transforms import prepare_uint8
    from medvl.evaluate.grounding import RESIZE_MODE

    arr, dims = decode_uint8(manifest.resolve(sample.image[0]))
    if dims != 2:
        raise MedvlError(f"{manifest.path}, row {sample.row}: a volume; grounding examples are 2D only")
    return prepare_uint8(arr, pre["image_size"], pre["channels"], RESIZE_MODE, dims)


def _frame_mask(manifest: Manifest, pair: GroundingPair, size: int) -> np.ndarray:
    """The pair's mask binarised and pad-resized (nearest) to the model frame, as the evaluator does."""
    from medvl.evaluate.grounding import binary_mask, frame_mask

    return frame_mask(binary_mask(manifest, pair), size)


def grounding_examples(model: Any, manifest: Manifest | str | Path, split: str = "test", *, n: int = N_EXAMPLES,
                       size: int = THUMB_SIZE, temperature: float | None = None, device: str = "cpu",
                       encoder_options: dict[str, Any] | None = None) -> list[GroundingExample]:
    """Up to ``n`` thumbnails: the first usable pair of each of the first ``n`` distinct findings of ``split``.

    ``model``: a medvl checkpoint spec, its ``CLIPEncoder`` or a ``CLIPModel``. A pair whose mask
    is empty or full in the model frame is skipped, as the evaluator does. ``temperature``:
    the evaluated one (default :data:`~medvl.evaluate.grounding.DEFAULT_TEMPERATURE`).
    """
    from medvl.data.manifest import Manifest, load_manifest
    from medvl.data.transforms import build_transforms
    from medvl.evaluate.features import preprocessing_of
    from medvl.evaluate.grounding import (
        DEFAULT_TEMPERATURE,
        RESIZE_MODE,
        grounding_encoder,
        grounding_map,
        grounding_pairs,
        pointing_game,
        word_features,
    )

    enc = grounding_encoder(model, device, encoder_options)
    net = enc.model
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    pre = preprocessing_of(enc)
    s = int(pre["image_size"])
    chosen: list[tuple[GroundingPair, torch.Tensor, np.ndarray]] = []
    loaded: dict[int, torch.Tensor] = {}
    for pair in grounding_pairs(manifest, split):
        if len(chosen) >= n:
            break
        if any(p.finding == pair.finding for p, _, _ in chosen):
            continue
        mask = _frame_mask(manifest, pair, s)
        if not 0.0 < float(mask.mean()) < 1.0:
            continue
        row = pair.sample.row
        if row not in loaded:
            loaded[row] = _load_u8(manifest, pair.sample, pre)
        chosen.append((pair, loaded[row], mask))
    if not chosen:
        return []
    transform = build_transforms(s, pre["channels"], False, pre["mean"], pre["std"], resize_mode=RESIZE_MODE)
    images = torch.stack([transform({"image": u8})["image"] for _, u8, _ in chosen]).to(enc.device, torch.float32)
    in_chans = int(net.cfg.image.in_chans)
    if images.shape[1] != in_chans:  # grey data into an RGB tower, as Encoder adapts channels
        images = images.expand(-1, in_chans, -1, -1) if images.shape[1] == 1 else images.mean(1, keepdim=True)
    with torch.no_grad():
        _, patches, grid = net.encode_image_tokens(images)
    patches = F.normalize(patches.float(), dim=-1).cpu()
    words = word_features(net, [p.phrase for p, _, _ in chosen], enc.device)
    temp = DEFAULT_TEMPERATURE if temperature is None else float(temperature)
    out = []
    for b, (pair, u8, mask) in enumerate(chosen):
        heat = grounding_map(patches[b], grid, words[b], mask.shape, temp).numpy()
        grey = u8.float().mean(0).round().clamp(0, 255).to(torch.uint8).numpy()
        out.append(GroundingExample(image=pair.sample.image[0], finding=pair.finding, phrase=pair.phrase,
                                    fell_back=pair.fell_back, hit=pointing_game(heat, mask) == 1.0,
                                    png=overlay_png(grey, heat, mask, size)))
    return out


# ----------------------------------------------------------------------------- bench report
def _is_grounding(task: str) -> bool:
    return task.split(" [")[0].startswith("grounding")


def shown_models(suite: Suite, models: Sequence[str]) -> list[str]:
    """``models`` without the family members after the first one (``name@0`` stands for ``name@*``)."""
    out = []
    for m in models:
        fam = suite.family_of(m)
        if fam is None or next(iter(suite.families[fam[0]].values())) == m:
            out.append(m)
    return out


def model_checkpoint(suite: Suite, name: str, out_dir: Path) -> tuple[str, dict[str, Any]]:
    """(encoder spec, encoder options) the bench evaluated ``name`` with: its ``encoder`` or its trained ``final``."""
    from medvl.bench.store import train_run_dir

    spec = suite.models[name]
    if spec.encoder:
        return spec.encoder, dict(spec.options)
    final = train_run_dir(name, spec, out_dir, {}) / "final"
    if not (final / "weights.safetensors").is_file():
        raise MedvlError(f"no trained checkpoint at {final}")
    return str(final), dict(spec.options)


def _temperature(runs: list[tuple[int, Any]]) -> float | None:
    for _, r in runs:
        for rec in r.records:
            if isinstance(rec.config, dict) and "temperature" in rec.config:
                return float(rec.config["temperature"])
    return None


ExampleRows = list[tuple[str, "list[GroundingExample] | str"]]


def bench_grounding_examples(suite: Suite, sections: Sequence[tuple], manifests: dict[str, Path], out_dir: Path,
                             n: int = N_EXAMPLES) -> dict[tuple[str, str, str], ExampleRows]:
    """Per grounding section ``(task, dataset, split)``: (model, its examples or why there are none).

    ``sections`` as built by the report (key first, then ``{model: [(seed, result)]}``). A model
    whose examples cannot be made gets a one-line reason instead; nothing here fails the report.
    """
    out: dict[tuple[str, str, str], ExampleRows] = {}
    for key, models, *_ in sections:
        task, dataset, split = key
        if not _is_grounding(task) or dataset not in manifests:
            continue
        rows: ExampleRows = []
        for name in shown_models(suite, list(models)):
            try:
                spec, options = model_checkpoint(suite, name, out_dir)
                rows.append((name, grounding_examples(spec, manifests[dataset], split, n=n, device=suite.device,
                                                      temperature=_temperature(models[name]),
                                                      encoder_options=options)))
            except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not break the report
                log.warning("grounding examples for %s (%s): %s", name, task, exc)
                rows.append((name, str(exc) if isinstance(exc, MedvlError) else f"{type(exc).__name__}: {exc}"))
        if rows:
            out[tuple(key)] = rows
    return out


def _truncate(text: str, n: int = PHRASE_CHARS) -> str:
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def examples_html(rows: ExampleRows, split: str = "test") -> str:
    """The report fragment: a legend, then per model a row of captioned thumbnails (empty without rows)."""
    esc = html.escape
    if not rows:
        return ""
    out = [f"<h3>Grounding examples ({esc(split)} split)</h3>",
           "<p class='meta'>Grey: the image as the model sees it; colour: attention of the query phrase's words "
           "over the image (more opaque and yellower = more attention); cyan line: the finding's mask; black +: the "
           "map's maximum, a pointing-game hit when it lies inside the mask. First pair of each of the first "
           f"{N_EXAMPLES} findings; one model per family.</p><div class='gcases'>"]
    for name, examples in rows:
        out.append(f"<div class='gcase'><b>{esc(name)}</b>")
        if isinstance(examples, str):
            out.append(f"<div class='meta'>no examples: {esc(_truncate(examples, 200))}</div></div>")
            continue
        if not examples:
            out.append("<div class='meta'>no usable mask in this split</div></div>")
            continue
        out.append("<div class='gfigs'>")
        for ex in examples:
            verdict = "hit" if ex.hit else "miss"
            phrase = ex.phrase + (" (class name: no report sentence names it)" if ex.fell_back else "")
            alt = (f"{name}: attention map of the phrase '{ex.phrase}' on image {Path(ex.image).name}, "
                   f"{ex.finding} mask outlined; pointing game {verdict}")
            src = base64.b64encode(ex.png).decode()
            out.append(f"<figure class='gfig'><img alt='{esc(alt)}' title='{esc(phrase)}' "
                       f"src='data:image/png;base64,{src}'><figcaption><b>{esc(ex.finding)}</b><br>"
                       f"<q>{esc(_truncate(ex.phrase))}</q><br><span class='{'ghit' if ex.hit else 'fail'}'>"
                       f"{'✓' if ex.hit else '✗'} pointing {verdict}</span></figcaption></figure>")
        out.append("</div></div>")
    out.append("</div>")
    return "\n".join(out)
