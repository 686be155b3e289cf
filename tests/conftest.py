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


def assert_finetunes_through_image_model(encoder_factory, n: int = 6) -> None:
    """Fine-tuning any Encoder goes through ``image_model()``: same features, one epoch trains.

    Why a shared helper: the contract (``image_model()(x) == encode_image(x, normalize=False)`` on
    preprocessed inputs, and :func:`medvl.evaluate.finetune.train_one` running on it) must hold for
    every encoder schema (medvl checkpoint, ``timm:``, ``openclip:``, ``hf:``), each tested where its
    tiny model is built.
    """
    import copy

    import numpy as np
    import torch

    from medvl.evaluate.features import preprocessing_of
    from medvl.evaluate.finetune import FinetuneConfig, SplitTensors, image_backbone, train_one

    enc = encoder_factory()
    pre = preprocessing_of(enc)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, pre["channels"], pre["image_size"], pre["image_size"], generator=gen)
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    x = (x - mean) / std  # what load_split hands to the backbone
    module = copy.deepcopy(image_backbone(enc)).eval()
    with torch.no_grad():
        direct = module(enc._adapt_channels(x))
    torch.testing.assert_close(direct.float(), enc.encode_image(x, normalize=False), atol=1e-5, rtol=1e-5)

    labels = np.array([[1.0], [0.0]] * (n // 2), dtype=np.float32)
    split = SplitTensors(x=enc._adapt_channels(x), labels=labels, ids=np.array([f"s{i}" for i in range(n)]),
                         rows=np.arange(n), patient_ids=np.array([f"p{i}" for i in range(n)]))
    cfg = FinetuneConfig(epochs=1, batch_size=3, patience=None)
    run = train_one(encoder_factory, split, split, split, "binary", ["finding"], cfg, seed=0)
    assert run.scores.shape == (n, 1) and np.isfinite(run.scores).all()
    assert run.epochs_run == 1 and run.history[0]["train_loss"] > 0


@pytest.fixture()
def finetune_check():
    """:func:`assert_finetunes_through_image_model`, as a fixture (test modules cannot import conftest)."""
    return assert_finetunes_through_image_model


@pytest.fixture()
def one_torch_thread():
    """Run a test with torch on one thread, restoring the previous count afterwards.

    Why: the CI box has 2 cores shared by several jobs; with oversubscribed cores torch's OpenMP
    threads spin against each other and a tiny conv net's backward pass took 9 s on 2 threads vs
    0.2 s on 1. The evaluation and trust test folders use it for every test (their conftest).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
