"""The case index: exact round trip, approximate kinds, incremental add, atomicity, manifest build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvl.serve import index as index_mod
from medvl.serve.index import (
    CaseIndex,
    CaseIndexError,
    CaseRecord,
    choose_kind,
    default_nlist,
    exact_knn,
    l2_normalize,
    recall_at_k,
)


def _records(n: int, start: int = 0) -> list[CaseRecord]:
    return [CaseRecord(image=f"img/{start + i}.png", text=f"report {start + i}", labels={"a": float(i % 2)},
                       patient_id=f"p{start + i}", split="train", row=start + i + 1, source="m.csv",
                       thumbnail=b"\x89PNG fake") for i in range(n)]


def _clustered(n: int, dim: int = 32, seed: int = 0, centers: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    return l2_normalize(c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, dim)))


def test_exact_round_trip_query_equal_to_indexed_vector_comes_first(tmp_path: Path) -> None:
    vecs = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    idx = CaseIndex.create(tmp_path / "i", model="stub", image_vectors=vecs, records=_records(50))
    assert idx.meta.kind == "flat" and idx.meta.count == 50
    reopened = CaseIndex.open(tmp_path / "i")
    for q in (0, 17, 49):
        hits = reopened.search(vecs[q:q + 1] * 3.0, k=5)[0]  # scale must not matter: cosine
        assert hits[0][0] == q
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    rec = reopened.get([17])[0]
    assert (rec.id, rec.image, rec.text, rec.labels, rec.patient_id) == (17, "img/17.png", "report 17", {"a": 1.0},
                                                                          "p17")
    assert rec.thumbnail == b"\x89PNG fake"
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    assert meta["model"] == "stub" and meta["dim"] == 16 and meta["kind"] == "flat"


def test_incremental_add_keeps_old_ids_and_finds_new_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(12, 8)).astype(np.float32)
    CaseIndex.create(tmp_path / "i", model="stub", image_vectors=a, records=_records(30)).close()
    before = {r.id: (r.image, r.text) for r in CaseIndex.open(tmp_path / "i").iter_records()}
    idx = CaseIndex.open(tmp_path / "i")
    new_ids = idx.add(b, _records(12, start=30))
    assert list(new_ids) == list(range(30, 42))
    again = CaseIndex.open(tmp_path / "i")
    assert again.meta.count == 42 and again.meta.generation == 2
    after = {r.id: (r.image, r.text) for r in again.iter_records()}
    assert {k: after[k] for k in before} == before  # old ids unchanged
    assert again.search(a[5:6], 1)[0][0][0] == 5
    assert again.search(b[3:4], 1)[0][0][0] == 33
    # Old generation files are gone, new ones present.
    names = sorted(p.name for p in (tmp_path / "i").glob("*.faiss"))
    assert names == ["image-0002.faiss"]


def test_auto_kind_selection_and_overrides() -> None:
    assert choose_kind(10) == "flat"
    assert choose_kind(49_999) == "flat"
    assert choose_kind(50_000) == "ivf"
    assert choose_kind(10, "hnsw") == "hnsw"
    assert choose_kind(10**6, "flat") == "flat"
    assert choose_kind(300, threshold=100) == "ivf"
    with pytest.raises(CaseIndexError, match="unknown index kind"):
        choose_kind(10, "annoy")
    assert default_nlist(1_000_000) == 4000  # 4·√N
    assert default_nlist(10_000) == 256  # capped at N//39 (4·√N = 400 lists would be undertrained)
    assert default_nlist(100) == 2  # capped so every list gets ~39 training points


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_reach_target_recall(tmp_path: Path, kind: str) -> None:
    vecs = _clustered(3000)
    idx = CaseIndex.create(tmp_path / kind, model="stub", image_vectors=vecs, records=_records(3000),
                           kind="auto" if kind == "ivf" else kind, threshold=1000)
    assert idx.meta.kind == kind
    knob = "nprobe" if kind == "ivf" else "ef_search"
    assert knob in idx.meta.params and idx.meta.params["tuned_recall_at_10"] >= 0.95
    if kind == "ivf":
        assert idx.meta.params["nlist"] == default_nlist(3000)
    reopened = CaseIndex.open(tmp_path / kind)  # the tuned knob must survive a reopen
    many = reopened.get(list(range(1500, 0, -1)), thumbnails=False)  # > 999 ids: chunked SQL, order kept
    assert [r.id for r in many] == list(range(1500, 0, -1))
    rng = np.random.default_rng(5)
    queries = l2_normalize(vecs[rng.choice(3000, 100, replace=False)] + 0.05 * rng.normal(size=(100, 32)))
    found = np.array([[i for i, _ in hits] for hits in reopened.search(queries, 10)])
    assert recall_at_k(found, exact_knn(queries, vecs, 10)) >= 0.9


def test_existing_directory_needs_overwrite_and_failed_build_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    vecs = np.eye(4, dtype=np.float32)
    CaseIndex.create(tmp_path / "i", model="stub", image_vectors=vecs, records=_records(4)).close()
    with pytest.raises(CaseIndexError, match="already exists"):
        CaseIndex.create(tmp_path / "i", model="stub", image_vectors=vecs, records=_records(4))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_mod, "_write_json_atomic", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        CaseIndex.create(tmp_path / "i", model="other", image_vectors=vecs, records=_records(4), overwrite=True)
    monkeypatch.undo()
    assert CaseIndex.open(tmp_path / "i").meta.model == "stub"  # the old index is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i"]  # no temp directory left behind


def test_interrupted_add_leaves_old_index_readable_and_next_add_purges_leftovers(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(10, 8)).astype(np.float32)
    CaseIndex.create(tmp_path / "i", model="stub", image_vectors=a, records=_records(10)).close()

    def crash(*args, **kwargs):
        raise OSError("power cut before the commit point")

    idx = CaseIndex.open(tmp_path / "i")
    monkeypatch.setattr(index_mod, "_write_json_atomic", crash)
    with pytest.raises(OSError):
        idx.add(rng.normal(size=(5, 8)).astype(np.float32), _records(5, start=10))
    monkeypatch.undo()
    survivor = CaseIndex.open(tmp_path / "i")
    assert survivor.meta.count == 10
    assert all(i < 10 for i, _ in survivor.search(a[:3], 10)[0])
    with pytest.raises(CaseIndexError, match="not in the store"):
        survivor.get([12])  # rows written before the crash are invisible
    ids = survivor.add(rng.normal(size=(3, 8)).astype(np.float32), _records(3, start=10))
    assert list(ids) == [10, 11, 12]
    final = CaseIndex.open(tmp_path / "i")
    assert final.meta.count == 13 and final.get([12])[0].image == "img/12.png"


def test_open_rejects_missing_or_inconsistent_index(tmp_path: Path) -> None:
    with pytest.raises(CaseIndexError, match="not a medvl index"):
        CaseIndex.open(tmp_path)
    CaseIndex.create(tmp_path / "i", model="stub", image_vectors=np.eye(3, dtype=np.float32), records=_records(3))
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    meta["count"] = 7
    (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CaseIndexError, match="holds 3 vectors"):
        CaseIndex.open(tmp_path / "i")
    with pytest.raises(CaseIndexError, match="dim"):
        meta["count"] = 3
        (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
        CaseIndex.open(tmp_path / "i").add(np.ones((1, 5), np.float32), _records(1))


# ------------------------------------------------------------------------------ from a manifest
def test_build_from_manifest_indexes_images_reports_and_card(index_dir: Path, phantoms: Path, encoder) -> None:
    from medvl.data.manifest import load_manifest
    from medvl.serve.build import search_index

    idx = CaseIndex.open(index_dir)
    train = load_manifest(phantoms).split("train").samples
    assert idx.meta.count == len(train) and idx.meta.has_text and idx.meta.kind == "flat"
    assert idx.meta.dim == encoder.embed_dim
    assert idx.meta.manifests[0]["splits"] == ["train"] and len(idx.meta.manifests[0]["sha256"]) == 64
    assert "nodule" in (idx.card_yaml() or "")
    rec = idx.get([3])[0]
    assert rec.image == train[3].image[0] and rec.text == train[3].text and rec.patient_id == train[3].patient_id
    assert rec.thumbnail and rec.thumbnail.startswith(b"\x89PNG")
    # Query with an indexed image file: that case comes first with cosine ~ 1.
    hits = search_index(index_dir, image=phantoms.parent / train[3].image[0], k=3, encoder=encoder)
    assert hits[0][1].id == 3 and hits[0][0] == pytest.approx(1.0, abs=1e-4)
    # Report space: the exact report text finds its own case.
    hits = search_index(index_dir, text=train[5].text, k=3, space="text", encoder=encoder)
    assert hits[0][1].text == train[5].text and hits[0][0] == pytest.approx(1.0, abs=1e-4)


def test_add_manifest_appends_and_refuses_duplicates(index_copy: Path, phantoms: Path, encoder) -> None:
    from medvl.serve.build import add_to_index

    n0 = CaseIndex.open(index_copy).meta.count
    ids = add_to_index(index_copy, phantoms, splits=["test"], encoder=encoder)
    assert ids.start == n0 and len(ids) > 0
    assert CaseIndex.open(index_copy).get([ids.start])[0].split == "test"
    with pytest.raises(CaseIndexError, match="already in"):
        add_to_index(index_copy, phantoms, splits=["test"], encoder=encoder)


def test_cli_build_add_search(tmp_path: Path, phantoms: Path, model_dir: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from medvl.cli import app
    from medvl.models import encoder as encoder_mod

    # Spy on the factory: `index add` and `index search` take no --model, so they must load the encoder
    # recorded in the index's meta.json (the checkpoint the index was built with), nothing else.
    loaded: list[str] = []
    real_load = encoder_mod.load_encoder

    def spy(spec, *args, **kwargs):
        loaded.append(str(spec))
        return real_load(spec, *args, **kwargs)

    monkeypatch.setattr(encoder_mod, "load_encoder", spy)
    runner = CliRunner()
    out = tmp_path / "cli-idx"
    r = runner.invoke(app, ["index", "build", "--model", str(model_dir), "--data", str(phantoms), "--out", str(out),
                            "--split", "train,val"])
    assert r.exit_code == 0, r.output
    assert "kind flat" in r.output
    assert [Path(s).resolve() for s in loaded] == [model_dir.resolve()]  # build: the --model given
    recorded = CaseIndex.open(out).meta.model
    assert Path(recorded).resolve() == model_dir.resolve()
    r = runner.invoke(app, ["index", "add", str(out), "--data", str(phantoms), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert "added" in r.output
    r = runner.invoke(app, ["index", "search", str(out), "--text", "left pleural effusion", "--k", "4"])
    assert r.exit_code == 0, r.output
    assert "score" in r.output and "top 4" in r.output
    assert loaded[1:] == [recorded, recorded]  # add and search loaded exactly the model recorded in meta.json
    r = runner.invoke(app, ["index", "search", str(out), "--text", "x", "--image", "y.png"])
    assert r.exit_code != 0
    assert len(loaded) == 3  # an invalid query is refused before any model is loaded
