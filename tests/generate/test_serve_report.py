"""``POST /v1/report``: a served checkpoint trained with the caption objective writes a draft
report for an uploaded image (the same text as ``medvl generate --image``); other models answer
409 with one line; the web page has the draft panel."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")


def _png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_report_route_writes_the_generate_cli_report(caption_run: Path, phantoms: Path) -> None:
    from fastapi.testclient import TestClient

    from medvl.data.manifest import load_manifest
    from medvl.generate import DecodeConfig, generate_reports, single_image_manifest
    from medvl.models.encoder import load_encoder
    from medvl.serve.app import create_app

    encoder = load_encoder(caption_run / "last")
    sample = load_manifest(phantoms).samples[0]
    image = phantoms.parent / sample.image[0]
    with TestClient(create_app(encoder)) as client:
        res = client.post("/v1/report", files={"file": ("x.png", _png(image), "image/png")},
                          data={"max_tokens": "40"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["report"] and body["method"] == "greedy"
        from medvl.generate import load_captioner

        expected = generate_reports(load_captioner(caption_run), single_image_manifest(image), "test",
                                    DecodeConfig(max_new_tokens=40)).reports[image.stem]
        assert body["report"] == expected
        bad = client.post("/v1/report", files={"file": ("x.png", _png(image), "image/png")}, data={"method": "topk"})
        assert bad.status_code == 422 and "method" in bad.text
        too_long = client.post("/v1/report", files={"file": ("x.png", _png(image), "image/png")},
                               data={"max_tokens": "9999"})
        assert too_long.status_code == 422
        page = client.get("/").text
        assert 'id="draft"' in page
    with TestClient(create_app(encoder, report_writer=None)) as client:
        res = client.post("/v1/report", files={"file": ("x.png", _png(image), "image/png")})
        assert res.status_code == 409 and "caption decoder" in res.json()["detail"]
