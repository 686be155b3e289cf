"""Evaluation tests run torch on one thread.

Why: the CI box has 2 cores shared by several jobs; with oversubscribed cores torch's OpenMP
threads spin against each other and a tiny conv net's backward pass took 9 s on 2 threads vs
0.2 s on 1. The previous thread count is restored after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
