"""Tiny segmentation datasets shared by the segment tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def seg_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 chest phantoms at 32 px with finding masks (multilabel) and anatomy label maps."""
    from medvl.data.synthetic import generate_phantoms

    return generate_phantoms(tmp_path_factory.mktemp("segph") / "data", n=40, size=32, anatomy=True)


def tiny_overrides(manifest: Path, steps: int = 4) -> list[str]:
    return [f"data.manifest={manifest}", "data.image_size=32", f"optim.max_steps={steps}", "optim.batch_size=4",
            "model.width=16", "log_every=1", "checkpoint_every=2"]
