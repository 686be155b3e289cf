"""JSON Lines reading with one-line errors: manifests, prediction files, answer files.

Why one place: four readers (manifest rows, report predictions, MediConfusion answer files, report
labelling) each parsed JSONL by hand with the same checks; a file a user hands any of them should
fail the same way, naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medvl.errors import MedvlError


def json_lines(path: str | Path, *, error: type[MedvlError] = MedvlError,
               encoding_errors: str = "strict") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``path``.

    ``encoding_errors="surrogateescape"`` keeps invalid UTF-8 bytes (as lone surrogates) so a caller
    can name the bad byte per row instead of refusing the whole file. Raises ``error`` for undecodable
    text, invalid JSON or a line that is not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}, line {i}: invalid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise error(f"{path}, line {i}: each line must be a JSON object")
        yield i, obj
