"""Shared fixtures. Tests that need ../shared/data skip with that reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder (../shared/data); skip when it is not beside the project."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared real data at {SHARED_DATA} (absent on this machine)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def grounding_set(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """40 phantoms at 64 px (with finding masks) and a random clip-tiny with an 8x8 patch grid, saved.

    Shared by the grounding evaluator and the report-figure tests: ``root``, ``manifest``, ``rows``
    (the manifest as dicts), ``model`` (checkpoint directory).
    """
    import csv

    import torch

    from medvl.data.synthetic import generate_phantoms
    from medvl.models import create_model, save_model

    root = tmp_path_factory.mktemp("grounding")
    manifest = generate_phantoms(root / "data", n=40, size=64)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    torch.manual_seed(0)
    model = create_model("clip-tiny", image={"kwargs": {"output_stride": 8}}, tokenizer_texts=[r["text"] for r in rows])
    save_model(model, root / "model")
    return {"root": root, "manifest": manifest, "rows": rows, "model": root / "model"}
