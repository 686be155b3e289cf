"""``medvl data synth``: write the synthetic chest-radiograph phantom dataset (no logic here)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from medvl.cli.app import data_app


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (images/, manifest.csv, card.yaml)."),
    n: int = typer.Option(1000, "--n", help="Number of images (studies)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels (>= 16)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical output."),
    sites: int = typer.Option(2, "--sites", help="Number of simulated acquisition sites (1-4)."),
    studies_per_patient: str = typer.Option("1-3", "--studies-per-patient",
                                            help="Studies per patient: a count ('2') or a range ('1-3')."),
    image_format: str = typer.Option("png", "--format", help="Image format: png or jpg (masks are always png)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace images/, manifest.csv and card.yaml in a non-empty --out."),
    anatomy: bool = typer.Option(False, "--anatomy", help="Also write an organ label map per image (1 lung, "
                                                          "2 heart; columns anatomy_mask/anatomy_mask_labels)."),
    vqa: bool = typer.Option(False, "--vqa", help="Also write vqa.csv: questions the ground truth answers "
                                                  "(presence, side, size, count, change, twin-image pairs)."),
    dims: int = typer.Option(2, "--dims", help="2: chest radiographs; 3: chest CT volumes (HU NIfTI, RAS) with "
                                               "3D finding masks and organ maps (--size is the cube side)."),
) -> None:
    """Generate synthetic PA chest radiographs (or chest CT volumes) with reports, finding masks, manifest, card."""
    if dims == 3:
        from medvl.data.synthetic3d import generate_ct_phantoms

        start = time.perf_counter()
        manifest = generate_ct_phantoms(out, n=n, size=size, seed=seed, overwrite=overwrite)
        typer.echo(f"wrote {n} CT phantoms ({size}^3 voxels) to {manifest} in {time.perf_counter() - start:.1f}s")
        return
    if dims != 2:
        from medvl.errors import ConfigError

        raise ConfigError(f"--dims must be 2 or 3, got {dims}")
    from medvl.data.synthetic import generate_phantoms

    start = time.perf_counter()
    manifest = generate_phantoms(out, n=n, size=size, seed=seed, sites=sites,
                                 studies_per_patient=studies_per_patient, image_format=image_format,
                                 overwrite=overwrite, anatomy=anatomy)
    typer.echo(f"wrote {n} phantoms ({size}px, {sites} sites) to {manifest} in {time.perf_counter() - start:.1f}s")
    if vqa:
        from medvl.data.vqa_synth import generate_vqa

        typer.echo(f"wrote VQA questions to {generate_vqa(manifest)}")
