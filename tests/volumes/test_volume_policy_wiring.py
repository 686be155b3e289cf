"""The training config's ``data.volume`` policy reaches the checkpoint, evaluation, the cache and serving.

Issue 17 item 4: a CT is mapped by the HU window the model was trained with everywhere, not by a
per-volume min-max at evaluation or serving time.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medvl.data.dataset import ManifestDataset
from medvl.data.io import read_image
from medvl.data.synthetic3d import generate_ct_phantoms
from medvl.data.volume_preprocess import VolumePolicy
from medvl.errors import ConfigError, ManifestError

POLICY = {"intensity": "window", "window": [40.0, 400.0]}
SIZE = 16


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return generate_ct_phantoms(tmp_path_factory.mktemp("ct"), n=12, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def ckpt(ct, tmp_path_factory) -> Path:
    """Two training steps through the CLI with the README's override string."""
    from typer.testing import CliRunner

    from medvl.cli import app

    tmp = tmp_path_factory.mktemp("run")
    cfg = {"data": {"manifest": str(ct), "split": "train", "image_size": SIZE, "channels": 1},
           "model": {"name": "clip3d-tiny"}, "objectives": [{"name": "infonce", "weight": 1.0}],
           "optim": {"lr": 5e-4, "warmup_steps": 1},
           "train": {"max_steps": 2, "batch_size": 4, "seed": 0, "device": "cpu", "ckpt_every": 2,
                     "log_every": 1, "out_dir": str(tmp / "run")}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp / "cfg.yaml"),
                                   "data.volume={intensity: window, window: [40, 400]}"])
    assert res.exit_code == 0, res.output
    return tmp / "run" / "last"


def _dataset(ct: Path, policy=None, **kw) -> ManifestDataset:
    return ManifestDataset(ct, split="test", image_size=SIZE, channels=1, mean=(0.0,), std=(1.0,),
                           volume_policy=policy, **kw)


def _first_volume_hu(ds: ManifestDataset) -> np.ndarray:
    return np.asarray(read_image(ds.manifest.resolve(ds.samples[0].image[0])).array, dtype=np.float64)


def test_checkpoint_records_the_policy_and_the_encoder_exposes_it(ckpt):
    from medvl.evaluate.features import preprocessing_of
    from medvl.models.encoder import load_encoder

    saved = yaml.safe_load((ckpt / "config.yaml").read_text())["model"]
    assert saved["image"]["volume"]["intensity"] == "window"
    assert saved["image"]["volume"]["window"] == [40.0, 400.0]
    enc = load_encoder(ckpt)
    assert enc.volume_policy == VolumePolicy(intensity="window", window=(40.0, 400.0))
    assert preprocessing_of(enc)["volume"]["window"] == [40.0, 400.0]


def test_dataset_applies_the_hu_window_not_min_max(ct):
    ds = _dataset(ct, POLICY)
    x = ds[0]["image"][0].double().numpy()  # [D, H, W] in [0, 1]; the phantom is already SIZE^3
    hu = _first_volume_hu(ds)
    assert x.shape == hu.shape
    lo = 40.0 - 400.0 / 2
    by_hand = np.round(np.clip((hu - lo) / 400.0, 0, 1) * 255) / 255
    np.testing.assert_allclose(x, by_hand, atol=1e-6)
    # soft tissue (40 HU) sits mid-window; air is black; bone (500 HU) saturates at 1
    assert abs(x[hu == 40].mean() - 0.5) < 0.01 and x[hu <= -1000].max() == 0.0
    minmax = _dataset(ct)[0]["image"][0].double().numpy()
    np.testing.assert_allclose(minmax, np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255) / 255, atol=1e-6)
    assert np.abs(minmax - x).max() > 0.2


def test_feature_evaluation_uses_the_checkpoint_policy(ckpt, ct):
    from medvl.evaluate.features import extract_features
    from medvl.models.encoder import load_encoder

    enc = load_encoder(ckpt)
    feats = extract_features(enc, ct, split="test", num_workers=0)
    assert feats.meta["preprocess"]["volume"]["window"] == [40.0, 400.0]
    windowed = torch.stack([_dataset(ct, POLICY)[i]["image"] for i in range(len(feats.rows))])
    minmax = torch.stack([_dataset(ct)[i]["image"] for i in range(len(feats.rows))])
    want = enc.encode_image(windowed).float().numpy()
    np.testing.assert_allclose(feats.x, want, atol=1e-5)
    assert not np.allclose(feats.x, enc.encode_image(minmax).float().numpy(), atol=1e-3)


def test_cache_is_keyed_on_the_policy(ct, tmp_path):
    from medvl.data.cache import build_cache

    plain, windowed = tmp_path / "plain", tmp_path / "windowed"
    build_cache(ct, SIZE, plain)
    with pytest.raises(ManifestError, match="volume"):
        _dataset(ct, POLICY, cache_dir=plain)
    index = build_cache(ct, SIZE, windowed, volume_policy=POLICY)
    assert index.volume["window"] == [40.0, 400.0]
    with pytest.raises(ManifestError, match="volume"):
        _dataset(ct, None, cache_dir=windowed)
    cached, decoded = _dataset(ct, POLICY, cache_dir=windowed), _dataset(ct, POLICY)
    for i in range(len(decoded)):
        assert torch.equal(cached.load_uint8(i), decoded.load_uint8(i))
    assert torch.equal(_dataset(ct, cache_dir=plain).load_uint8(0), _dataset(ct).load_uint8(0))


