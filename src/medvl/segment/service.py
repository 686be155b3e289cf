"""What ``POST /v1/segment`` does with an uploaded picture: a prompt -> a mask PNG + a summary.

Kept out of the FastAPI app so the route is a few lines and the logic is testable without HTTP.

* **text** prompt, served CLIP model: the zero-shot mask of :mod:`medvl.segment.prompt` (grounding
  heat map at the picture's size, ``threshold`` on the normalised map, largest component). The
  threshold should be the one ``medvl eval segment --prompt text`` chose on validation data (it is
  in that result's config); 0.5 by default.
* **box** prompt (``x0,y0,x1,y1`` in the picture's pixels), a box-prompted segmentation checkpoint
  (``medvl train-seg model.prompt=box``, served with ``medvl serve --seg-model``).
* **text** prompt with a text-prompted checkpoint (``model.prompt=text``) uses that decoder instead.

The summary is Dice-free (there is no truth at serving time): area in pixels and as a fraction of
the picture, bounding box, number of connected components, centroid.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medvl.errors import MedvlError
from medvl.segment.prompt import box_channel, refine, text_heatmaps


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise MedvlError(f"form field 'box' must be x0,y0,x1,y1 in pixels, got {text!r}") from exc
    if len(vals) != 4:
        raise MedvlError(f"form field 'box' must be four numbers x0,y0,x1,y1, got {text!r}")
    return vals  # type: ignore[return-value]


def summarise(mask: np.ndarray) -> dict[str, Any]:
    """Area, fraction, bounding box, components and centroid of a 2D bool mask."""
    area = int(mask.sum())
    out: dict[str, Any] = {"area_px": area, "fraction": float(area / mask.size), "height": int(mask.shape[0]),
                           "width": int(mask.shape[1])}
    if area:
        ys, xs = np.nonzero(mask)
        out["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        out["components"] = int(ndimage.label(mask)[1])
        out["centroid"] = [float(xs.mean()), float(ys.mean())]
    else:
        out.update({"bbox": None, "components": 0, "centroid": None})
    return out


def mask_png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _picture(pixels: np.ndarray) -> np.ndarray:
    """uint8 picture (HxW or HxWx3) -> float ``[1, H, W]`` in [0, 1]."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1)
    if arr.ndim != 2:
        raise MedvlError(f"segmentation takes a 2D picture, got an array of shape {arr.shape}")
    return (arr.astype(np.float32) / 255.0)[None]


@torch.no_grad()
def segment_picture(pixels: np.ndarray, *, encoder: Any = None, seg_model: Any = None, text: str | None = None,
                    box: tuple[float, float, float, float] | None = None,
                    threshold: float = 0.5) -> tuple[np.ndarray, dict[str, Any]]:
    """The mask (bool ``[H, W]`` at the picture's size) and its summary for one prompt."""
    from medvl.segment.infer import predict_logits

    if (text is None) == (box is None):
        raise MedvlError("send exactly one prompt: a 'text' field or a 'box' field")
    if not 0 < threshold < 1:
        raise MedvlError(f"threshold must be in (0, 1), got {threshold}")
    image = _picture(pixels)
    h, w = image.shape[1:]
    prompt_kind = "text" if text is not None else "box"
    if box is not None:
        bmap = box_channel(box, (h, w), "form field 'box'")
        if seg_model is None or getattr(seg_model, "prompt", "none") != "box":
            raise MedvlError("box prompts need a box-prompted segmentation model (start the server with "
                             "--seg-model <train-seg run with model.prompt=box>)")
        logits = predict_logits(seg_model, image, box_map=bmap)
        mask = (logits[0].sigmoid() > threshold).numpy()
        method = "box-prompted decoder"
    elif seg_model is not None and getattr(seg_model, "prompt", "none") == "text":
        logits = predict_logits(seg_model, image, text_embedding=seg_model.embed_text([str(text)]))
        mask = (logits[0].sigmoid() > threshold).numpy()
        method = "text-conditioned decoder"
    else:
        net = getattr(encoder, "model", None)
        if net is None or not hasattr(net, "encode_image_tokens") or getattr(net.cfg.image, "type", "") == "resnet3d":
            raise MedvlError("text prompts need a medvl CLIP model with a 2D tower (patch features) or a "
                             "text-prompted segmentation model")
        size = int(net.cfg.image.image_size)
        x = F.interpolate(torch.from_numpy(image)[None], size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] != net.cfg.image.in_chans:
            x = x.expand(-1, net.cfg.image.in_chans, -1, -1)
        heat = text_heatmaps(net, x, [str(text)], [(h, w)])[0]
        mask = refine(heat, threshold)
        method = "zero-shot grounding map"
    summary = {"prompt": prompt_kind, "method": method, "threshold": threshold, **summarise(mask)}
    return mask, summary
