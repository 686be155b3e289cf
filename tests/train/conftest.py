"""Trainer-test fixtures; makes ``trainutil`` (helpers shared with subprocess scripts) importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from trainutil import make_manifest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tinydata"), n=64)
