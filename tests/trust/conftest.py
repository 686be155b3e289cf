"""Trust tests: torch on one thread (the root conftest's ``one_torch_thread``) and a toy two-site set."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test here runs torch on one thread (the root conftest's ``one_torch_thread``)."""


CLASSES = ["benign", "malignant"]


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """96 28-px images at two sites ('A' bright-background, 'B' dark) with a sex column and a tiny CLIP.

    'malignant' images carry a bright blob whose contrast is lower at site B, so site shift and
    corruptions have something to measure; patients have 2 images each.
    """
    import numpy as np
    from PIL import Image

    from medvl.data.card import ClassInfo, DatasetCard
    from medvl.data.manifest import write_manifest
    from medvl.models import create_model, save_model

    root = tmp_path_factory.mktemp("trust_toy")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(96):
        y = (i // 2) % 2
        site = "A" if (i // 4) % 2 == 0 else "B"
        base = 40 if site == "A" else 20
        img = rng.integers(base, base + 60, (28, 28)).astype(np.uint8)
        if y:
            img[8:20, 8:20] = 230 if site == "A" else 150
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        split = "train" if i < 48 else ("val" if i < 64 else "test")
        rows.append({"image": f"images/{i}.png", "text": f"{'a bright mass' if y else 'normal tissue'} case {i}",
                     "labels": CLASSES[y], "split": split, "patient_id": f"p{i // 2}", "site": site,
                     "sex": "F" if (i // 2) % 3 else "M", "scanner": "S1", "modality": "ultrasound"})
    write_manifest(rows, root / "manifest.csv")
    DatasetCard(name="toy", task="binary", modality="ultrasound",
                templates=["an ultrasound showing {label}", "{label}"],
                classes=[ClassInfo("benign", synonyms=["normal tissue", "no mass"]),
                         ClassInfo("malignant", synonyms=["a bright mass", "cancer"])]).save(root / "card.yaml")
    torch.manual_seed(0)
    model = create_model("clip-tiny", tokenizer_texts=[r["text"] for r in rows if r["split"] == "train"],
                         **{"image.image_size": 28})
    save_model(model, root / "model")
    return {"root": root, "manifest": root / "manifest.csv", "model": root / "model", "cache": root / "cache",
            "rows": rows}
