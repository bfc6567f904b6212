"""The Parquet manifest of a batch run: ``OUT/manifest/unit-<id>.parquet``, one row per face.

Images with no face get one row with ``face_index = -1`` and null face fields; images that could
not be processed get one row with ``face_index = -1`` and the error text. Every unit file has the
same schema (:data:`SCHEMA`), so ``pyarrow.dataset.dataset(OUT / "manifest")`` or
``pandas.read_parquet(OUT / "manifest")`` reads the whole run as one table.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefleet.types import Face, ImageResult

MANIFEST_DIR = "manifest"

_F32 = pa.float32()
SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("unit", pa.string()),
        ("face_index", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bbox", pa.list_(_F32, 4)),
        ("score", _F32),
        ("keypoints", pa.list_(_F32, 12)),
        ("pose_yaw", _F32),
        ("pose_pitch", _F32),
        ("pose_roll", _F32),
        ("pose_matrix", pa.list_(_F32, 16)),
        ("landmarks", pa.list_(_F32, 1404)),
        ("landmarks68", pa.list_(_F32, 136)),
        ("presence", _F32),
        ("error", pa.string()),
    ]
)

# (column, values per face) of the fixed-size float list columns
_LISTS = (("bbox", 4), ("keypoints", 12), ("pose_matrix", 16), ("landmarks", 1404), ("landmarks68", 136))


def unit_path(out_dir: str | os.PathLike[str], uid: str) -> Path:
    return Path(out_dir) / MANIFEST_DIR / f"unit-{uid}.parquet"


def results_table(results: Sequence[ImageResult], uid: str) -> pa.Table:
    """Manifest rows of one unit's results (one row per face, or one per faceless/failed image)."""
    src: list[str] = []
    widths: list[int] = []
    heights: list[int] = []
    face_index: list[int] = []
    errors: list[str | None] = []
    faces: list[Face | None] = []
    for r in results:
        if r.faces and r.error is None:
            for j, face in enumerate(r.faces):
                src.append(r.source)
                widths.append(r.width)
                heights.append(r.height)
                face_index.append(j)
                errors.append(None)
                faces.append(face)
        else:
            src.append(r.source)
            widths.append(r.width)
            heights.append(r.height)
            face_index.append(-1)
            errors.append(r.error)
            faces.append(None)
    n = len(src)
    has = np.array([f is not None for f in faces], dtype=bool)
    mask = pa.array(~has) if n else None

    def scalar(get: str) -> pa.Array:
        vals = np.zeros(n, np.float32)
        for i, f in enumerate(faces):
            if f is not None:
                vals[i] = float(_attr(f, get))  # type: ignore[arg-type]
        return pa.array(vals, type=_F32, mask=~has)

    cols: dict[str, pa.Array] = {
        "source": pa.array(src, pa.string()),
        "unit": pa.array([uid] * n, pa.string()),
        "face_index": pa.array(face_index, pa.int32()),
        "width": pa.array(widths, pa.int32()),
        "height": pa.array(heights, pa.int32()),
        "score": scalar("score"),
        "pose_yaw": scalar("pose.yaw"),
        "pose_pitch": scalar("pose.pitch"),
        "pose_roll": scalar("pose.roll"),
        "presence": scalar("presence"),
        "error": pa.array(errors, pa.string()),
    }
    for name, size in _LISTS:
        vals = np.zeros((n, size), np.float32)
        for i, f in enumerate(faces):
            if f is not None:
                vals[i] = np.asarray(_attr(f, name), dtype=np.float32).reshape(-1)[:size]
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1)), size, mask=mask)
    return pa.Table.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA)


def _attr(face: object, name: str) -> object:
    if name == "pose_matrix":
        return face.pose.matrix  # type: ignore[attr-defined]
    obj = face
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


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


# -- per-image output paths --------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,-]+")


def output_location(source: str, root: str | None) -> tuple[str, str]:
    """(relative directory, file stem) of a source's per-image files under ``OUT/files``.

    Local sources below ``root`` mirror the input tree; others (list files, URLs) get a
    sanitised path made of their components. The stem is the whole file name, extension included
    (``a.jpg`` -> ``a.jpg.json``), so ``a.jpg`` and ``a.png`` never overwrite each other.
    """
    rel: str | None = None
    if root is not None and "://" not in source:
        try:
            r = os.path.relpath(os.path.abspath(source), root)
        except ValueError:  # other drive (Windows)
            r = ""
        if r and not r.startswith(".."):
            rel = r
    if rel is None:
        s = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", lambda m: m.group(0)[:-3] + "/", source)
        rel = s
    parts = [p for p in re.split(r"[/\\]+", rel) if p not in ("", ".", "..")]
    parts = [_UNSAFE.sub("_", p).strip(".") or "_" for p in parts] or ["_"]
    return "/".join(parts[:-1]), parts[-1]
