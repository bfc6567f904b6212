"""A video's outputs from its finished chunks: the Parquet rows with track ids stitched across chunks, a
JSON line per frame, and the drawn MP4s (segments joined by stream copy, the source's audio copied).

Every file is written atomically, so a crash while finishing leaves the previous file (or none) and
finishing again gives the same bytes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facefleet.io.atomic import atomic_write_bytes
from facefleet.sources.items import FrameRange
from facefleet.video.chunks import DRAWN, chunk_files
from facefleet.video.table import video_table

#: file suffix of each output format (after the video's own file name: ``clip.mp4.parquet``)
SUFFIXES = {
    "parquet": ".parquet",
    "json": ".jsonl",
    "overlay": ".overlay.mp4",
    "anonymize": ".anonymized.mp4",
}


@dataclass(frozen=True)
class VideoOutputs:
    """The files written for one video: format -> path, and its rows' counts."""

    source: str
    files: dict[str, str]
    frames: int
    faces: int
    tracks: int


def output_paths(base: Path, formats: Sequence[str]) -> dict[str, Path]:
    """``base`` (OUT's mirror of the video's path, e.g. ``OUT/clips/a.mp4``) -> each format's file."""
    return {f: base.with_name(base.name + SUFFIXES[f]) for f in formats}


def finish_video(
    source: str, chunks: Sequence[FrameRange], out_dir: str, base: Path, formats: Sequence[str], frames: int
) -> VideoOutputs:
    """Join the chunk files of ``source`` (every chunk done, in frame order) into its outputs under
    ``base`` (see :func:`output_paths`); ``frames``: the video's frame count."""
    order = sorted(chunks, key=lambda c: c.start)
    tables = [(c.start, pq.read_table(chunk_files(out_dir, c)["parquet"])) for c in order]
    rows = video_table(tables)
    paths = output_paths(base, formats)
    if "parquet" in paths:
        buf = io.BytesIO()
        pq.write_table(rows, buf, compression="zstd")
        atomic_write_bytes(paths["parquet"], buf.getbuffer())
    if "json" in paths:
        atomic_write_bytes(paths["json"], frame_lines(rows, frames).encode())
    drawn = [f for f in DRAWN if f in paths]
    if drawn:
        from facefleet.video.mux import mux_video

        for fmt in drawn:
            segments = [chunk_files(out_dir, c)[fmt] for c in order]
            mux_video(segments, source, paths[fmt])
    ids = rows.column("track_id").to_numpy() if len(rows) else []
    return VideoOutputs(
        source=source,
        files={f: os.fspath(p) for f, p in paths.items()},
        frames=frames,
        faces=len(rows),
        tracks=len(set(int(i) for i in ids if i >= 0)),
    )


def frame_lines(rows: pa.Table, frames: int) -> str:
    """One JSON object per frame of the video, in order (frames without a face included): ``{"frame",
    "time", "faces": [{"track_id", "bbox", "score", "landmarks", "landmarks68", "pose", ...}]}``, the
    faces as the photo JSON has them."""
    by_frame: dict[int, list[dict[str, object]]] = {}
    times: dict[int, float] = {}
    for r in rows.to_pylist():
        f = int(r["frame"])
        times[f] = float(r["time"])
        by_frame.setdefault(f, []).append(_face(r))
    out = []
    for f in range(frames):
        line = {"frame": f, "faces": by_frame.get(f, [])}
        if f in times:
            line["time"] = round(times[f], 6)
        out.append(json.dumps(line, separators=(",", ":")))
    return "\n".join(out) + ("\n" if out else "")


def _face(r: dict[str, Any]) -> dict[str, object]:
    def pts(key: str, k: int, nd: int) -> list[list[float]]:
        v = r[key] or []
        return [[round(float(x), nd) for x in v[i : i + k]] for i in range(0, len(v), k)]

    m = r["pose_matrix"] or []
    face: dict[str, object] = {
        "track_id": r["track_id"],
        "bbox": [round(float(x), 2) for x in r["bbox"] or []],
        "score": round(float(r["score"]), 5),
        "keypoints": pts("keypoints", 2, 2),
        "landmarks": pts("landmarks", 3, 3),
        "landmarks68": pts("landmarks68", 2, 3),
        "pose": {
            "yaw": round(float(r["pose_yaw"]), 3),
            "pitch": round(float(r["pose_pitch"]), 3),
            "roll": round(float(r["pose_roll"]), 3),
            "matrix": [[float(x) for x in m[i : i + 4]] for i in range(0, 16, 4)],
        },
        "presence": round(float(r["presence"]), 5),
    }
    if r.get("detector") not in (None, "blazeface"):
        face["detector"] = r["detector"]
    if r.get("small"):
        face["small"] = True
    return face
