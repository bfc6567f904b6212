"""Parquet rows of video results: one row per face per frame, and the stitching of chunk-local track
ids into ids that hold across a whole video.

A chunk's file (:func:`chunk_table`) holds the rows of its frames and of its *lead-in*: the few frames
before its start that its worker tracked too (``[video] overlap``), flagged ``lead_in``, which exist only
so that :func:`stitch_tracks` can tell which of its tracks continue the previous chunk's (by their boxes
on the same frames; without a lead-in, by the boxes of its first frame against the previous chunk's last).
The video's table (:func:`video_table`) has the chunks' own frames only, each exactly once, with global
track ids. Frames without a face have no row (a video with no face gives an empty table of :data:`SCHEMA`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facefleet.export.table import SCHEMA as IMAGE_SCHEMA
from facefleet.export.table import results_table
from facefleet.video.boxes import box_iou, greedy_match
from facefleet.video.types import FrameResult

#: the per-frame columns that come first, then the photo manifest's face columns (less source, unit,
#: error: a video's rows name it in ``video``, and a failed chunk fails its video, not rows)
_FRAME_FIELDS = [
    pa.field("video", pa.string()),
    pa.field("frame", pa.int64()),
    pa.field("time", pa.float64()),
    pa.field("track_id", pa.int32()),
]
_FACE_FIELDS = [f for f in IMAGE_SCHEMA if f.name not in ("source", "unit", "error")]
SCHEMA = pa.schema([*_FRAME_FIELDS, *_FACE_FIELDS])
CHUNK_SCHEMA = pa.schema([*SCHEMA, pa.field("lead_in", pa.bool_())])

#: a lead-in track continues a previous chunk's track when their boxes overlap this much (mean IoU
#: over the frames both chunks tracked)
STITCH_IOU = 0.3


def chunk_table(video: str, frames: Sequence[FrameResult], start: int, n_vertices: int) -> pa.Table:
    """Rows (:data:`CHUNK_SCHEMA`) of one chunk's frames: ``frames`` in order, those with ``index <
    start`` are its lead-in. ``n_vertices``: landmarks per face (the family's topology)."""
    with_faces = [f for f in frames if f.result.faces and f.result.error is None]
    if not with_faces:
        return CHUNK_SCHEMA.empty_table()
    faces = results_table([f.result for f in with_faces], "", n_vertices)
    counts = [len(f.result.faces) for f in with_faces]
    frame = np.repeat([f.index for f in with_faces], counts).astype(np.int64)
    cols = {
        "video": pa.array([video] * len(frame), pa.string()),
        "frame": pa.array(frame),
        "time": pa.array(np.repeat([f.time for f in with_faces], counts).astype(np.float64)),
        "track_id": pa.array(np.concatenate([_ids(f) for f in with_faces]).astype(np.int32), pa.int32()),
        "lead_in": pa.array(frame < start),
    }
    return pa.Table.from_arrays(
        [cols[f.name] if f.name in cols else faces.column(f.name) for f in CHUNK_SCHEMA], schema=CHUNK_SCHEMA
    )


def _ids(f: FrameResult) -> np.ndarray:
    return np.asarray(f.track_ids if f.track_ids else [-1] * len(f.result.faces), np.int64)


def stitch_tracks(chunks: Sequence[tuple[int, pa.Table]]) -> list[dict[int, int]]:
    """Global track ids of the chunks of one video: ``chunks`` are ``(start, table)`` in frame order
    (tables of :func:`chunk_table`); returns, per chunk, its local id -> global id.

    A track of chunk k whose lead-in boxes overlap a track of chunk k-1 on the same frames (mean IoU
    above :data:`STITCH_IOU`; pairs taken best first, each track at most once) keeps that track's
    global id; every other track gets a new one. Ids are numbered from 0 in order of first appearance."""
    maps: list[dict[int, int]] = []
    next_id = 0
    prev: pa.Table | None = None
    prev_map: dict[int, int] = {}
    for _, table in chunks:
        mapping: dict[int, int] = {}
        if prev is not None and len(table):
            for local, previous in _matches(prev, table):
                mapping[local] = prev_map[previous]
        own = table.filter(pc.invert(table.column("lead_in")))
        order = np.argsort(own.column("frame").to_numpy(), kind="stable")
        for local in own.column("track_id").to_numpy()[order].tolist():
            if local >= 0 and local not in mapping:
                mapping[local] = next_id
                next_id += 1
        maps.append(mapping)
        prev, prev_map = table, mapping
    return maps


def _matches(prev: pa.Table, cur: pa.Table) -> list[tuple[int, int]]:
    """(current local id, previous local id) pairs of the tracks that continue across the boundary: boxes
    of the same frames where the current chunk has a lead-in, else the boxes of its first frame against
    those of the previous chunk's last frame (faces move little from one frame to the next)."""
    lead = cur.filter(cur.column("lead_in"))
    if len(lead):
        frames = sorted(set(lead.column("frame").to_numpy().tolist()))
        before = prev.filter(pc.is_in(prev.column("frame"), pa.array(frames, pa.int64())))
        a, b = _rows(lead), _rows(before)
    else:
        if not len(cur) or not len(prev):
            return []
        first = pc.min(cur.column("frame")).as_py()
        last = pc.max(prev.column("frame")).as_py()
        if first != last + 1:  # frames without faces between: nothing continues
            return []
        a = {0: _rows(cur.filter(pc.equal(cur.column("frame"), first)))[first]}
        b = {0: _rows(prev.filter(pc.equal(prev.column("frame"), last)))[last]}
    # mean IoU over the frames both saw, of each (current track, previous track) pair
    iou_sum: dict[tuple[int, int], float] = {}
    seen: dict[int, int] = {}
    for frame, rows in a.items():
        for tid, _ in rows:
            seen[tid] = seen.get(tid, 0) + 1
        before = b.get(frame, [])
        if not before:
            continue
        iou = box_iou(np.stack([box for _, box in rows]), np.stack([box for _, box in before]))
        for (tid, _), row in zip(rows, iou):
            for (ptid, _), v in zip(before, row):
                iou_sum[(tid, ptid)] = iou_sum.get((tid, ptid), 0.0) + float(v)
    tids = sorted({t for t, _ in iou_sum if t >= 0})  # -1: a face without a track id
    ptids = sorted({p for _, p in iou_sum if p >= 0})
    mean = np.zeros((len(tids), len(ptids)))
    for (t, p), s in iou_sum.items():
        if t >= 0 and p >= 0:
            mean[tids.index(t), ptids.index(p)] = s / seen[t]
    return [(tids[i], ptids[j]) for i, j in greedy_match(mean, STITCH_IOU)]


def _rows(t: pa.Table) -> dict[int, list[tuple[int, np.ndarray]]]:
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    boxes = np.asarray(t.column("bbox").to_pylist(), np.float64).reshape(-1, 4)
    for frame, tid, box in zip(t.column("frame").to_numpy(), t.column("track_id").to_numpy(), boxes):
        out.setdefault(int(frame), []).append((int(tid), box))
    return out


def video_table(chunks: Sequence[tuple[int, pa.Table]]) -> pa.Table:
    """The video's rows (:data:`SCHEMA`): each chunk's own frames (lead-ins dropped) with global track
    ids, in frame order."""
    maps = stitch_tracks(chunks)
    parts = []
    for (_, table), mapping in zip(chunks, maps):
        own = table.filter(pc.invert(table.column("lead_in")))
        local = own.column("track_id").to_numpy()
        glob = np.array([mapping.get(int(t), -1) for t in local], np.int32)
        own = own.set_column(own.schema.get_field_index("track_id"), "track_id", pa.array(glob, pa.int32()))
        parts.append(own.drop_columns(["lead_in"]))
    if not parts:
        return SCHEMA.empty_table()
    out = pa.concat_tables(parts).cast(SCHEMA)
    return out.sort_by([("frame", "ascending"), ("face_index", "ascending")])
