"""Input-pipeline throughput: medvl memmap cache vs medvl decoding vs MONAI ``LoadImage``, in one run.

    .venv/bin/python benchmarks/loader_throughput.py                # ~1000 synthetic 64 px PNGs
    .venv/bin/python benchmarks/loader_throughput.py --manifest path/to/manifest.csv --size 64

Every pipeline yields float tensors [B, 1, S, S] from the same files through a torch DataLoader
with the same batch size and worker count:

(a) ``ManifestDataset(cache_dir=...)``: slices of the uint8 memmap built by ``build_cache``;
(b) ``ManifestDataset``: decode with ``medvl.data.io`` + resize on every access;
(c) MONAI: ``LoadImaged -> EnsureChannelFirstd -> Resized -> ScaleIntensityd`` on a ``monai.data.Dataset``.

Prints images/s for each, the ratios ours/MONAI and a Markdown table row. The cache build time is
reported separately (it is paid once per dataset and size).
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


def monai_loader(paths: list[str], size: int, batch_size: int, workers: int) -> DataLoader:
    from monai.data import DataLoader as MonaiLoader
    from monai.data import Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

    tf = Compose([
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        Resized(keys="image", spatial_size=(size, size)),
        ScaleIntensityd(keys="image"),
    ])
    return MonaiLoader(Dataset([{"image": p} for p in paths], transform=tf), batch_size=batch_size,
                       num_workers=workers)


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
        loaders = {"cached": ours(cache_dir), "decoded": ours(None),
                   "monai": monai_loader(paths, args.size, args.batch_size, args.workers)}
        for loader in loaders.values():  # warm-up: imports, page cache, first-call overheads
            next(iter(loader))
        rates = {name: images_per_second(loader, n, args.repeats) for name, loader in loaders.items()}
        shapes = {name: tuple(next(iter(loader))["image"].shape[1:]) for name, loader in loaders.items()}

    print(f"{n} images -> {shapes['cached']} (shapes: {shapes}); batch {args.batch_size}, "
          f"workers {args.workers}, best of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"cache build: {build_s:.2f} s ({n / build_s:.0f} images/s, once)")
    for name, r in rates.items():
        print(f"{name:>8}: {r:10.0f} images/s")
    ratio_c, ratio_d = rates["cached"] / rates["monai"], rates["decoded"] / rates["monai"]
    print(f"ours/MONAI: cached {ratio_c:.1f}x, decoded {ratio_d:.2f}x")
    print("| images | size | cached img/s | decoded img/s | MONAI img/s | cached/MONAI | decoded/MONAI |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {n} | {args.size} | {rates['cached']:.0f} | {rates['decoded']:.0f} | {rates['monai']:.0f} | "
          f"{ratio_c:.1f}x | {ratio_d:.2f}x |")
    return rates


if __name__ == "__main__":
    main()
