"""WebDataset tar shards: pack a manifest for streaming, read it back with random access.

``medvl data shards MANIFEST --out DIR`` writes ``shard-000000.tar``, ... with WebDataset's
``TarWriter`` (one sample = ``KEY.img0.<ext>`` original image bytes per view, ``KEY.txt`` the
report, ``KEY.json`` row/split/patient/labels) plus ``index.json`` listing, for every sample,
its shard and the byte offset/size of its first image inside the tar.

Why an index: the shards are plain WebDataset tars any streaming pipeline can read, yet the
trainer reads them as a *map-style* dataset (seek + read), so data order, resume and DDP slicing
are exactly those of a manifest run (a pure function of seed and epoch). The images keep their
original encoding (PNG/JPEG/DICOM/NIfTI...) and are decoded by the same reader as the manifest
path, so both give the same pixels.

Where the shards live: a local directory or any fsspec URL (``http(s)://host/dir``,
``s3://bucket/dir`` with s3fs, ``gs://bucket/dir`` with gcsfs). Two ways to read them:

* :class:`ShardDataset` (what ``data.shards`` trains from by default): random access, one byte-range read per
  sample (a ``Range`` request over HTTP/S3), so the trainer's order, resume and DDP slicing apply;
* :class:`ShardStream` (``data.stream_buffer: N``): sequential streaming, one GET per shard over
  HTTP (large sequential range reads on object stores), shards shuffled per epoch and a seeded
  shuffle buffer, for object stores where per-sample requests are too slow. Its order is
  a pure function of (index, seed, epoch, buffer), computed from ``index.json`` alone, so
  ``state_dict()`` (epoch, position) resumes at the exact sample, reading only the shards that
  still hold unread samples.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvl.data.manifest import load_manifest, require_known_labels
from medvl.errors import ImageReadError, ManifestError

INDEX = "index.json"
FORMAT = "medvl-shards"
VERSION = 1


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for multi in (".nii.gz",):
        if name.endswith(multi):
            return multi[1:]
    return path.suffix[1:].lower() or "bin"


def write_shards(manifest: str | Path, out: str | Path, shard_size: int = 1000,
                 split: str | None = None) -> dict[str, Any]:
    """Write tar shards + ``index.json`` for every row (or one split) of ``manifest``; returns the index."""
    import webdataset as wds

    if shard_size < 1:
        raise ManifestError(f"--shard-size must be >= 1, got {shard_size}")
    man = load_manifest(manifest)
    samples = man.samples if split is None else [s for s in man.samples if s.split == split]
    if not samples:
        raise ManifestError(f"{man.path}: no rows{f' with split={split!r}' if split else ''} to pack")
    require_known_labels(man, samples)  # a typo would be packed as "negative for every class"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label_matrix = man.subset(samples).label_matrix()
    entries: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    for start in range(0, len(samples), shard_size):
        name = f"shard-{len(shards):06d}.tar"
        chunk = samples[start:start + shard_size]
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream)
            for j, s in enumerate(chunk):
                key = f"{start + j:08d}"
                rec: dict[str, Any] = {"__key__": key, "txt": s.text}
                names = []
                for v, rel in enumerate(s.image):
                    path = man.resolve(rel)
                    if not path.is_file():
                        raise ImageReadError(path, f"not a file (manifest {man.path}, row {s.row}); shards "
                                                   f"hold single-file images only")
                    field = f"img{v}.{_suffix(path)}"
                    rec[field] = path.read_bytes()
                    names.append(field)
                labels = [None if np.isnan(x) else float(x) for x in label_matrix[start + j]]
                rec["json"] = json.dumps({"row": s.row, "split": s.split, "patient_id": s.patient_id,
                                          "labels": labels, "images": names}).encode()
                writer.write(rec)
                entries.append({"key": key, "shard": len(shards), "row": s.row, "split": s.split,
                                "patient_id": s.patient_id, "text": s.text, "labels": labels,
                                "image": names[0] if names else None})
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, out / name)
        shards.append({"name": name, "num_samples": len(chunk)})
    # Offsets are read back from the finished tars, so they are exactly what tarfile sees.
    by_key = {e["key"]: e for e in entries}
    for sh in shards:
        with tarfile.open(out / sh["name"]) as tf:
            for m in tf.getmembers():
                key, _, field = m.name.partition(".")
                e = by_key.get(key)
                if e is not None and field == e["image"]:
                    e["offset"], e["size"] = m.offset_data, m.size
    index = {"format": FORMAT, "version": VERSION, "manifest": str(man.path), "classes": list(man.classes),
             "num_samples": len(entries), "shards": shards, "samples": entries}
    tmp_index = out / f".{INDEX}.tmp"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, out / INDEX)
    if man.card is not None:
        man.card.save(out / "card.yaml")
    return index


def is_url(location: str | Path) -> bool:
    """True for ``scheme://...`` locations (read with fsspec), False for local paths."""
    return "://" in str(location) and not str(location).startswith("file://")