def test_scaled_volumes_with_an_hu_window_warn_once_per_dataset(ct, tmp_path):
    import nibabel as nib

    copy = tmp_path / "scaled"
    shutil.copytree(ct.parent, copy)
    manifest = copy / ct.name
    ds = _dataset(manifest, POLICY)
    for s in ds.samples:  # rescale every test volume to [0, 1], as some pipelines store CT
        path = ds.manifest.resolve(s.image[0])
        img = nib.load(path)
        a = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image((a - a.min()) / (a.max() - a.min()), img.affine), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(ds)):
            ds[i]
    scaled = [w for w in caught if "looks already scaled" in str(w.message)]
    assert len(ds) > 1 and len(scaled) == 1, [str(w.message) for w in caught]
    assert "reported once" in str(scaled[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(ds)):
            _dataset(manifest)[i]  # no policy: today's min-max, nothing to warn about
    assert not [w for w in caught if "looks already scaled" in str(w.message)]


def test_config_key_is_validated():
    from medvl.train.config import build_train_config

    cfg = build_train_config({}, ["data.volume={intensity: window, window: [40, 400]}"])
    assert VolumePolicy.from_dict(cfg.data.volume) == VolumePolicy(window=(40.0, 400.0))
    assert build_train_config({}).data.volume is None
    for bad, match in ((["data.volume={intensity: hu}"], "data.volume.*intensity"),
                       (["data.volume={intensity: window, widnow: [1, 2]}"], "data.volume.*widnow"),
                       (["data.volume=400"], "data.volume"),
                       (["data.volume={intensity: zscore}", "data.shards=/tmp/x"], "data.volume.*shards")):
        with pytest.raises(ConfigError, match=match):
            build_train_config({}, bad)


def test_checkpoint_without_the_field_still_loads(ckpt, tmp_path):
    from medvl.evaluate.features import preprocessing_of
    from medvl.models.encoder import load_encoder

    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["model"]["image"]["volume"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    enc = load_encoder(old)
    assert enc.volume_policy is None and "volume" not in preprocessing_of(enc)


def test_serving_maps_uploads_and_indexed_files_with_the_policy(ckpt, ct):
    from medvl.models.encoder import load_encoder
    from medvl.serve.images import decode_upload, model_pixels, read_picture

    enc = load_encoder(ckpt)
    ds = _dataset(ct, POLICY)
    path = ds.manifest.resolve(ds.samples[0].image[0])
    want = ds.load_uint8(0)[0].numpy()
    decoded = decode_upload(Path(path).read_bytes())
    assert decoded.volume is not None and "_volume" not in decoded.meta
    np.testing.assert_array_equal(model_pixels(decoded, enc), want)
    np.testing.assert_array_equal(read_picture(path, volume=True, volume_policy=enc.volume_policy), want)
    # without a policy the upload keeps today's min-max picture
    assert np.array_equal(model_pixels(decoded, object()), decoded.pixels)
    assert not np.array_equal(decoded.pixels, want)


def test_2d_samples_ignore_the_policy(tmp_path):
    from medvl.data.synthetic import generate_phantoms

    manifest = generate_phantoms(tmp_path / "p2d", n=6, size=32, seed=0)
    a = ManifestDataset(manifest, split=None, image_size=32, volume_policy=POLICY)
    b = ManifestDataset(manifest, split=None, image_size=32)
    for i in range(len(a)):
        assert torch.equal(a.load_uint8(i), b.load_uint8(i))


def test_server_embeds_and_indexes_volumes_with_the_policy(ckpt, ct, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("faiss")
    from fastapi.testclient import TestClient

    from medvl.models.encoder import load_encoder
    from medvl.serve.app import create_app
    from medvl.serve.build import build_index

    enc = load_encoder(ckpt)
    build_index(ckpt, ct, tmp_path / "idx", encoder=enc).close()
    ds = _dataset(ct, POLICY)
    path = ds.manifest.resolve(ds.samples[0].image[0])
    want = enc.encode_image(ds[0]["image"][None]).float().numpy()[0]
    want /= np.linalg.norm(want)
    with TestClient(create_app(enc, tmp_path / "idx")) as client:
        r = client.post("/v1/embed", files={"file": ("x", Path(path).read_bytes(), "application/octet-stream")})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["embeddings"][0]), want, atol=1e-4)
        r = client.post("/v1/search", files={"file": ("x", Path(path).read_bytes(), "application/octet-stream")},
                        data={"k": "1"})
        assert r.status_code == 200, r.text
        hit = r.json()["results"][0]
        assert hit["image"].endswith(Path(path).name) and hit["score"] == pytest.approx(1.0, abs=1e-4)
