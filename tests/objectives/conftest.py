"""Helpers for objective tests: random normalised features in the CLIPModel output format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def make_outputs(n: int = 4, dim: int = 8, scale: float = 10.0, bias: float | None = None, seed: int = 0,
                 grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, dim, generator=g, requires_grad=grad)
    txt = torch.randn(n, dim, generator=g, requires_grad=grad)
    return {
        "image_features": F.normalize(img, dim=-1),
        "text_features": F.normalize(txt, dim=-1),
        "logit_scale": torch.tensor(scale),
        "logit_bias": None if bias is None else torch.tensor(bias),
        "_raw": (img, txt),
    }


@pytest.fixture()
def outputs():
    return make_outputs()
