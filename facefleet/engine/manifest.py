"""The Parquet manifest of a batch run: ``OUT/manifest/unit-<id>.parquet``, one row per face.

Images with no face get one row with ``face_index = -1`` and null face fields; images that could
not be processed get one row with ``face_index = -1`` and the error text. Every unit file has the
same schema (:data:`SCHEMA`), so ``pyarrow.dataset.dataset(OUT / "manifest")`` or
``pandas.read_parquet(OUT / "manifest")`` reads the whole run as one table.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from facefleet.export.sink import output_location as output_location  # moved; named there
from facefleet.export.table import SCHEMA as SCHEMA  # the manifest's columns (shared with video rows)
from facefleet.export.table import results_table as results_table
from facefleet.types import ImageResult

MANIFEST_DIR = "manifest"


def unit_path(out_dir: str | os.PathLike[str], uid: str) -> Path:
    return Path(out_dir) / MANIFEST_DIR / f"unit-{uid}.parquet"


def write_unit(out_dir: str | os.PathLike[str], uid: str, results: Sequence[ImageResult]) -> Path:
    """Write one unit's manifest file atomically (a rerun of the unit replaces it whole)."""
    from facefleet.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    pq.write_table(results_table(results, uid), buf, compression="zstd")
    return atomic_write_bytes(unit_path(out_dir, uid), buf.getbuffer())


def read_manifest(out_dir: str | os.PathLike[str]) -> pa.Table:
    """The whole manifest of a run as one table (empty table with :data:`SCHEMA` when none)."""
    import pyarrow.dataset as ds

    d = Path(out_dir) / MANIFEST_DIR
    files = sorted(str(p) for p in d.glob("unit-*.parquet")) if d.is_dir() else []
    if not files:
        return SCHEMA.empty_table()
    return ds.dataset(files, schema=SCHEMA, format="parquet").to_table()
