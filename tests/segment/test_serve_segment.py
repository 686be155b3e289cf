"""POST /v1/segment: text (zero-shot grounding) and box (box-prompted decoder) prompts -> mask PNG + summary."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from medvl.models import create_model
from medvl.models.encoder import CLIPEncoder
from medvl.serve.app import create_app


def _png(size: tuple[int, int] = (40, 48)) -> bytes:
    arr = (np.random.default_rng(0).random(size) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_segment_route(seg_phantoms: Path, tmp_path: Path):
    from medvl.segment.train import load_seg_config, train_segmentation

    from .conftest import tiny_overrides

    torch.manual_seed(0)
    clip = create_model("clip-tiny", image={"image_size": 32}, tokenizer_texts=["left pleural effusion", "heart"])
    cfg = load_seg_config(None, tiny_overrides(seg_phantoms, steps=2) + ["model.prompt=box",
                                                                         "data.mask_column=anatomy_mask"],
                          tmp_path / "box")
    train_segmentation(cfg)
    files = {"file": ("x.png", _png(), "image/png")}
    with TestClient(create_app(CLIPEncoder(clip, "clip"), None)) as c:
        r = c.post("/v1/segment", files=files, data={"text": "left pleural effusion", "threshold": "0.6"})
        assert r.status_code == 200, r.text
        body = r.json()
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
        assert mask.shape == (40, 48) and body["summary"]["method"] == "zero-shot grounding map"
        assert body["summary"]["area_px"] == int((mask > 0).sum())
        r = c.post("/v1/segment", files=files, data={"box": "2,2,20,20"})
        assert r.status_code == 422 and "box-prompted segmentation model" in r.text
        r = c.post("/v1/segment", files=files, data={})
        assert r.status_code == 422 and "exactly one prompt" in r.text
    with TestClient(create_app(CLIPEncoder(clip, "clip"), None, seg_model=tmp_path / "box" / "last")) as c:
        r = c.post("/v1/segment", files=files, data={"box": "2,2,20,20"})
        assert r.status_code == 200, r.text
        assert r.json()["summary"]["method"] == "box-prompted decoder"
        r = c.post("/v1/segment", files=files, data={"box": "2,2,60,20"})
        assert r.status_code == 422 and "not inside the 48x40 image" in r.text
