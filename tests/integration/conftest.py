"""Integration tests: whole runs end to end (a bench suite, a SIGKILL + resume, a 2-process DDP run).

They stay in the default tier (``make test``), but live here so the layout says what they are: each
drives the CLI or the library across several layers, spawns processes or trains models, and takes
seconds to a minute, where the unit tests beside the modules take milliseconds.

The training ones share ``tests/train/trainutil.py`` (also imported by their subprocess scripts)
and its tiny manifest; both are made available here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TRAIN_TESTS = Path(__file__).resolve().parents[1] / "train"
if str(TRAIN_TESTS) not in sys.path:
    sys.path.insert(0, str(TRAIN_TESTS))

from trainutil import make_manifest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tinydata"), n=64)
