"""Input-pipeline throughput: medvl's memmap cache vs MONAI's own caches (the like-for-like peers), in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_throughput.py          # ~1000 synthetic 64 px PNGs
    .venv/bin/python benchmarks/loader_throughput.py --manifest path/to/manifest.csv --size 64

Every pipeline yields float tensors [B, 1, S, S] from the same files through a torch DataLoader
with the same batch size and worker count. Cached pipelines are compared with cached ones:

(a) ``ManifestDataset(cache_dir=...)``: slices of the uint8 memmap built once by ``build_cache``
    (on disk, reused by every later process);
(b) MONAI ``PersistentDataset``: the deterministic transforms' output written once to ``cache_dir``
    as one ``.pt`` file per sample and read back on every access (on disk, reused by later processes:
    **the like-for-like peer of (a), the headline ratio**);
(c) MONAI ``CacheDataset(cache_rate=1, copy_cache=False)``: the same output held in RAM (rebuilt by
    every process; ``copy_cache=False`` is MONAI's documented setting when no random transform
    follows, the fastest it offers);
(d) ``ManifestDataset``: decode with ``medvl.data.io`` + resize on every access;
(e) MONAI ``Dataset``: ``LoadImaged -> EnsureChannelFirstd -> Resized -> ScaleIntensityd`` on every access
    (the uncached peer of (d)).

Prints images/s for each, the ratios and a Markdown table. The build time of each cache is reported
separately (paid once per dataset and size: by (a) and (b) once on disk, by (c) in every process).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medvl.data.cache import build_cache
from medvl.data.dataset import ManifestDataset, collate_samples
from medvl.data.manifest import load_manifest, write_manifest


def make_pngs(folder: Path, n: int, px: int, seed: int = 0) -> Path:
    """``n`` grey PNGs (smooth blobs + noise, so PNG compression is realistic) and a manifest."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px] / px
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
        img = 80 + 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) + rng.normal(0, 8, (px, px))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "text": f"synthetic image {i}", "labels": "blob" if i % 2 else "",
                     "split": "train", "patient_id": f"p{i}"})
    return write_manifest(rows, folder / "manifest.csv")


def images_per_second(loader: Iterable, n_expected: int, repeats: int) -> float:
    """Best of ``repeats`` full passes (best-of removes noise from other processes on a shared CPU)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        seen = 0
        for batch in loader:
            seen += batch["image"].shape[0]
        dt = time.perf_counter() - t0
        if seen != n_expected:
            raise RuntimeError(f"pipeline produced {seen} images, expected {n_expected}")
        best = max(best, seen / dt)
    return best


def monai_transform(size: int):  # noqa: ANN201 - a monai Compose
    """MONAI's idiomatic equivalent of medvl's decode + resize + [0, 1] scaling (all deterministic)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

    return Compose([
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        Resized(keys="image", spatial_size=(size, size)),
        ScaleIntensityd(keys="image"),
    ])