def join_location(base: str | Path, name: str) -> str | Path:
    """``base/name`` for a local directory (a Path) or a URL (a string)."""
    if is_url(base):
        return str(base).rstrip("/") + "/" + name
    return Path(str(base).removeprefix("file://")) / name


def read_bytes(location: str | Path, start: int | None = None, size: int | None = None) -> bytes:
    """Whole file, or ``size`` bytes from ``start``, from a local path or an fsspec URL (one range read)."""
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(location))
        if start is None:
            return bytes(fs.cat_file(path))
        return bytes(fs.cat_file(path, start=start, end=start + int(size or 0)))
    with open(location, "rb") as f:
        if start is not None:
            f.seek(start)
            return f.read(size)
        return f.read()


def read_index(directory: str | Path) -> dict[str, Any]:
    path = join_location(directory, INDEX)
    try:
        index = json.loads(read_bytes(path))
    except (OSError, ValueError, ImportError) as exc:
        raise ManifestError(f"{path}: cannot read the shard index ({exc}); write shards with `medvl data shards`") \
            from exc
    if index.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a medvl shard index (format {index.get('format')!r})")
    return index


class ShardDataset(Dataset):
    """Map-style dataset over shards written by :func:`write_shards`; same samples as ManifestDataset."""

    def __init__(self, directory: str | Path, split: str | None = "train", image_size: int = 64, channels: int = 1,
                 augment: bool = False, mean: tuple[float, ...] | None = (0.5,),
                 std: tuple[float, ...] | None = (0.5,), seed: int = 0, resize_mode: str = "pad"):
        from medvl.data.transforms import build_transforms

        self.directory = directory if is_url(directory) else Path(str(directory).removeprefix("file://"))
        index = read_index(self.directory)
        self.classes = list(index["classes"])
        self.shards = [join_location(self.directory, s["name"]) for s in index["shards"]]
        self.entries = [e for e in index["samples"] if split is None or e["split"] == split]
        if not self.entries:
            splits = sorted({e["split"] for e in index["samples"]})
            raise ManifestError(f"{self.directory}: no samples with split={split!r} (present: {', '.join(splits)})")
        self.image_size, self.channels, self.resize_mode = image_size, channels, resize_mode
        self.seed, self.epoch = seed, 0
        self.transform = build_transforms(image_size, channels, augment, mean, std, resize_mode=resize_mode,
                                          classes=self.classes)
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def texts(self) -> list[str]:
        return [e["text"] for e in self.entries]

    @property
    def rows(self) -> list[int]:
        return [e["row"] for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _image_bytes(self, e: dict[str, Any]) -> bytes:
        try:
            data = read_bytes(self.shards[e["shard"]], e["offset"], e["size"])
        except (OSError, ValueError) as exc:
            raise ImageReadError(self.shards[e["shard"]], f"cannot read sample {e['key']} (row {e['row']}): "
                                                          f"{exc}") from exc
        if len(data) != e["size"]:
            raise ImageReadError(self.shards[e["shard"]], f"truncated shard (sample {e['key']}, row {e['row']})")
        return data

    def _decode(self, e: dict[str, Any], data: bytes | None = None) -> torch.Tensor:
        from medvl.data.cache import decode_uint8
        from medvl.data.transforms import prepare_uint8

        # The medvl readers take paths (DICOM/NIfTI libraries do), so the bytes go through a
        # per-process scratch file named with the original suffix.
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="medvl-shard-")
        scratch = Path(self._tmpdir.name) / f"{os.getpid()}.{e['image'].split('.', 1)[1]}"
        scratch.write_bytes(self._image_bytes(e) if data is None else data)
        try:
            arr, dims = decode_uint8(scratch)
        except ImageReadError as exc:
            raise ImageReadError(self.shards[e["shard"]], f"sample {e['key']} (row {e['row']}): {exc.reason}") from exc
        return prepare_uint8(arr, self.image_size, self.channels, self.resize_mode, dims)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index)

    def sample(self, index: int, data: bytes | None = None) -> dict[str, Any]:
        """Sample ``index`` (decoded, transformed); ``data``: its image bytes when already read."""
        e = self.entries[index]
        labels = torch.tensor([0.0 if v is None else v for v in e["labels"]], dtype=torch.float32)
        mask = torch.tensor([0.0 if v is None else 1.0 for v in e["labels"]], dtype=torch.float32)
        sample = {"image": self._decode(e, data), "text": e["text"], "labels": labels, "label_mask": mask,
                  "index": index, "row": e["row"], "patient_id": e["patient_id"]}
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return self.transform(sample, torch.Generator().manual_seed(int(state)))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: each makes its own scratch dir
        state = dict(self.__dict__)
        state["_tmpdir"] = None
        return state


