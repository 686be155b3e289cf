"""``medvl train`` and ``medvl data shards``: parse arguments, call one library function."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from medvl.cli.app import app, data_app

console = Console(stderr=True)


@app.command("train", context_settings={"allow_extra_args": False})
def train_cmd(
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="Training YAML (e.g. configs/clip-tiny-synth.yaml)."),
    overrides: list[str] | None = typer.Argument(None,
                                                 help="Dotted overrides, e.g. optim.lr=1e-3 train.max_steps=200."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest complete checkpoint in the output "
                                                        "dir (start fresh if there is none)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output dir (overrides train.out_dir)."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine: > 1 re-launches under torchrun (DDP)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines in the job (each runs this same command)."),
    rdzv_endpoint: str | None = typer.Option(None, "--rdzv-endpoint",
                                             help="HOST:PORT every node can reach (multi-node rendezvous)."),
    rdzv_id: str = typer.Option("medvl", "--rdzv-id", help="Job id shared by the nodes of one run."),
) -> None:
    """Pretrain a CLIP-style model: checkpoints, metrics.csv, TensorBoard; exact --resume; DDP."""
    from medvl.train.config import load_train_config
    from medvl.train.launch import launched_by_torchrun, spawn_torchrun

    cfg = load_train_config(config, overrides or [], out)  # validate before spawning anything
    if (nproc > 1 or nnodes > 1 or rdzv_endpoint) and not launched_by_torchrun():
        args = ["train"] + (["--config", str(config)] if config else []) + list(overrides or [])
        args += (["--resume"] if resume else []) + (["--out", str(out)] if out else [])
        raise typer.Exit(spawn_torchrun(nproc, args, nnodes, rdzv_endpoint, rdzv_id))
    from medvl.train.trainer import train

    result = train(cfg, resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return
    if not result.losses:
        console.print(f"nothing to do: {result.last_checkpoint} is already at step {result.step} "
                      f"(raise train.max_steps or train.epochs to continue)", highlight=False, soft_wrap=True)
    elif result.last_checkpoint is not None:
        console.print(f"final loss {result.final_loss:.4f}; model: {Path(cfg.train.out_dir) / 'last'}",
                      highlight=False, soft_wrap=True)


@data_app.command("shards")
def shards_cmd(
    manifest: Path = typer.Argument(..., help="Manifest file (.csv, .jsonl or .parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the tar shards and index.json."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per tar shard."),
    split: str | None = typer.Option(None, help="Only rows of this split (default: all rows)."),
) -> None:
    """Pack a manifest into WebDataset tar shards (image bytes, text, labels JSON) + index.json."""
    from medvl.train.shards import write_shards

    index = write_shards(manifest, out, shard_size=shard_size, split=split)
    console.print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shard(s) to {out}",
                  highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
