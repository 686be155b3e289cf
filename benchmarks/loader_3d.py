"""3D loader throughput: medvl's volume cache and decode path vs MONAI's caches on the same NIfTI volumes, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_3d.py                  # 200 CT phantoms, 64^3 -> 32^3
    .venv/bin/python benchmarks/loader_3d.py --manifest path/to/manifest.csv --size 64

Inputs: int16 HU NIfTI volumes (``medvl.data.synthetic3d`` chest CT phantoms unless ``--manifest``).
Every pipeline yields float tensors ``[B, 1, S, S, S]`` through a torch DataLoader with the same
batch size and worker count, and reorients to RAS (medvl's reader always does; MONAI via
``Orientationd``), then resizes and scales to [0, 1]:

(a) ``ManifestDataset(cache_dir=...)``: slices of the uint8 memmap written once by ``build_cache``;
(b) MONAI ``PersistentDataset`` (deterministic transforms' output as ``.pt`` files on disk: the
    like-for-like peer of (a), **the headline ratio**);
(c) MONAI ``CacheDataset(cache_rate=1, copy_cache=False)`` (in RAM, rebuilt per process);
(d) ``ManifestDataset`` decoding every volume on every access;
(e) MONAI ``Dataset``: ``LoadImaged -> EnsureChannelFirstd -> Orientationd -> Resized -> ScaleIntensityd``.

Prints volumes/s, each cache's build time, the ratios and a Markdown row.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_throughput import images_per_second  # noqa: E402  (same best-of-N timing as the 2D benchmark)

from medvl.data.cache import build_cache  # noqa: E402
from medvl.data.dataset import ManifestDataset, collate_samples  # noqa: E402
from medvl.data.manifest import load_manifest  # noqa: E402


def monai_loader(paths: list[str], size: int, batch_size: int, workers: int, kind: str,
                 cache_dir: Path | None = None) -> tuple[DataLoader, float]:
    """A MONAI volume pipeline over ``paths`` and the seconds spent building its cache (0 when uncached)."""
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.data import DataLoader as MonaiLoader
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Resized, ScaleIntensityd

    tf = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image"),
                  Orientationd(keys="image", axcodes="RAS"), Resized(keys="image", spatial_size=(size,) * 3),
                  ScaleIntensityd(keys="image")])
    data = [{"image": p} for p in paths]
    t0 = time.perf_counter()
    if kind == "uncached":
        ds = Dataset(data, transform=tf)
    elif kind == "persistent":
        ds = PersistentDataset(data, transform=tf, cache_dir=cache_dir)
        for i in range(len(ds)):
            ds[i]
    else:
        ds = CacheDataset(data, transform=tf, cache_rate=1.0, num_workers=1, copy_cache=False, progress=False)
    return MonaiLoader(ds, batch_size=batch_size, num_workers=workers), (time.perf_counter() - t0
                                                                          if kind != "uncached" else 0.0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, help="use this manifest of volumes instead of generated phantoms")
    ap.add_argument("--n", type=int, default=200, help="generated CT phantoms")
    ap.add_argument("--px", type=int, default=64, help="generated volume side")
    ap.add_argument("--size", type=int, default=32, help="output cube side S (every pipeline)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest is None:
            from medvl.data.synthetic3d import generate_ct_phantoms

            manifest_path = generate_ct_phantoms(Path(tmp) / "ct", n=args.n, size=args.px, seed=0)
        else:
            manifest_path = args.manifest
        manifest = load_manifest(manifest_path)
        n = len(manifest)
        t0 = time.perf_counter()
        build_cache(manifest, args.size, Path(tmp) / "cache", force=True)
        build_s = time.perf_counter() - t0

        def ours(cache: Path | None) -> DataLoader:
            ds = ManifestDataset(manifest, split=None, image_size=args.size, cache_dir=cache)
            return DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_samples)

        paths = [str(manifest.image_paths(s)[0]) for s in manifest.samples]
        persistent, persistent_s = monai_loader(paths, args.size, args.batch_size, args.workers, "persistent",
                                                Path(tmp) / "monai-persistent")
        memory, memory_s = monai_loader(paths, args.size, args.batch_size, args.workers, "memory")
        plain, _ = monai_loader(paths, args.size, args.batch_size, args.workers, "uncached")
        loaders = {"medvl cache": ours(Path(tmp) / "cache"), "MONAI PersistentDataset": persistent,
                   "MONAI CacheDataset": memory, "medvl decode": ours(None), "MONAI Dataset": plain}
        builds = {"medvl cache": build_s, "MONAI PersistentDataset": persistent_s, "MONAI CacheDataset": memory_s}
        for loader in loaders.values():
            next(iter(loader))
        rates = {name: images_per_second(loader, n, args.repeats) for name, loader in loaders.items()}
        shapes = {name: tuple(next(iter(loader))["image"].shape[1:]) for name, loader in loaders.items()}
    shape = shapes["medvl cache"]
    if any(s != shape for s in shapes.values()):
        raise RuntimeError(f"pipelines disagree on the output shape: {shapes}")
    print(f"{n} volumes -> {shape}; batch {args.batch_size}, workers {args.workers}, best of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}")
    for name, b in builds.items():
        print(f"cache build {name:>24}: {b:6.2f} s ({n / b:.1f} volumes/s)")
    for name, r in rates.items():
        print(f"{name:>24}: {r:10.1f} volumes/s")
    vs_p = rates["medvl cache"] / rates["MONAI PersistentDataset"]
    vs_m = rates["medvl cache"] / rates["MONAI CacheDataset"]
    dec = rates["medvl decode"] / rates["MONAI Dataset"]
    print(f"HEADLINE medvl cache vs MONAI: {vs_p:.2f}x PersistentDataset (on disk, like for like), "
          f"{vs_m:.2f}x CacheDataset (in RAM); decoded: medvl / MONAI Dataset = {dec:.2f}x")
    print("| volumes | in -> out | medvl cache | MONAI Persistent | MONAI CacheDataset | medvl decode | "
          "MONAI Dataset | cache / Persistent | cache / CacheDataset | decode / Dataset |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {n} | {args.px}^3 -> {args.size}^3 | " + " | ".join(f"{r:.1f}" for r in rates.values())
          + f" | {vs_p:.2f}x | {vs_m:.2f}x | {dec:.2f}x |")
    return {**rates, "ratio_vs_persistent": vs_p, "ratio_vs_cachedataset": vs_m, "ratio_decoded": dec}


if __name__ == "__main__":
    main()
