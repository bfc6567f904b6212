"""Per-face rows of results as an Arrow table: the columns every Parquet file of facefleet shares (the
photo manifest of a batch run, the rows of a video), one row per face, or one per faceless or failed
image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from facefleet.types import Face, ImageResult

_F32 = pa.float32()
SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("unit", pa.string()),
        ("face_index", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bbox", pa.list_(_F32)),  # 4 values
        ("score", _F32),
        ("keypoints", pa.list_(_F32)),  # 12 values (BlazeFace's 6 points), 10 (CenterFace's 5)
        ("pose_yaw", _F32),
        ("pose_pitch", _F32),
        ("pose_roll", _F32),
        ("pose_matrix", pa.list_(_F32)),  # 16 values
        ("landmarks", pa.list_(_F32)),  # V * 3 values, V from the model family's topology
        ("landmarks68", pa.list_(_F32)),  # 136 values
        ("presence", _F32),
        ("error", pa.string()),
        ("gaze_yaw", _F32),  # families with iris points only (null otherwise)
        ("gaze_pitch", _F32),
        ("detector", pa.string()),  # the face's detector family: blazeface, centerface (null: no face)
        ("small", pa.bool_()),  # box under [model] small_face px: mesh not reliable (null: no face)
    ]
)

# (column, values per face) of the float list columns. Variable-size lists in the schema, not
# fixed-size ones: Arrow's Parquet reader could not read null fixed-size lists (the rows of images
# without a face) before mid-2026 (apache/arrow#35692; the pyarrow of the lent H200 hosts still
# fails on them).
_LISTS = (("bbox", 4), ("pose_matrix", 16), ("landmarks68", 136))


def results_table(results: Sequence[ImageResult], uid: str, n_vertices: int | None = None) -> pa.Table:
    """Manifest rows of one unit's results (one row per face, or one per faceless/failed image).

    ``n_vertices``: landmarks per face (the model family's ``topology.n_vertices``); default: those of
    the first face. Every face must have that many (``ValueError`` otherwise)."""
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
    present = [f for f in faces if f is not None]
    if n_vertices is None:
        n_vertices = len(present[0].landmarks) if present else 0
    bad = [len(f.landmarks) for f in present if len(f.landmarks) != n_vertices]
    if bad:
        raise ValueError(f"results_table: faces with {bad[0]} landmarks among faces with {n_vertices}")

    def column(values: list[object], size: int) -> np.ndarray:
        """``(n, size)`` float32: the faces' values in their rows (one NumPy stack, no loop per
        face), zeros in the rows without a face (masked as null)."""
        out = np.zeros((n, size), np.float32)
        if present:
            out[has] = np.asarray(values, dtype=np.float32).reshape(len(values), size)
        return out

    def scalar(values: list[object]) -> pa.Array:
        return pa.array(column(values, 1).reshape(-1), type=_F32, mask=~has)

    gazed = np.array([f is not None and f.gaze is not None for f in faces], dtype=bool)

    def gaze_column(key: str) -> pa.Array:
        out = np.zeros(n, np.float32)
        out[gazed] = [getattr(f.gaze, key) for f in faces if f is not None and f.gaze is not None]
        return pa.array(out, type=_F32, mask=~gazed)

    cols: dict[str, pa.Array] = {
        "source": pa.array(src, pa.string()),
        "unit": pa.array([uid] * n, pa.string()),
        "face_index": pa.array(face_index, pa.int32()),
        "width": pa.array(widths, pa.int32()),
        "height": pa.array(heights, pa.int32()),
        "score": scalar([f.score for f in present]),
        "pose_yaw": scalar([f.pose.yaw for f in present]),
        "pose_pitch": scalar([f.pose.pitch for f in present]),
        "pose_roll": scalar([f.pose.roll for f in present]),
        "presence": scalar([f.presence for f in present]),
        "error": pa.array(errors, pa.string()),
        "gaze_yaw": gaze_column("yaw"),
        "gaze_pitch": gaze_column("pitch"),
        "detector": pa.array([None if f is None else f.detector for f in faces], pa.string()),
        "small": pa.array([None if f is None else bool(f.small) for f in faces], pa.bool_()),
    }
    lists: dict[str, list[object]] = {
        "bbox": [f.bbox for f in present],
        "keypoints": [f.keypoints for f in present],
        "pose_matrix": [f.pose.matrix for f in present],
        "landmarks": [f.landmarks for f in present],
        "landmarks68": [f.landmarks68 for f in present],
    }
    for name, size in (*_LISTS, ("landmarks", n_vertices * 3)):
        # offsets of the rows (a face's values, or none: the row is null), values of the faces only
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(np.where(has, size, 0), out=offsets[1:])
        vals = np.asarray(lists[name], dtype=np.float32).reshape(len(present) * size)  # faces' rows, in order
        cols[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vals), mask=mask)
    # keypoints: 12 values per BlazeFace face, 10 per CenterFace one
    sizes = np.zeros(n, np.int32)
    sizes[has] = [np.asarray(f.keypoints).size for f in present]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    kp = [np.asarray(f.keypoints, np.float32).reshape(-1) for f in present]
    vals = np.concatenate(kp) if kp else np.zeros(0, np.float32)
    cols["keypoints"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vals), mask=mask)
    return pa.Table.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA)
