"""Inference: 2D images through the model's input frame and back; volumes by sliding windows.

2D: the image ``[C, H, W]`` is resized to the model's square input (bilinear), the logits are
resized back to ``H x W`` (bilinear, before thresholding: what nnU-Net does with softmax maps),
so masks are scored and written at the image's own size.

3D: :func:`sliding_window_logits` tiles the volume with windows of the training patch size,
``overlap`` between neighbours, and averages the overlapping logits (constant weights). Window
placement is MONAI's (``monai.inferers.sliding_window_inference``: step ``int(roi * (1 -
overlap))``, last window flush with the far edge, volumes smaller than the window padded
symmetrically), so the test can use MONAI as the reference; written here (40 lines) to keep MONAI
a dev-only dependency. Masks are written as NIfTI with the input's affine
(:func:`write_nifti_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medvl.models.seg_heads import SegModel


def _positions(size: int, roi: int, overlap: float) -> list[int]:
    if size <= roi:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    n = math.ceil((size - roi) / step) + 1
    return sorted({min(i * step, size - roi) for i in range(n)})


@torch.no_grad()
def sliding_window_logits(volume: torch.Tensor, roi: Sequence[int], predictor: Callable[[torch.Tensor], torch.Tensor],
                          overlap: float = 0.25, sw_batch_size: int = 4) -> torch.Tensor:
    """``[B, C, *S]`` -> ``[B, K, *S]`` by averaging ``predictor`` over overlapping ``roi`` windows."""
    spatial = tuple(int(s) for s in volume.shape[2:])
    roi = tuple(int(r) for r in roi)
    if len(roi) != len(spatial):
        raise ValueError(f"window {roi} does not match the image's {len(spatial)} spatial dims")
    pads: list[int] = []
    for s, r in zip(reversed(spatial), reversed(roi), strict=True):  # F.pad order: last dim first
        diff = max(r - s, 0)
        pads += [diff // 2, diff - diff // 2]
    x = F.pad(volume, pads) if any(pads) else volume
    padded = tuple(int(s) for s in x.shape[2:])
    starts = [_positions(s, r, overlap) for s, r in zip(padded, roi, strict=True)]
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(roi))
    out: torch.Tensor | None = None
    count = torch.zeros((1, 1, *padded), dtype=torch.float32, device=volume.device)
    for b0 in range(0, len(grid), sw_batch_size):
        chunk = grid[b0:b0 + sw_batch_size]
        slices = [tuple(slice(int(p), int(p) + r) for p, r in zip(pos, roi, strict=True)) for pos in chunk]
        windows = torch.cat([x[(slice(None), slice(None), *sl)] for sl in slices])
        logits = predictor(windows).float()
        if out is None:
            out = torch.zeros((x.shape[0], logits.shape[1], *padded), dtype=torch.float32, device=volume.device)
        nb = x.shape[0]
        for j, sl in enumerate(slices):
            out[(slice(None), slice(None), *sl)] += logits[j * nb:(j + 1) * nb]
            count[(slice(None), slice(None), *sl)] += 1
    assert out is not None
    out = out / count
    crop = tuple(slice(p, p + s) for p, s in zip(_front_pads(pads), spatial, strict=True))
    return out[(slice(None), slice(None), *crop)]


def _front_pads(pads: list[int]) -> list[int]:
    """F.pad's ``[last_lo, last_hi, ..., first_lo, first_hi]`` -> the low pads in spatial order."""
    return [pads[i] for i in range(len(pads) - 2, -1, -2)]


def to_masks(model: SegModel, logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Logits ``[B, K(+1), *S]`` -> bool masks ``[B, K, *S]`` (argmax for multiclass, threshold otherwise)."""
    if model.task == "multiclass":
        idx = logits.argmax(1)
        return torch.stack([idx == c + 1 for c in range(logits.shape[1] - 1)], dim=1)
    return logits.sigmoid() > threshold


@torch.no_grad()
def predict_logits(model: SegModel, image: np.ndarray | torch.Tensor, image_size: int | None = None,
                   patch_size: Sequence[int] | None = None, overlap: float = 0.25,
                   device: str | torch.device = "cpu", box_map: np.ndarray | None = None,
                   text_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[K(+1), *S]`` at the image's own size for one image ``[C, *S]`` in [0, 1].

    Prompted models take ``box_map`` (0/1 ``[*S]`` at the image's size; resized with the image,
    windowed with the volume) or ``text_embedding`` (``[1, E]``, :meth:`SegModel.embed_text`).
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None].to(device)
    x = _adapt_channels(x, model.in_chans)
    prompt = getattr(model, "prompt", "none")
    if prompt == "box" and box_map is None:
        raise ValueError("a box-prompted model needs box_map")
    box = None if box_map is None else torch.as_tensor(np.asarray(box_map, dtype=np.float32))[None, None].to(device)
    cond = None if text_embedding is None else text_embedding.to(device)

    def run(inp: torch.Tensor) -> torch.Tensor:
        if prompt == "box":
            return model(inp[:, :-1], inp[:, -1:])
        if prompt == "text":
            return model(inp, cond.expand(inp.shape[0], -1) if cond is not None else None)
        return model(inp)

    if box is not None:
        x = torch.cat([x, box], dim=1)
    if model.dims == 3:
        roi = tuple(patch_size or model.cfg.get("patch_size") or (32, 32, 32))
        return sliding_window_logits(x, roi, run, overlap=overlap)[0].cpu()
    size = int(image_size or model.cfg.get("image_size") or x.shape[-1])
    h, w = x.shape[-2:]
    inp = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if (h, w) != (size, size) else x
    if box is not None:
        inp[:, -1:] = (inp[:, -1:] > 0.5).float()
    logits = run(inp)
    if (h, w) != (size, size):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits[0].cpu()


def _adapt_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    if x.shape[1] == in_chans:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, in_chans, *x.shape[2:])
    return x.mean(1, keepdim=True)


def write_nifti_mask(label_map: np.ndarray, affine: np.ndarray | None, path: str | Path) -> Path:
    """An integer label map as NIfTI with the input's affine (identity if the input had none)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(label_map, dtype=np.uint8), np.eye(4) if affine is None else affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path


def masks_to_label_map(masks: np.ndarray) -> np.ndarray:
    """bool ``[K, *S]`` -> uint8 ``[*S]`` with class ``c`` written as ``c + 1`` (later classes win overlaps)."""
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for c in range(masks.shape[0]):
        out[masks[c]] = c + 1
    return out
