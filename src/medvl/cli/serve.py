"""``medvl serve`` and ``medvl index build|add|search|info``: argument parsing only.

The logic lives in :mod:`medvl.serve` (index building, the FastAPI app); these commands map
options onto it and print results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import app, device_option

console = Console()
err_console = Console(stderr=True)
index_app = typer.Typer(help="Similar-case index: build from a manifest, add, search, inspect.", no_args_is_help=True)
app.add_typer(index_app, name="index")

KIND_HELP = "Index type: auto (exact below --exact-threshold vectors, IVF above), flat, ivf or hnsw."


def _splits(split: list[str] | None) -> list[str] | None:
    out = [s.strip() for item in (split or []) for s in item.split(",") if s.strip()]
    return out or None


@index_app.command("build")
def build(
    model: str = typer.Option(..., "--model", help="Encoder: a medvl checkpoint directory or timm:<name>."),
    data: Path = typer.Option(..., "--data", help="Manifest (.csv/.jsonl/.parquet) with its card.yaml beside it."),
    out: Path = typer.Option(..., "--out", help="Index directory to create."),
    split: list[str] | None = typer.Option(None, "--split", help="Only these splits (repeat or comma-separate)."),
    kind: str = typer.Option("auto", "--kind", help=KIND_HELP),
    exact_threshold: int = typer.Option(50_000, "--exact-threshold", help="auto: exact search below this size."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per encoder forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index directory."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, cuda:1 ..."),
) -> None:
    """Embed a manifest's images (and reports) into a FAISS index plus a SQLite case store."""
    from medvl.cli.progress import progress_reporter
    from medvl.serve.build import build_index

    with progress_reporter("embedding") as report:
        index = build_index(model, data, out, splits=_splits(split), kind=kind, overwrite=overwrite,
                            batch_size=batch_size, threshold=exact_threshold, progress=report, device=device)
    m = index.meta
    console.print(f"wrote {out}: {m.count} cases, dim {m.dim}, kind {m.kind}"
                  + (f" {json.dumps(m.params)}" if m.params else "") + (", with report vectors" if m.has_text else ""))
    index.close()


@index_app.command("add")
def add(
    index_dir: Path = typer.Argument(..., help="Existing index directory."),
    data: Path = typer.Option(..., "--data", help="Manifest whose rows to append."),
    split: list[str] | None = typer.Option(None, "--split", help="Only these splits (repeat or comma-separate)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per encoder forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, cuda:1 ..."),
) -> None:
    """Append a manifest's cases with the index's own model; existing ids are unchanged."""
    from medvl.cli.progress import progress_reporter
    from medvl.serve.build import add_to_index

    with progress_reporter("embedding") as report:
        ids = add_to_index(index_dir, data, splits=_splits(split), batch_size=batch_size, progress=report,
                           device=device)
    console.print(f"added {len(ids)} cases to {index_dir} (ids {ids.start}..{ids.stop - 1})")
    from medvl.serve.index import EXACT_THRESHOLD, CaseIndex

    meta = CaseIndex.open(index_dir).meta
    if meta.kind == "flat" and meta.count >= EXACT_THRESHOLD:
        console.print(f"note: {meta.count} cases in an exact (flat) index; searches get slower linearly. Rebuild with "
                      f"`medvl index build --kind auto` to switch to IVF.", style="yellow", highlight=False)


