"""Feature extraction and index embedding with DataLoader workers give the same vectors as without."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from medvl.data.manifest import load_manifest
    from medvl.data.synthetic import generate_phantoms
    from medvl.models import create_model, save_model
    from medvl.models.encoder import load_encoder

    data = generate_phantoms(tmp_path_factory.mktemp("ph") / "data", n=20, size=64, seed=1)
    torch.manual_seed(0)
    model = create_model("clip-tiny", tokenizer_texts=[s.text for s in load_manifest(data).samples],
                         pretrained=False)
    out = tmp_path_factory.mktemp("m") / "clip-tiny"
    save_model(model, out)
    return data, load_encoder(out)


def test_extract_features_workers_match_serial(setup) -> None:  # type: ignore[no-untyped-def]
    from medvl.evaluate.features import extract_features, loader_workers

    data, encoder = setup
    serial = extract_features(encoder, data, split="train", batch_size=4, num_workers=0)
    parallel = extract_features(encoder, data, split="train", batch_size=4, num_workers=2)
    assert serial.n == parallel.n > 4
    np.testing.assert_array_equal(serial.rows, parallel.rows)
    np.testing.assert_allclose(serial.x, parallel.x, rtol=1e-6, atol=1e-7)
    assert loader_workers(3) == 3 and loader_workers(None) >= 0


def test_index_embedding_workers_match_serial(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from medvl.data.manifest import load_manifest
    from medvl.serve.build import embed_manifest

    data, encoder = setup
    manifest = load_manifest(data)
    a = embed_manifest(encoder, manifest, batch_size=6, num_workers=0)
    b = embed_manifest(encoder, manifest, batch_size=6, num_workers=2)
    np.testing.assert_allclose(a.image_vectors, b.image_vectors, rtol=1e-6, atol=1e-7)
    assert [r.row for r in a.records] == [r.row for r in b.records] == [s.row for s in manifest.samples]
    assert [r.thumbnail for r in a.records] == [r.thumbnail for r in b.records]
    monkeypatch.setenv("MEDVL_LOADER_WORKERS", "0")
    from medvl.evaluate.features import loader_workers

    assert loader_workers(None) == 0



def test_index_device_auto_picks_the_gpu_only_when_present() -> None:
    from medvl.serve.build import encoder_device

    assert encoder_device("cpu") == "cpu" and encoder_device("cuda:1") == "cuda:1"
    assert encoder_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
