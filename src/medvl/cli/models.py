"""``medvl models ...`` commands: list the model presets and the known pretrained encoders."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import models_app


@models_app.command("list")
def list_cmd(
    pretrained: bool = typer.Option(False, "--pretrained",
                                    help="List known public pretrained models (BiomedCLIP, MedSigLIP, RAD-DINO...) "
                                         "with their hub id, format, licence and whether a local copy was found."),
) -> None:
    """List the built-in model presets (towers, embedding size, parameter count)."""
    if pretrained:
        _list_pretrained()
        return
    from medvl.models import model_summaries

    table = Table(title="medvl model presets")
    for col in ("name", "image tower", "text tower", "embed dim", "objective", "params"):
        table.add_column(col, justify="right" if col in ("embed dim", "params") else "left")
    for row in model_summaries():
        table.add_row(row["name"], row["image_tower"], row["text_tower"], str(row["embed_dim"]),
                      row["objective"], f"{row['params'] / 1e6:.2f}M")
    Console().print(table)


def _list_pretrained() -> None:
    from medvl.models.pretrained.known import PRETRAINED_DIR_ENV, known_summaries

    table = Table(title="known pretrained models (load_encoder('<name>') or --model <name>)")
    for col in ("name", "format", "hub id", "licence", "input", "load as", "prompt templates", "local copy"):
        table.add_column(col, overflow="fold")
    notes = []
    for row in known_summaries():
        name = row["name"] + ("" if row["verified"] else " (unverified)")
        table.add_row(name, row["format"], row["hub_id"], row["licence"], row["input"], row["spec"],
                      row["templates"], row["local"] or "-")
        if row["notes"]:
            notes.append(f"{row['name']}: {row['notes']}")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"  note - {note}")
    console.print(f"Local copies are looked up in ${PRETRAINED_DIR_ENV}/<name>/ and the Hugging Face cache; "
                  f"offline, load_encoder('<name>') says which folder to provide and how to download it.")