@index_app.command("search")
def search(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    text: str | None = typer.Option(None, "--text", help="Report-like query text."),
    image: Path | None = typer.Option(None, "--image", help="Query image file (PNG/JPEG/TIFF/DICOM...)."),
    k: int = typer.Option(10, "--k", min=1, max=1000, help="Number of results."),
    space: str = typer.Option("image", "--space", help="Search 'image' vectors or 'report' vectors."),
    width: int = typer.Option(80, "--width", help="Characters of report text shown per row."),
) -> None:
    """Print the top-k most similar cases for a text or an image query."""
    from medvl.serve.build import search_index

    if space not in ("image", "report"):
        raise typer.BadParameter("--space must be 'image' or 'report'")
    hits = search_index(index_dir, text=text, image=image, k=k, space="text" if space == "report" else "image")
    table = Table(title=f"{index_dir}: top {len(hits)}")
    for col, justify in (("#", "right"), ("id", "right"), ("score", "right"), ("image", "left"),
                         ("labels", "left"), ("report", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rank, (score, rec) in enumerate(hits, start=1):
        labels = ", ".join(c for c, v in rec.labels.items() if v == 1)
        report = rec.text if len(rec.text) <= width else rec.text[: width - 1] + "…"
        table.add_row(str(rank), str(rec.id), f"{score:.4f}", rec.image, labels, report)
    console.print(table)


@index_app.command("info")
def info(index_dir: Path = typer.Argument(..., help="Index directory.")) -> None:
    """Print the index metadata (model, size, kind, search parameters, manifests)."""
    from medvl.serve.index import CaseIndex

    index = CaseIndex.open(index_dir)
    console.print_json(json.dumps(index.meta.to_dict()))
    index.close()


@app.command("serve")
def serve(
    index: Path = typer.Option(..., "--index", help="Index directory built with `medvl index build`."),
    model: str | None = typer.Option(None, "--model", help="Encoder (default: the model recorded in the index)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: str | None = typer.Option(None, "--token", envvar="MEDVL_TOKEN", show_envvar=True,
                                     help="Require 'Authorization: Bearer <token>' on the API."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest accepted request body."),
    card: Path | None = typer.Option(None, "--card", help="Dataset card for zero-shot (default: the index's)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Micro-batch: most requests per forward pass."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", help="Micro-batch: longest wait to fill a batch."),
    device: str = device_option(),
    seg_model: Path | None = typer.Option(None, "--seg-model", help="A `medvl train-seg` checkpoint for box (or "
                                                                   "trained text) prompts of POST /v1/segment."),
    threads: int = typer.Option(1, "--threads", min=1,
                                help="Torch/FAISS CPU threads per forward pass. Concurrency comes from batching; "
                                     "intra-op threads mostly add barrier waits for small models on shared CPUs."),
    log_level: str = typer.Option("info", "--log-level", help="Log level (debug, info, warning)."),
) -> None:
    """Serve embeddings, zero-shot findings and similar-case search (FastAPI + a web page at /)."""
    import faiss
    import torch
    import uvicorn

    from medvl.data.card import load_card
    from medvl.models.encoder import load_encoder
    from medvl.serve.app import ServeSettings, create_app, serve_log_config
    from medvl.serve.index import CaseIndex
    from medvl.serve.security import check_bind

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    warning = check_bind(host, token)
    if warning:
        err_console.print(f"[bold red]{warning}[/]", highlight=False, soft_wrap=True)
    case_index = CaseIndex.open(index)
    encoder = load_encoder(model or case_index.meta.model, device=device)
    settings = ServeSettings(token=token or None, max_upload_mb=max_upload_mb, max_batch=max_batch,
                             max_wait_ms=max_wait_ms)
    application = create_app(encoder, case_index, load_card(card) if card else None, settings, seg_model=seg_model)
    console.print(f"medvl serving {case_index.meta.count} cases ({case_index.meta.kind}) with "
                  f"{getattr(encoder, 'name', model)} on http://{host}:{port}/ "
                  f"({'token required' if token else 'no token'}; docs at /docs)", highlight=False, soft_wrap=True)
    if os.environ.get("MEDVL_TOKEN") and token == os.environ.get("MEDVL_TOKEN"):
        console.print("token taken from MEDVL_TOKEN", highlight=False)
    uvicorn.run(application, host=host, port=port, log_config=serve_log_config(log_level), access_log=False,
                server_header=False)
