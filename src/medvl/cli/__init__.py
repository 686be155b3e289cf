"""``medvl`` console command. Importing the command modules registers their commands."""

from __future__ import annotations

import sys

from rich.console import Console

from medvl.cli.app import app
from medvl.errors import MedvlError

# Command modules (each registers on an app from medvl.cli.app).
from medvl.cli import (  # noqa: F401,E402  isort: skip
    bench,
    data_io,
    data_manifest,
    data_medmnist,
    data_reports,
    data_synth,
    eval_reports,
    evaluation,
    generate,
    models,
    segment,
    serve,
    train,
    trust,
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning :class:`MedvlError` into a one-line message and exit 2.

    Usage errors (unknown option, missing argument) are click's own: message + exit 2.
    """
    try:
        app(args=argv, prog_name="medvl")
    except MedvlError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