def monai_loader(paths: list[str], size: int, batch_size: int, workers: int, kind: str = "uncached",
                 cache_dir: Path | None = None) -> tuple[DataLoader, float]:
    """A MONAI pipeline over ``paths`` and the seconds spent building its cache (0 when uncached).

    ``kind``: ``uncached`` (``Dataset``), ``persistent`` (``PersistentDataset`` on ``cache_dir``; the
    cache is filled by one pass over the dataset, which is its build time) or ``memory``
    (``CacheDataset``, filled at construction).
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.data import DataLoader as MonaiLoader

    data = [{"image": p} for p in paths]
    tf = monai_transform(size)
    t0 = time.perf_counter()
    if kind == "uncached":
        ds = Dataset(data, transform=tf)
    elif kind == "persistent":
        assert cache_dir is not None
        ds = PersistentDataset(data, transform=tf, cache_dir=cache_dir)
        for i in range(len(ds)):  # write every sample's cache file once
            ds[i]
    elif kind == "memory":
        ds = CacheDataset(data, transform=tf, cache_rate=1.0, num_workers=1, copy_cache=False, progress=False)
    else:
        raise ValueError(f"unknown MONAI pipeline {kind!r}")
    build_s = time.perf_counter() - t0 if kind != "uncached" else 0.0
    return MonaiLoader(ds, batch_size=batch_size, num_workers=workers), build_s


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, help="use this manifest instead of generated PNGs (all rows)")
    ap.add_argument("--n", type=int, default=1000, help="generated images")
    ap.add_argument("--px", type=int, default=64, help="generated image side")
    ap.add_argument("--size", type=int, default=64, help="output side S (every pipeline)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (same for all pipelines)")
    ap.add_argument("--repeats", type=int, default=3, help="passes per pipeline; the best is reported")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the comparison is about the loader, not intra-op threading

    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = args.manifest or make_pngs(Path(tmp) / "pngs", args.n, args.px)
        manifest = load_manifest(manifest_path)
        n = len(manifest)
        cache_dir = Path(tmp) / "cache"
        t0 = time.perf_counter()
        build_cache(manifest, args.size, cache_dir, force=True)
        build_s = time.perf_counter() - t0

        def ours(cache: Path | None) -> DataLoader:
            ds = ManifestDataset(manifest, split=None, image_size=args.size, cache_dir=cache)
            return DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_samples)

        paths = [str(manifest.image_paths(s)[0]) for s in manifest.samples]
        monai_persistent, persistent_s = monai_loader(paths, args.size, args.batch_size, args.workers, "persistent",
                                                      Path(tmp) / "monai-persistent")
        monai_memory, memory_s = monai_loader(paths, args.size, args.batch_size, args.workers, "memory")
        monai_plain, _ = monai_loader(paths, args.size, args.batch_size, args.workers, "uncached")
        loaders = {"medvl cache": ours(cache_dir), "MONAI PersistentDataset": monai_persistent,
                   "MONAI CacheDataset": monai_memory, "medvl decode": ours(None), "MONAI Dataset": monai_plain}
        builds = {"medvl cache": build_s, "MONAI PersistentDataset": persistent_s, "MONAI CacheDataset": memory_s}
        for loader in loaders.values():  # warm-up: imports, page cache, first-call overheads
            next(iter(loader))
        rates = {name: images_per_second(loader, n, args.repeats) for name, loader in loaders.items()}
        shapes = {name: tuple(next(iter(loader))["image"].shape[1:]) for name, loader in loaders.items()}

    shape = shapes["medvl cache"]
    if any(s != shape for s in shapes.values()):
        raise RuntimeError(f"pipelines disagree on the output shape: {shapes}")
    print(f"{n} images -> {shape}; batch {args.batch_size}, workers {args.workers}, best of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    for name, b in builds.items():
        print(f"cache build {name:>24}: {b:6.2f} s ({n / b:.0f} images/s)")
    for name, r in rates.items():
        print(f"{name:>24}: {r:10.0f} images/s")
    vs_persistent = rates["medvl cache"] / rates["MONAI PersistentDataset"]
    vs_memory = rates["medvl cache"] / rates["MONAI CacheDataset"]
    decoded = rates["medvl decode"] / rates["MONAI Dataset"]
    uncached_gap = rates["medvl cache"] / rates["MONAI Dataset"]
    # The headline is cache against MONAI's caches; both are printed because they bracket medvl's design
    # (on disk like PersistentDataset, but mmap'd rather than unpickled; not held in RAM like CacheDataset).
    print(f"HEADLINE medvl cache vs MONAI's caches: {vs_persistent:.2f}x MONAI PersistentDataset (on disk, like for "
          f"like), {vs_memory:.2f}x MONAI CacheDataset (in RAM)")
    print(f"uncached: medvl decode / MONAI Dataset = {decoded:.2f}x; (medvl cache / uncached MONAI = "
          f"{uncached_gap:.1f}x is not like for like and is no claim)")
    print("| images | size | medvl cache | MONAI Persistent | MONAI CacheDataset | medvl decode | MONAI Dataset | "
          "cache / Persistent | cache / CacheDataset | decode / Dataset |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {n} | {args.size} | " + " | ".join(f"{r:.0f}" for r in rates.values())
          + f" | {vs_persistent:.2f}x | {vs_memory:.2f}x | {decoded:.2f}x |")
    return {**rates, "ratio_vs_persistent": vs_persistent, "ratio_vs_cachedataset": vs_memory,
            "ratio_decoded": decoded}


if __name__ == "__main__":
    main()
