"""One exception family for everything a user can get wrong.

The CLI catches :class:`MedvlError` and prints its message without a traceback, so every
message must say *what* failed and *where* (file, row, step, key).
"""

from __future__ import annotations

from pathlib import Path


class MedvlError(Exception):
    """Base class of all errors medvl raises on purpose (bad input, bad config, diverged run)."""


class ImageReadError(MedvlError):
    """A medical image could not be read; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ManifestError(MedvlError):
    """A manifest or dataset card is malformed (missing column, bad row...)."""


class ConfigError(MedvlError):
    """A configuration key or value is invalid; the message lists the valid choices."""


class CheckpointError(MedvlError):
    """A checkpoint is missing, corrupt or incompatible with the requested config."""


class TrainingDivergedError(MedvlError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""
