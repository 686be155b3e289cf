"""Every endpoint through TestClient: results, errors (400/401/409/413/415/422), de-identification,
log hygiene, metrics format and micro-batching under concurrency."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medvl.serve.app import ServeSettings, create_app
from medvl.serve.index import CaseIndex


@pytest.fixture(scope="module")
def app(encoder, index_dir: Path):
    return create_app(encoder, index_dir, settings=ServeSettings(max_upload_mb=1.0))


@pytest.fixture()
def client(app):
    with TestClient(app) as c:
        yield c


def _upload(data: bytes, name: str = "x.png") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def test_healthz_reports_model_index_and_card(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["has_text"] and body["zero_shot"]
    assert body["index_size"] > 0 and body["index_kind"] == "flat" and body["embed_dim"] == 64
    assert "pleural effusion" in body["classes"]


def test_embed_image_and_text_are_unit_vectors(client, make_png) -> None:
    r = client.post("/v1/embed", files=_upload(make_png()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "image" and body["dim"] == 64 and body["image"]["format"] == "png"
    assert np.linalg.norm(body["embeddings"][0]) == pytest.approx(1.0, abs=1e-4)
    r = client.post("/v1/embed", json={"texts": ["small left effusion", "no acute findings"]})
    assert r.status_code == 200, r.text
    vecs = np.array(r.json()["embeddings"])
    assert vecs.shape == (2, 64) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    assert not np.allclose(vecs[0], vecs[1])
    single = client.post("/v1/embed", json={"text": "small left effusion"}).json()["embeddings"][0]
    assert np.allclose(single, vecs[0], atol=1e-5)  # batching must not change a result


def test_embed_rejects_bad_json(client) -> None:
    assert client.post("/v1/embed", json={"text": "a", "texts": ["b"]}).status_code == 422
    assert client.post("/v1/embed", json={"text": ""}).status_code == 422
    assert client.post("/v1/embed", json={"nope": 1}).status_code == 422
    r = client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = client.post("/v1/embed", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_zero_shot_uses_card_classes_with_pairwise_probabilities(client, phantoms: Path, encoder) -> None:
    from medvl.data.manifest import load_manifest
    from medvl.serve.images import read_picture
    from medvl.serve.zeroshot import ZeroShotHead

    sample = load_manifest(phantoms).samples[0]
    data = (phantoms.parent / sample.image[0]).read_bytes()
    r = client.post("/v1/zero-shot", files=_upload(data))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "multilabel" and body["mode"] == "pairwise"
    names = [c["name"] for c in body["classes"]]
    card = load_manifest(phantoms).card
    assert names == card.class_names
    probs = np.array([c["probability"] for c in body["classes"]])
    assert ((probs > 0) & (probs < 1)).all()
    # Same numbers as the library computes directly: positive vs negative prompt ensembles.
    from medvl.serve.app import _logit_scale
    from medvl.serve.build import encode_pictures

    head = ZeroShotHead(encoder, card, _logit_scale(encoder))
    expected = head.probabilities(encode_pictures(encoder, [read_picture(phantoms.parent / sample.image[0])]))[0]
    assert np.allclose(probs, expected, atol=1e-4)


def test_zero_shot_softmax_for_multiclass_card(encoder, index_dir: Path, make_png) -> None:
    from medvl.data.card import ClassInfo, DatasetCard

    card = DatasetCard(name="toy", task="multiclass", classes=[ClassInfo("benign"), ClassInfo("malignant"),
                                                                 ClassInfo("normal")])
    with TestClient(create_app(encoder, index_dir, card=card)) as c:
        body = c.post("/v1/zero-shot", files=_upload(make_png())).json()
    assert body["mode"] == "softmax" and [x["name"] for x in body["classes"]] == ["benign", "malignant", "normal"]
    assert sum(x["probability"] for x in body["classes"]) == pytest.approx(1.0, abs=1e-5)


def test_zero_shot_without_card_is_409(encoder, make_png, tmp_path: Path) -> None:
    with TestClient(create_app(encoder, None)) as c:
        r = c.post("/v1/zero-shot", files=_upload(make_png()))
        assert r.status_code == 409 and "card" in r.json()["detail"]
        assert c.post("/v1/search", json={"text": "effusion"}).status_code == 409


def test_search_by_indexed_image_returns_it_first_with_thumbnail(client, index_dir: Path, phantoms: Path) -> None:
    rec = CaseIndex.open(index_dir).get([4])[0]
    data = (phantoms.parent / rec.image).read_bytes()
    r = client.post("/v1/search", files=_upload(data), data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "image" and body["k"] == 3 and len(body["results"]) == 3
    top = body["results"][0]
    assert top["id"] == 4 and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["text"] == rec.text and top["labels"] == rec.labels and top["image"] == rec.image
    assert base64.b64decode(top["thumbnail"]).startswith(b"\x89PNG")
    assert "patient_id" not in top  # patient identifiers are not served


def test_search_by_text_in_both_spaces(client, index_dir: Path) -> None:
    rec = CaseIndex.open(index_dir).get([2])[0]
    r = client.post("/v1/search", json={"text": rec.text, "k": 5, "space": "report"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["text"] == rec.text and top["score"] == pytest.approx(1.0, abs=1e-4)
    r = client.post("/v1/search", json={"text": "right pneumothorax", "k": 4})
    assert r.status_code == 200 and len(r.json()["results"]) == 4 and r.json()["space"] == "image"
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
    assert client.post("/v1/search", json={"text": "x", "k": 0}).status_code == 422
    assert client.post("/v1/search", files=_upload(b"\x89PNG\r\n\x1a\n"), data={"k": "abc"}).status_code == 422


def test_upload_errors_415_400_413(client, make_png) -> None:
    r = client.post("/v1/embed", files=_upload(b"GIF89a" + b"\0" * 64, "x.png"))
    assert r.status_code == 415
    assert "PNG, JPEG, TIFF or DICOM" in r.json()["detail"]
    r = client.post("/v1/search", files=_upload(b"%PDF-1.7 not an image" * 10, "scan.dcm"))
    assert r.status_code == 415
    r = client.post("/v1/embed", files=_upload(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20))
    assert r.status_code == 400 and "cannot decode" in r.json()["detail"]
    big = make_png(size=1200, seed=3)  # random pixels: ~1.4 MB PNG > 1 MB limit
    assert len(big) > 2**20
    r = client.post("/v1/embed", files=_upload(big))
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # Chunked body without Content-Length is counted too.
    def chunks():
        for _ in range(20):
            yield b"x" * 100_000

    r = client.post("/v1/embed", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    r = client.post("/v1/embed", files={"other": ("x.png", make_png(), "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def test_bearer_token(encoder, index_dir: Path, make_png) -> None:
    app = create_app(encoder, index_dir, settings=ServeSettings(token="s3cret-token", max_upload_mb=1.0))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # probes stay public
        assert c.get("/").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        for path in ("/v1/search", "/v1/embed", "/v1/zero-shot"):
            r = c.post(path, json={"text": "effusion"})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/metrics").status_code == 401
        bad = {"Authorization": "Bearer s3cret-tokem"}
        assert c.post("/v1/search", json={"text": "effusion"}, headers=bad).status_code == 401
        assert c.post("/v1/search", json={"text": "effusion"},
                      headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/v1/search", json={"text": "effusion"}, headers=good).status_code == 200
        assert c.post("/v1/embed", files=_upload(make_png()), headers=good).status_code == 200
        # Unauthenticated uploads are refused before their body is read (no 413 leaks the limit).
        assert c.post("/v1/embed", content=b"x" * (2 * 2**20),
                      headers={"content-type": "multipart/form-data; boundary=b"}).status_code == 401


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_dicom_upload_is_deidentified_and_nothing_identifying_is_logged(client, make_dicom, phi, caplog,
                                                                         index_dir: Path, monkeypatch) -> None:
    report_query = "CONFIDENTIAL report about Quentin Zzyzx, left effusion"
    before = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file on disk")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_disk)
    caplog.set_level(logging.DEBUG)
    data = make_dicom(size=512)  # > 512 kB: large enough that the default multipart parser would spool it
    assert all(v.encode() in data for v in phi.values())
    responses = [
        client.post("/v1/embed", files=_upload(data, "Zzyzx_Quentin.dcm")),
        client.post("/v1/zero-shot", files=_upload(data, "Zzyzx_Quentin.dcm")),
        client.post("/v1/search", files=_upload(data, "Zzyzx_Quentin.dcm")),
        client.post("/v1/search", json={"text": report_query}),
        client.post("/v1/embed", files=_upload(b"\0" * 128 + b"DICM" + b"\xff" * 300, "x.dcm")),  # corrupt DICOM
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 400]
    assert responses[0].json()["image"] == {"format": "dicom", "shape": [512, 512], "modality": "CT",
                                            "photometric": "MONOCHROME2", "deidentified": True}
    logged = caplog.text
    assert "/v1/search -> 200" in logged  # logging was captured (the test can fail)
    secrets = [*phi.values(), "Zzyzx", "Quentin", "CONFIDENTIAL", "left effusion"]
    for s in secrets:
        assert s not in logged, f"{s!r} leaked into the logs"
        for r in responses[:3]:
            assert s not in r.text, f"{s!r} leaked into a response"
    for rec in CaseIndex.open(index_dir).iter_records():  # indexed reports/patients are served, never logged
        assert rec.text not in logged and rec.patient_id not in logged
    assert {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()} == before  # nothing stored


def test_deidentify_dicom_removes_identifiers_before_pixels_are_decoded(make_dicom, phi, monkeypatch) -> None:
    import io

    import pydicom

    from medvl.serve import images

    ds = images.deidentify_dicom(pydicom.dcmread(io.BytesIO(make_dicom())))
    dumped = str(ds) + str(ds.file_meta)
    for v in phi.values():
        assert v not in dumped
    assert ds.PatientIdentityRemoved == "YES"
    seen: list[str] = []
    import medvl.data.io as medvl_io

    real = medvl_io.image_from_dataset

    def spy(ds, *args, **kwargs):
        seen.append(str(ds))
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(medvl_io, "image_from_dataset", spy)
    images.decode_upload(make_dicom())
    assert seen and not any(v in seen[0] for v in phi.values())


@pytest.mark.parametrize("photometric,window", [("MONOCHROME2", (600, 800)), ("MONOCHROME1", (600, 800)),
                                                ("MONOCHROME2", None)])
def test_in_memory_dicom_decode_matches_the_file_reader(tmp_path: Path, make_dicom, photometric, window) -> None:
    """Uploads are decoded in memory, indexed files by medvl.data.io: both must give the same picture,
    or an uploaded copy of an indexed DICOM would not find its own case."""
    from medvl.serve.images import decode_upload, read_picture

    data = make_dicom(photometric=photometric, window=window)
    (tmp_path / "x.dcm").write_bytes(data)
    ours = decode_upload(data).pixels.astype(int)
    theirs = read_picture(tmp_path / "x.dcm").astype(int)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)  # one decoding path for uploads and files
    assert ours.std() > 10  # not a blank picture


def test_metrics_prometheus_format(client, make_png) -> None:
    client.post("/v1/search", json={"text": "effusion", "k": 2})
    client.post("/v1/embed", files=_upload(b"not an image at all"))
    text = client.get("/metrics").text
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? -?[0-9.e+Inf]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert re.search(r'medvl_requests_total\{route="/v1/search",method="POST",status="200"\} [1-9]', text)
    assert re.search(r'medvl_requests_total\{route="/v1/embed",method="POST",status="415"\} [1-9]', text)
    assert "# TYPE medvl_request_duration_seconds histogram" in text
    buckets = [float(m) for m in re.findall(
        r'medvl_request_duration_seconds_bucket\{route="/v1/search",le="[^"]+"\} (\d+)', text)]
    assert buckets == sorted(buckets) and buckets[-1] >= 1  # cumulative
    assert re.search(r'medvl_batch_size_count\{stage="text"\} [1-9]', text)
    assert re.search(r'medvl_batch_size_count\{stage="search"\} [1-9]', text)
    client.post("/no/such/path/with/secret-in-it")
    assert "secret-in-it" not in client.get("/metrics").text  # unknown paths collapse to route="other"


def test_concurrent_requests_share_forward_passes(encoder, index_dir: Path) -> None:
    import httpx

    # A max_wait of an hour: batches close because they are full, never because a loaded machine was slow to
    # deliver the requests, so the counts below are exact whatever the timing (the 60 s guard catches a hang).
    app = create_app(encoder, index_dir, settings=ServeSettings(max_batch=8, max_wait_ms=3_600_000))

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.wait_for(asyncio.gather(*[c.post("/v1/search", json={"text": f"finding {i}", "k": 2})
                                                         for i in range(16)]), 60.0)
            return [r.status_code for r in rs]

    assert asyncio.run(run()) == [200] * 16
    hist = app.state.metrics.batch_size
    counts = hist._counts[("text",)]
    n_batches, le1 = counts[-1], counts[0]
    assert n_batches == 2, "16 concurrent text queries are two forward passes of 8"
    assert le1 == 0  # no batch of one
    assert hist._sum[("text",)] == 16


def test_page_and_docs_are_served(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "<title>medvl" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "http" not in re.sub(r"https?://www\.w3\.org[^\"']*", "", r.text)  # no CDN / remote assets
    for asset in ("/static/app.js", "/static/style.css"):
        res = client.get(asset)
        assert res.status_code == 200 and "http://" not in res.text and "https://" not in res.text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/zero-shot", "/v1/search", "/healthz", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]


def test_encoder_index_dimension_mismatch_is_refused(index_dir: Path) -> None:
    from medvl.errors import MedvlError

    class Wrong:
        name, embed_dim, has_text, image_size, in_chans, mean, std = "wrong", 32, False, 64, 1, (0.0,), (1.0,)

    with pytest.raises(MedvlError, match="32-d embeddings"):
        create_app(Wrong(), index_dir)


def test_server_and_evaluator_zero_shot_agree(encoder, phantoms: Path) -> None:
    """One zero-shot implementation: the server's head gives `medvl eval zeroshot`'s probabilities."""
    from medvl.data.manifest import load_manifest
    from medvl.evaluate.features import extract_features
    from medvl.evaluate.zeroshot import zeroshot_features
    from medvl.serve.app import _logit_scale
    from medvl.serve.zeroshot import ZeroShotHead

    manifest = load_manifest(phantoms)
    split = manifest.samples[0].split
    feats = extract_features(encoder, manifest, split)
    task = manifest.card.task
    result = zeroshot_features(encoder, feats, manifest.card, manifest.card.class_names, task,
                               logit_scale=_logit_scale(encoder), split=split, n_boot=10)
    head = ZeroShotHead(encoder, manifest.card, _logit_scale(encoder))
    np.testing.assert_allclose(head.probabilities(feats.x), result.predictions.scores, atol=1e-6)


def test_healthz_names_the_model_without_server_paths(client) -> None:
    """/healthz (public, unauthenticated) used to return the checkpoint's absolute filesystem path."""
    from medvl.serve.app import public_model_name

    model = client.get("/healthz").json()["model"]
    assert not model.startswith("/") and model.count("/") <= 1 and model
    assert public_model_name("/srv/models/clip-tiny/last") == "clip-tiny/last"
    assert public_model_name("openclip:/m/x/biomed?text=/m/bert") == "openclip:x/biomed?text=m/bert"
    assert public_model_name("timm:resnet18@/w/r18.safetensors") == "timm:resnet18@w/r18.safetensors"
    assert public_model_name("timm:resnet18") == "timm:resnet18"
