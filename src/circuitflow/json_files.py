"""JSON inputs: reads that name the file when it is missing, truncated or not JSON."""

from __future__ import annotations

import json
from pathlib import Path

from circuitflow.errors import JsonFileError


def read_json(path: str | Path):
    """The parsed contents of a JSON file, or a JsonFileError saying which file to rebuild."""
    path = Path(path)
    if not path.is_file():
        raise JsonFileError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JsonFileError(
            f"{path}: not valid JSON ({e}); it is truncated or was not written by circuitflow: "
            "delete it and run the workflow again to rebuild it"
        ) from e
