"""The case index: FAISS vectors + a SQLite store of the cases they point to.

On disk an index is a directory::

    meta.json            # the commit point: model spec, dim, kind, count, generation, manifests
    image-0001.faiss     # L2-normalised image embeddings (inner product = cosine)
    text-0001.faiss      # report embeddings, same ids (only when the model has a text tower)
    cases.sqlite         # id -> image path, report, labels, patient_id, split, thumbnail PNG
    card.yaml            # the dataset card used for zero-shot (optional)

Vector ids are FAISS's own sequential positions, so SQLite's ``id`` column equals the vector id
and an incremental add appends ids after the old ones without touching them.

Atomicity: a new build is written to a sibling temp directory and renamed into place. An add
writes new *generation* FAISS files, commits the SQLite transaction, then replaces ``meta.json``
(temp + fsync + rename). Readers trust ``meta.json`` only, so a crash at any point leaves the old
index readable; SQLite rows past ``meta.count`` are leftovers of an interrupted add and are
purged by the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import MedvlError

FORMAT_VERSION = 1
KINDS = ("flat", "ivf", "hnsw")
EXACT_THRESHOLD = 50_000  # below this, exact search is fast enough (~ms) and has perfect recall
TARGET_RECALL = 0.95
META_FILE, STORE_FILE, CARD_FILE = "meta.json", "cases.sqlite", "card.yaml"


class CaseIndexError(MedvlError):
    """An index directory is missing, corrupt or incompatible with the request."""


@dataclass
class CaseRecord:
    """One indexed case: what a search result shows. ``labels`` maps class -> 1/0/-1."""

    image: str
    text: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    patient_id: str = ""
    split: str = ""
    row: int = 0
    source: str = ""
    thumbnail: bytes | None = None
    id: int = -1


@dataclass
class IndexMeta:
    """Everything needed to reopen and trust an index; stored as ``meta.json``."""

    model: str
    dim: int
    kind: str
    count: int = 0
    has_text: bool = False
    generation: int = 1
    params: dict[str, Any] = field(default_factory=dict)  # nlist / nprobe / hnsw_m / ef_search
    manifests: list[dict[str, Any]] = field(default_factory=list)  # path, sha256, split, added
    version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> IndexMeta:
        try:
            meta = cls(**data)
        except TypeError as exc:
            raise CaseIndexError(f"{where}: unexpected fields in index metadata ({exc})") from exc
        if meta.version != FORMAT_VERSION:
            raise CaseIndexError(f"{where}: index format version {meta.version}, this medvl reads {FORMAT_VERSION}")
        if meta.kind not in KINDS:
            raise CaseIndexError(f"{where}: unknown index kind {meta.kind!r}; expected one of {', '.join(KINDS)}")
        return meta


# --------------------------------------------------------------------------------------------- vectors
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-normalise to unit length (float32, C-contiguous); zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a [N, D] matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def choose_kind(n: int, requested: str = "auto", threshold: int = EXACT_THRESHOLD) -> str:
    """``auto`` -> exact ``flat`` below ``threshold`` vectors, ``ivf`` at or above it.

    IVF rather than HNSW for large indexes: its build is a k-means on a sample (minutes at 1M on
    two cores, where HNSW's graph construction takes much longer) and it takes incremental adds
    cheaply; ``--kind hnsw`` remains available when query latency matters more than build time.
    """
    if requested == "auto":
        return "flat" if n < threshold else "ivf"
    if requested not in KINDS:
        raise CaseIndexError(f"unknown index kind {requested!r}; choose auto, {', '.join(KINDS)}")
    return requested


def default_nlist(n: int) -> int:
    """IVF lists ≈ 4·√N (the FAISS rule of thumb), at least 1 and never more than N/39 (training needs
    about 39 points per centroid)."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), max(1, n // 39))))


def exact_knn(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Ground-truth ids of the ``k`` largest inner products (FAISS brute force, blocked internally)."""
    import faiss

    _, ids = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(base, np.float32),
                       min(k, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of true top-k ids the approximate search also returned (order ignored)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / max(1, truth.size)


def make_faiss_index(vectors: np.ndarray, kind: str, *, nlist: int | None = None, hnsw_m: int = 32,
                     seed: int = 0, train_sample: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Create (and for IVF train) an empty inner-product index of ``kind`` for these vectors.

    Returns the index (vectors *not* yet added) and its construction parameters.
    """
    import faiss

    dim = vectors.shape[1]
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        return index, {"hnsw_m": hnsw_m, "ef_construction": 80}
    if kind == "ivf":
        nlist = nlist or default_nlist(len(vectors))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample: 64 points per centroid is plenty and keeps 1M builds in minutes.
        n_train = min(len(vectors), train_sample or max(64 * nlist, 10_000))
        rng = np.random.default_rng(seed)
        sample = vectors if n_train == len(vectors) else vectors[rng.choice(len(vectors), n_train, replace=False)]
        index.cp.seed = seed
        index.cp.niter = 15
        index.train(np.ascontiguousarray(sample, np.float32))
        index.quantizer_trains_alone = 0
        return index, {"nlist": nlist}
    raise CaseIndexError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")


def set_search_params(index: Any, params: dict[str, Any]) -> None:
    """Apply the query-time knobs stored in the metadata (nprobe for IVF, efSearch for HNSW)."""
    import faiss

    if "nprobe" in params and hasattr(index, "nprobe"):
        index.nprobe = int(params["nprobe"])
    if "ef_search" in params:
        hnsw = faiss.downcast_index(index)
        if hasattr(hnsw, "hnsw"):
            hnsw.hnsw.efSearch = int(params["ef_search"])


def tune_search(index: Any, vectors: np.ndarray, kind: str, *, k: int = 10, target: float = TARGET_RECALL,
                n_queries: int = 200, seed: int = 0) -> dict[str, Any]:
    """Smallest nprobe / efSearch whose recall@k against exact search reaches ``target``.

    Leave-one-out on the data itself: each query is an indexed vector and its own hit is removed
    from both the exact and the approximate answers, so the index is tuned for "a new case like
    the ones we have" on the real embedding distribution, not on synthetic noise.
    """
    if kind == "flat" or len(vectors) <= k + 1:
        return {}
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), min(n_queries, len(vectors)), replace=False)
    queries = np.ascontiguousarray(vectors[pick], dtype=np.float32)

    def drop_self(ids: np.ndarray) -> np.ndarray:
        return np.stack([row[row != q][:k] if (row == q).any() else row[:k] for row, q in zip(ids, pick, strict=True)])

    truth = drop_self(exact_knn(queries, vectors, k + 1))
    if kind == "ivf":
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if v < index.nlist]
        values.append(index.nlist)
    else:
        name, values = "ef_search", [16, 32, 64, 128, 256, 512]
    chosen, achieved = values[-1], 0.0
    for v in values:
        set_search_params(index, {name: v})
        _, found = index.search(queries, k + 1)
        achieved = recall_at_k(drop_self(found), truth)
        if achieved >= target:
            chosen = v
            break
    set_search_params(index, {name: chosen})
    return {name: chosen, "tuned_recall_at_10": round(achieved, 4)}


