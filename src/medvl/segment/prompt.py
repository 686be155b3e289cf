"""Text-prompted masks, zero-shot: the grounding heat map of a phrase, thresholded and cleaned.

"left pleural effusion" + an image -> a mask, with no segmentation training at all:

1. **heat map**: :func:`medvl.evaluate.grounding.grounding_map` -- each word of the phrase attends
   over the image's patch features (GLoRIA region attention, the map ``medvl eval grounding``
   scores), upsampled bilinearly to the image; then min-max normalised to [0, 1] per map, so one
   threshold means the same on every image;
2. **threshold**: chosen on the *validation* split (:func:`choose_threshold`: the value of a grid
   maximising mean Dice over the validation pairs), never on the split being scored;
3. **connected components**: the thresholded map keeps its largest component (a finding of these
   datasets is one region; a user can keep all with ``keep="all"``), removing speckle where
   attention leaks onto unrelated patches.

Why zero-shot from grounding rather than a learnt decoder only: it is free for any CLIP model
with local features and shows how much localisation the pretraining alone gives; the trained
alternatives (the dense heads, box prompts) are measured against it with the same metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

THRESHOLDS = tuple(np.round(np.linspace(0.1, 0.9, 17), 3).tolist())


def normalise(heat: np.ndarray) -> np.ndarray:
    lo, hi = float(heat.min()), float(heat.max())
    return np.zeros_like(heat, dtype=np.float32) if hi <= lo else ((heat - lo) / (hi - lo)).astype(np.float32)


@torch.no_grad()
def text_heatmaps(net: Any, images: torch.Tensor, phrases: Sequence[str], sizes: Sequence[tuple[int, int]],
                  temperature: float = 10.0) -> list[np.ndarray]:
    """One normalised ``[H, W]`` heat map per (image, phrase), at each image's own size ``sizes[i]``.

    ``net``: a medvl :class:`~medvl.models.clip.CLIPModel` with a 2D tower; ``images`` ``[B, C, S, S]``
    in [0, 1] at the model's input size.
    """
    from medvl.evaluate.grounding import grounding_map, word_features

    device = next(net.parameters()).device
    _, patches, grid = net.encode_image_tokens(images.to(device, torch.float32))
    patches = F.normalize(patches.float(), dim=-1).cpu()
    words = word_features(net, list(phrases), device)
    return [normalise(grounding_map(patches[i], grid, words[i], sizes[i], temperature).numpy())
            for i in range(len(phrases))]


def refine(heat: np.ndarray, threshold: float, keep: str = "largest") -> np.ndarray:
    """Threshold a normalised map and keep its largest connected component (``keep="all"``: every one)."""
    mask = heat >= threshold
    if keep == "all" or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def choose_threshold(heats: Sequence[np.ndarray], masks: Sequence[np.ndarray], keep: str = "largest",
                     grid: Sequence[float] = THRESHOLDS) -> tuple[float, dict[float, float]]:
    """The grid threshold with the best mean Dice over (heat, mask) pairs, and the whole curve."""
    from medvl.evaluate.segment_metrics import dice

    curve = {float(t): float(np.mean([dice(refine(h, t, keep), m) for h, m in zip(heats, masks, strict=True)]))
             for t in grid}
    best = max(curve, key=lambda t: (curve[t], -t))
    return best, curve


def box_channel(box: Sequence[float], shape: tuple[int, int], where: str = "box") -> np.ndarray:
    """A box ``(x0, y0, x1, y1)`` in pixels (x1/y1 exclusive) as a 0/1 ``[H, W]`` map; refuses boxes off the image."""
    from medvl.errors import MedvlError

    h, w = shape
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise MedvlError(f"{where}: a box is four numbers x0,y0,x1,y1, got {box!r}") from exc
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise MedvlError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not inside the {w}x{h} image "
                         "(need 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height)")
    out = np.zeros((h, w), dtype=np.float32)
    out[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` of a non-empty 2D mask (exclusive upper ends)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
