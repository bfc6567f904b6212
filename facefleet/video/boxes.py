"""Boxes of faces matched from one set to another (numpy, no torch): the tracker's ids from frame to
frame and the stitching of track ids across chunks use the same IoU and the same greedy assignment."""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "greedy_match"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``(n, m)`` of boxes ``a`` ``(n, 4)`` and ``b`` ``(m, 4)`` (x0, y0, x1, y1)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def greedy_match(score: np.ndarray, least: float) -> list[tuple[int, int]]:
    """Pairs ``(row, column)`` of ``score`` ``(n, m)``, highest first, each row and column at most once,
    scores >= ``least`` only (greedy assignment: for the few faces of a frame it matches Hungarian's
    result unless two faces overlap the same track about equally)."""
    pairs: list[tuple[int, int]] = []
    if score.size == 0:
        return pairs
    rows: set[int] = set()
    cols: set[int] = set()
    for flat in np.argsort(-score, axis=None, kind="stable"):
        r, c = divmod(int(flat), score.shape[1])
        if score[r, c] < least:
            break
        if r not in rows and c not in cols:
            pairs.append((r, c))
            rows.add(r)
            cols.add(c)
    return pairs
