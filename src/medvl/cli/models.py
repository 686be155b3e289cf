"""``medvl models ...`` commands: list the model presets."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from medvl.cli.app import models_app


@models_app.command("list")
def list_cmd() -> None:
    """List the built-in model presets (towers, embedding size, parameter count)."""
    from medvl.models import model_summaries

    table = Table(title="medvl model presets")
    for col in ("name", "image tower", "text tower", "embed dim", "objective", "params"):
        table.add_column(col, justify="right" if col in ("embed dim", "params") else "left")
    for row in model_summaries():
        table.add_row(row["name"], row["image_tower"], row["text_tower"], str(row["embed_dim"]),
                      row["objective"], f"{row['params'] / 1e6:.2f}M")
    Console().print(table)
