"""``medvl data medmnist`` (npz -> manifest + card) and ``medvl data cache`` (preprocess to a memmap)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import data_app

console = Console()


@data_app.command("medmnist")
def medmnist_cmd(
    subset: str | None = typer.Argument(None, help="Subset name (same as --name)."),
    name: str | None = typer.Option(None, "--name", help="Subset, e.g. breastmnist, chestmnist, organmnist3d."),
    out: Path = typer.Option(..., "--out", help="Output folder (images/, manifest.csv, card.yaml)."),
    size: int | None = typer.Option(None, "--size", help="28, 64, 128 or 224 (3D: 28 or 64). Default: the file's."),
    npz: Path | None = typer.Option(None, "--npz", help="Local npz; without it the official file is downloaded."),
    seed: int = typer.Option(0, "--seed", help="Fixes which caption template/phrase each sample gets."),
    volume_format: str = typer.Option("npz", "--volume-format", help="3D subsets: npz or nii.gz per sample."),
    download_dir: Path | None = typer.Option(None, "--download-dir", help="Where downloads go (default OUT/raw)."),
    check_sizes: bool = typer.Option(True, "--check-sizes/--no-check-sizes",
                                     help="Require the official split sizes (off for cut-down copies)."),
) -> None:
    """Convert a MedMNIST subset into image files + manifest.csv (captions from templates) + card.yaml."""
    from medvl.data.medmnist import SUBSETS, convert_medmnist

    chosen = name or subset
    if chosen is None or (name and subset and name != subset):
        raise typer.BadParameter(f"give the subset once, as NAME or --name; valid: {', '.join(SUBSETS)}")
    r = convert_medmnist(chosen, out, size=size, npz=npz, seed=seed, volume_format=volume_format,
                         download_root=download_dir, check_official_sizes=check_sizes)
    table = Table(title=f"{name} -> {r.manifest}")
    table.add_column("split")
    table.add_column("n", justify="right")
    classes = list(next(iter(r.class_counts.values())))
    for c in classes:
        table.add_column(c, justify="right")
    for split, n in r.split_sizes.items():
        table.add_row(split, str(n), *(str(r.class_counts[split][c]) for c in classes))
    console.print(table)
    md5 = {True: "matches the official MD5", False: "differs from the official MD5 (re-packaged copy?)",
           None: "no official MD5 known for this size"}[r.md5_matches_official]
    console.print(f"official split sizes: {'yes' if r.official_sizes_match else 'NO'}; file {md5}")
    console.print(f"card: {r.card}")


@data_app.command("cache")
def cache_cmd(
    manifest: Path = typer.Argument(..., help="Manifest file (.csv, .jsonl or .parquet)."),
    size: int = typer.Option(..., "--size", help="Side length in pixels (volumes: S x S x S)."),
    out: Path | None = typer.Option(None, "--out", help="Cache folder (default: beside the manifest)."),
    channels: int = typer.Option(1, "--channels", help="1 or 3."),
    resize_mode: str = typer.Option("pad", "--resize-mode", help="pad (keep aspect), stretch or crop."),
    workers: int = typer.Option(1, "--workers", help="Decoding threads."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a matching cache exists."),
    volume: str | None = typer.Option(None, "--volume", help="Volume policy as YAML, the training config's "
                                      "data.volume, e.g. '{intensity: window, window: [40, 400]}'."),
) -> None:
    """Decode and resize every image once into a uint8 memmap + index.json for fast training."""
    from medvl.config import parse_override
    from medvl.data.cache import DATA_NAME, build_cache, default_cache_dir

    policy = parse_override(f"volume={volume}")[1] if volume else None
    target = out or default_cache_dir(manifest, size, channels)
    index = build_cache(manifest, size, target, channels=channels, resize_mode=resize_mode, workers=workers,
                        force=force, volume_policy=policy)
    console.print(f"cache {target}: {DATA_NAME} shape {index.shape}, {len(index.errors)} unreadable rows")
    for e in index.errors[:20]:
        console.print(f"  row {e['row']}: {e['file']}: {e['reason']}", style="yellow", highlight=False, soft_wrap=True)
    if len(index.errors) > 20:
        console.print(f"  ... and {len(index.errors) - 20} more (see index.json)")
