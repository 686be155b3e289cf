"""Shared fixtures for the model tests: a few reports and a tiny trained-tokenizer model."""

from __future__ import annotations

import pytest
import torch

REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion. No pneumothorax.",
    "Cardiomegaly with mild pulmonary edema.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "Heart size is normal. Lungs are clear.",
    "Large right pneumothorax with mediastinal shift.",
]


@pytest.fixture(scope="session")
def reports() -> list[str]:
    return list(REPORTS)


@pytest.fixture()
def tiny_model():
    from medvl.models import create_model

    torch.manual_seed(0)
    return create_model("clip-tiny", tokenizer_texts=REPORTS).eval()
