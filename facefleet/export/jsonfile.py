"""Per-image JSON result files (the data contract of DESIGN.md)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from facefleet.io.atomic import atomic_write_text
from facefleet.types import ImageResult

__all__ = ["result_to_json", "write_json"]


def finite_json(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON (JavaScript's JSON.parse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def result_to_json(result: ImageResult, *, indent: int | None = None) -> str:
    """``result.to_dict()`` as strict JSON text (non-finite numbers become null), newline-terminated."""
    data = result.to_dict()
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        text = json.dumps(finite_json(data), indent=indent, allow_nan=False)
    return text + "\n"


def write_json(path: str | os.PathLike[str], result: ImageResult, *, indent: int | None = None) -> Path:
    """Write ``result`` as JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, result_to_json(result, indent=indent))
