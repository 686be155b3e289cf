"""Evaluation tests run torch on one thread (see the root conftest's ``one_torch_thread``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test here runs torch on one thread (the root conftest's ``one_torch_thread``)."""