# --------------------------------------------------------------------------------------------- files
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    _fsync_file(tmp)
    tmp.replace(path)


def _write_faiss_atomic(index: Any, path: Path) -> None:
    import faiss

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(tmp))
    _fsync_file(tmp)
    tmp.replace(path)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    row INTEGER NOT NULL,
    image TEXT NOT NULL,
    text TEXT NOT NULL,
    labels TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    split TEXT NOT NULL,
    thumbnail BLOB
)
"""


def _insert_records(conn: sqlite3.Connection, start_id: int, records: Sequence[CaseRecord]) -> None:
    conn.executemany(
        "INSERT INTO cases (id, source, row, image, text, labels, patient_id, split, thumbnail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(start_id + i, r.source, r.row, r.image, r.text, json.dumps(r.labels, sort_keys=True), r.patient_id,
          r.split, r.thumbnail) for i, r in enumerate(records)],
    )


# --------------------------------------------------------------------------------------------- index
class CaseIndex:
    """An opened index directory: vector search plus case lookup.

    Searches are thread-safe (FAISS search is const); SQLite connections are per thread because
    a connection must not be shared across threads.
    """

    def __init__(self, path: Path, meta: IndexMeta, image_index: Any, text_index: Any | None):
        self.path = path
        self.meta = meta
        self.image_index = image_index
        self.text_index = text_index
        self._local = threading.local()

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> CaseIndex:
        """Open an index directory for searching (and adding); raises :class:`CaseIndexError`."""
        import faiss

        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise CaseIndexError(f"not a medvl index: {meta_path} is missing (build one with `medvl index build`)")
        try:
            meta = IndexMeta.from_dict(json.loads(meta_path.read_text()), str(meta_path))
        except json.JSONDecodeError as exc:
            raise CaseIndexError(f"{meta_path}: corrupt metadata ({exc.msg})") from exc
        if not (path / STORE_FILE).is_file():
            raise CaseIndexError(f"{path}: case store {STORE_FILE} is missing")

        def load(space: str) -> Any:
            f = path / _vector_file(space, meta.generation)
            if not f.is_file():
                raise CaseIndexError(f"{path}: vector file {f.name} named by {META_FILE} is missing")
            try:
                index = faiss.read_index(str(f))
            except RuntimeError as exc:
                raise CaseIndexError(f"{f}: unreadable FAISS index ({exc})") from exc
            if index.ntotal != meta.count or index.d != meta.dim:
                raise CaseIndexError(f"{f}: holds {index.ntotal} vectors of dim {index.d}, metadata says "
                                  f"{meta.count} of dim {meta.dim}")
            set_search_params(index, meta.params)
            return index

        return cls(path, meta, load("image"), load("text") if meta.has_text else None)

    # -- creation --------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, model: str, image_vectors: np.ndarray, records: Sequence[CaseRecord],
               text_vectors: np.ndarray | None = None, kind: str = "auto", manifest: dict[str, Any] | None = None,
               card_yaml: str | None = None, overwrite: bool = False, threshold: int = EXACT_THRESHOLD,
               nlist: int | None = None, target_recall: float = TARGET_RECALL) -> CaseIndex:
        """Build a new index directory atomically (temp sibling directory, then rename)."""
        path = Path(path)
        image_vectors = l2_normalize(image_vectors)
        n, dim = image_vectors.shape
        if len(records) != n:
            raise CaseIndexError(f"{n} image vectors but {len(records)} case records")
        if text_vectors is not None:
            text_vectors = l2_normalize(text_vectors)
            if text_vectors.shape != image_vectors.shape:
                raise CaseIndexError(f"text vectors {text_vectors.shape} do not match image vectors "
                                     f"{image_vectors.shape}")
        if path.exists() and not overwrite:
            raise CaseIndexError(f"{path} already exists; pass --overwrite to replace it or use `medvl index add`")
        chosen = choose_kind(n, kind, threshold)
        if chosen == "ivf" and n < 39:
            raise CaseIndexError(f"an IVF index needs at least 39 vectors to train, got {n}; use --kind flat")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            image_index, params = make_faiss_index(image_vectors, chosen, nlist=nlist)
            image_index.add(image_vectors)
            params.update(tune_search(image_index, image_vectors, chosen, target=target_recall))
            text_index = None
            if text_vectors is not None:
                text_index, _ = make_faiss_index(text_vectors, chosen, nlist=params.get("nlist"))
                text_index.add(text_vectors)
                set_search_params(text_index, params)
            meta = IndexMeta(model=model, dim=dim, kind=chosen, count=n, has_text=text_index is not None,
                             params=params, manifests=[manifest] if manifest else [])
            _write_faiss_atomic(image_index, tmp / _vector_file("image", meta.generation))
            if text_index is not None:
                _write_faiss_atomic(text_index, tmp / _vector_file("text", meta.generation))
            with contextlib.closing(sqlite3.connect(tmp / STORE_FILE)) as conn, conn:
                conn.execute(_SCHEMA)
                _insert_records(conn, 0, records)
            if card_yaml:
                (tmp / CARD_FILE).write_text(card_yaml)
            _write_json_atomic(meta.to_dict(), tmp / META_FILE)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    # -- incremental add -------------------------------------------------------------------------
    def add(self, image_vectors: np.ndarray, records: Sequence[CaseRecord], text_vectors: np.ndarray | None = None,
            manifest: dict[str, Any] | None = None) -> range:
        """Append cases without rebuilding; returns their new ids. Old ids never change."""
        image_vectors = l2_normalize(image_vectors)
        if image_vectors.shape[1] != self.meta.dim:
            raise CaseIndexError(f"{self.path}: vectors of dim {image_vectors.shape[1]} cannot join an index of dim "
                              f"{self.meta.dim} (built with model {self.meta.model!r})")
        if len(records) != len(image_vectors):
            raise CaseIndexError(f"{len(image_vectors)} image vectors but {len(records)} case records")
        if self.meta.has_text:
            if text_vectors is None:
                raise CaseIndexError(f"{self.path} indexes report text; the added cases need text vectors too")
            text_vectors = l2_normalize(text_vectors)
        start, gen = self.meta.count, self.meta.generation + 1
        self.image_index.add(image_vectors)
        _write_faiss_atomic(self.image_index, self.path / _vector_file("image", gen))
        if self.text_index is not None and text_vectors is not None:
            self.text_index.add(text_vectors)
            _write_faiss_atomic(self.text_index, self.path / _vector_file("text", gen))
        conn = sqlite3.connect(self.path / STORE_FILE)
        try:
            with conn:
                conn.execute("DELETE FROM cases WHERE id >= ?", (start,))  # leftovers of an interrupted add
                _insert_records(conn, start, records)
        finally:
            conn.close()
        old_gen = self.meta.generation
        self.meta.count += len(records)
        self.meta.generation = gen
        self.meta.updated = time.time()
        if manifest:
            self.meta.manifests.append(manifest)
        _write_json_atomic(self.meta.to_dict(), self.path / META_FILE)  # the commit point
        for space in ("image", "text"):
            (self.path / _vector_file(space, old_gen)).unlink(missing_ok=True)
        return range(start, start + len(records))

    # -- queries ---------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, space: str = "image") -> list[list[tuple[int, float]]]:
        """Top-``k`` (id, cosine) per query row, best first, against image or report vectors."""
        index = self.image_index if space == "image" else self.text_index
        if index is None:
            raise CaseIndexError(f"{self.path} has no {space} vectors (the model had no text tower)")
        if self.meta.count == 0:
            return [[] for _ in range(len(queries))]
        queries = l2_normalize(queries)
        scores, ids = index.search(queries, min(k, self.meta.count))
        return [[(int(i), float(s)) for i, s in zip(row_ids, row_s, strict=True) if 0 <= i < self.meta.count]
                for row_ids, row_s in zip(ids, scores, strict=True)]

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path / STORE_FILE}?mode=ro", uri=True)
            self._local.conn = conn
        return conn

    def get(self, ids: Sequence[int], thumbnails: bool = True) -> list[CaseRecord]:
        """Records for ``ids`` in the same order (unknown ids raise)."""
        if not ids:
            return []
        cols = "id, source, row, image, text, labels, patient_id, split" + (", thumbnail" if thumbnails else "")
        wanted = sorted({int(i) for i in ids})
        by_id: dict[int, Any] = {}
        for start in range(0, len(wanted), 500):  # old SQLite allows 999 bound parameters
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn().execute(f"SELECT {cols} FROM cases WHERE id IN ({marks}) AND id < ?",  # noqa: S608
                                        (*chunk, self.meta.count)).fetchall()
            by_id.update((r[0], r) for r in rows)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise CaseIndexError(f"{self.path}: case ids {missing[:5]} are not in the store")
        out = []
        for i in ids:
            r = by_id[i]
            out.append(CaseRecord(id=r[0], source=r[1], row=r[2], image=r[3], text=r[4], labels=json.loads(r[5]),
                                  patient_id=r[6], split=r[7], thumbnail=r[8] if thumbnails else None))
        return out

    def iter_records(self, batch: int = 500, thumbnails: bool = False) -> Iterator[CaseRecord]:
        """Every record in id order (batches stay under old SQLite's 999 bound-parameter limit)."""
        for start in range(0, self.meta.count, batch):
            yield from self.get(list(range(start, min(start + batch, self.meta.count))), thumbnails=thumbnails)

    def card_yaml(self) -> str | None:
        f = self.path / CARD_FILE
        return f.read_text() if f.is_file() else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _vector_file(space: str, generation: int) -> str:
    return f"{space}-{generation:04d}.faiss"