def shard_read_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The seeded order in which :class:`ShardStream` reads the shards in ``epoch``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 1]))
    return [int(i) for i in rng.permutation(num_shards)]


def stream_order(shard_entries: list[list[int]], seed: int, epoch: int, buffer: int) -> list[int]:
    """The order in which :class:`ShardStream` emits entries in ``epoch``: a pure function.

    Shards are read in a seeded random order, each one front to back; samples pass through a
    shuffle buffer of ``buffer`` slots (WebDataset's ``shuffle``: fill, then emit a random slot and
    put the next sample there; drain at the end). ``shard_entries[i]`` lists, in file order, the
    entries of shard ``i``. ``buffer=1`` keeps the read order.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 2]))
    out: list[int] = []
    slots: list[int] = []
    for sh in shard_read_order(len(shard_entries), seed, epoch):
        for e in shard_entries[sh]:
            if len(slots) < buffer:
                slots.append(e)
                continue
            k = int(rng.integers(len(slots)))
            out.append(slots[k])
            slots[k] = e
    while slots:
        out.append(slots.pop(int(rng.integers(len(slots)))))
    return out


class ShardStream(torch.utils.data.IterableDataset):
    """Stream shards sequentially (one read per shard) through a seeded shuffle buffer, resumable.

    Samples, pixels and augmentation are those of :class:`ShardDataset` (same index, same
    per-sample seeds); only the order differs: :func:`stream_order`. With ``world_size`` ranks,
    rank ``r`` takes stream positions ``r, r + world_size, ...`` (every sample once per epoch
    over all ranks); with ``global_batch`` B it takes instead the ``r``-th contiguous slice of
    each block of B positions (the trainer's DDP slicing: W ranks together see the batches one
    process sees), and an epoch ends after its last full block. ``state_dict()`` is ``{"epoch",
    "position"}`` (global stream positions consumed); loading it and iterating continues at
    exactly the next sample. Each iteration covers the rest of the current epoch and then
    advances it (``endless``: and the following epochs, forever). ``indices`` restricts the
    stream to those entries (e.g. the trainer's usable pairs). Memory: at most ``buffer`` raw
    images are held. Use with ``num_workers=0`` (one ordered stream); decoding is per sample.
    """

    def __init__(self, source: str | Path | ShardDataset, split: str | None = "train", buffer: int = 1000,
                 seed: int = 0, rank: int = 0, world_size: int = 1, indices: list[int] | None = None,
                 global_batch: int | None = None, endless: bool = False, **dataset_kwargs: Any):
        super().__init__()
        if buffer < 1:
            raise ManifestError(f"shuffle buffer must be >= 1, got {buffer}")
        if global_batch is not None and global_batch % world_size:
            raise ManifestError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.dataset = source if isinstance(source, ShardDataset) else \
            ShardDataset(source, split=split, seed=seed, **dataset_kwargs)
        self.buffer, self.seed, self.rank, self.world_size = int(buffer), int(seed), int(rank), int(world_size)
        self.global_batch, self.endless = global_batch, bool(endless)
        keep = set(range(len(self.dataset.entries))) if indices is None else set(indices)
        by_shard: list[list[int]] = [[] for _ in self.dataset.shards]
        for i, e in enumerate(self.dataset.entries):
            if i in keep:
                by_shard[e["shard"]].append(i)
        self.shard_entries = by_shard
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:  # this rank's samples per epoch
        n = sum(len(e) for e in self.shard_entries)
        if self.global_batch:
            return n // self.global_batch * (self.global_batch // self.world_size)
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def _mine(self, p: int) -> bool:
        if self.global_batch:
            return (p % self.global_batch) // (self.global_batch // self.world_size) == self.rank
        return p % self.world_size == self.rank

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def order(self, epoch: int | None = None) -> list[int]:
        return stream_order(self.shard_entries, self.seed, self.epoch if epoch is None else epoch, self.buffer)

    def __iter__(self) -> Any:
        while True:
            yield from self._epoch()
            if not self.endless:
                return

    def _epoch(self) -> Any:
        import tarfile as _tar

        order = self.order()
        if self.global_batch:
            order = order[:len(order) // self.global_batch * self.global_batch]
        self.dataset.set_epoch(self.epoch)
        wanted = {order[p]: p for p in range(self.position, len(order)) if self._mine(p)}
        todo = sorted(wanted.values())
        held: dict[int, bytes] = {}
        nxt = 0
        key_to_entry = {self.dataset.entries[i]["key"]: i for i in wanted}
        for sh in shard_read_order(len(self.shard_entries), self.seed, self.epoch):
            if nxt >= len(todo):
                break
            if not any(i in wanted for i in self.shard_entries[sh]):
                continue  # nothing left to read in this shard (already consumed before a resume)
            url = self.dataset.shards[sh]
            stream = _open_stream(url)
            try:
                with _tar.open(fileobj=stream, mode="r|") as tf:
                    for m in tf:
                        key, _, field = m.name.partition(".")
                        i = key_to_entry.get(key)
                        if i is None or field != self.dataset.entries[i]["image"]:
                            continue
                        f = tf.extractfile(m)
                        held[i] = f.read() if f is not None else b""
                        while nxt < len(todo) and order[todo[nxt]] in held:
                            p = todo[nxt]
                            sample = self.dataset.sample(order[p], held.pop(order[p]))
                            nxt += 1
                            self.position = p + 1
                            yield sample
            except (OSError, _tar.TarError) as exc:
                raise ImageReadError(url, f"cannot stream shard: {exc}") from exc
            finally:
                stream.close()
        if nxt < len(todo):
            missing = self.dataset.entries[order[todo[nxt]]]
            raise ManifestError(f"{self.dataset.directory}: sample {missing['key']} (row {missing['row']}) is in "
                                f"the index but not in {self.dataset.shards[missing['shard']]}")
        self.epoch, self.position = self.epoch + 1, 0


def stream_loader(dataset: ShardDataset, indices: list[int], collate: Any, buffer: int, seed: int, batch_size: int,
                  rank: int, world_size: int, epoch: int, batch_in_epoch: int) -> torch.utils.data.DataLoader:
    """The trainer's loader for ``data.stream_buffer > 0``: this rank's micro-batches, endlessly, from
    global batch ``(epoch, batch_in_epoch)`` on (the same position bookkeeping as the random-access
    sampler: ``len(indices) // batch_size`` batches per epoch)."""
    stream = ShardStream(dataset, buffer=buffer, seed=seed, rank=rank, world_size=world_size, indices=indices,
                         global_batch=batch_size, endless=True)
    stream.load_state_dict({"epoch": epoch, "position": batch_in_epoch * batch_size})
    return torch.utils.data.DataLoader(stream, batch_size=batch_size // world_size, collate_fn=collate,
                                       num_workers=0)


def _open_stream(location: str | Path) -> Any:
    """A sequential binary stream of a local file or an fsspec URL (no seeking needed)."""
    if is_url(location):
        import fsspec

        # http(s): block_size=0 is one streaming GET; object stores: large sequential range reads.
        http = str(location).startswith(("http://", "https://"))
        return fsspec.open(str(location), "rb", block_size=0 if http else 1 << 23).open()
    return open(location, "rb")
