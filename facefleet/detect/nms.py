"""MediaPipe-style weighted non-maximum suppression ("blending"), batched over images.

For each image, candidates are visited by decreasing score; each one not yet absorbed becomes a seed
and absorbs every remaining candidate (itself included) whose IoU with it exceeds the threshold. The
output detection of a seed is the score-weighted average of the boxes and keypoints it absorbed; its
score stays the seed's score (as in MediaPipe's ``NonMaxSuppressionCalculator``, algorithm WEIGHTED).

The IoU matrices are computed on the device for all images at once; the greedy pass, which is
inherently sequential, runs on the host on one small boolean array (two waits for the device per
batch: the sorted image indices, then that array); the weighted averages are computed back on the
device as differences of one float64 running sum over the absorbed candidates ordered by seed: the same
sums in the same order on every call. (``index_add_``'s atomic float additions on a GPU come in
whatever order its threads do: last-bit differences in the boxes, which the mesh stage's float16 crops
and outputs carry on into landmarks that differ between two runs of the same batch.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from facefleet._device import host_to_device

__all__ = ["box_iou", "weighted_nms"]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``(..., N, 4)`` and ``(..., M, 4)`` (x0, y0, x1, y1) -> ``(..., N, M)``."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union.clamp(min=1e-12)


def _greedy_owners(overlap: np.ndarray, valid: np.ndarray, max_per_group: int) -> np.ndarray:
    """overlap ``(G, K, K)`` bool, valid ``(G, K)`` bool (candidates sorted by score) -> owner ``(G, K)``:
    index of the seed that absorbed each candidate, -1 if none. Vectorised over groups."""
    g, k = valid.shape
    owner = np.full((g, k), -1, dtype=np.int64)
    free = valid.copy()
    seeds = np.zeros(g, dtype=np.int64)
    for i in range(k):
        is_seed = free[:, i] & (seeds < max_per_group)
        if not is_seed.any():
            if not free[:, i:].any():
                break
            continue
        claim = overlap[:, i, :] & free & is_seed[:, None]
        claim[is_seed, i] = True
        owner[claim] = i
        free &= ~claim
        seeds += is_seed
    return owner


def weighted_nms(
    boxes: Tensor,
    keypoints: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float = 0.3,
    max_per_group: int = 100,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted NMS of candidates from many images at once.

    Args:
        boxes: ``(M, 4)`` x0, y0, x1, y1; keypoints: ``(M, P, 2)``; scores: ``(M,)``;
        groups: ``(M,)`` long, the image each candidate belongs to (suppression never crosses groups).
        iou_threshold: candidates whose IoU with a seed is strictly above this merge into it.
        max_per_group: at most this many detections per group (the highest-scoring seeds).

    Returns:
        boxes ``(N, 4)``, keypoints ``(N, P, 2)``, scores ``(N,)``, groups ``(N,)``, sorted by group,
        then by decreasing score, on the input device.
    """
    dev = boxes.device
    m = int(scores.shape[0])
    p = int(keypoints.shape[1])
    if m == 0:
        return boxes[:0].float(), keypoints[:0].float(), scores[:0].float(), groups[:0].long()
    boxes, keypoints, scores, groups = boxes.float(), keypoints.float(), scores.float(), groups.long()
    # sort by group, then by decreasing score (two stable sorts)
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    boxes, keypoints, scores, groups = boxes[order], keypoints[order], scores[order], groups[order]
    # the bookkeeping (groups, padded slots, who absorbed whom) runs on the host from two copies, the
    # sorted groups and the overlap matrix; the indices go back through pinned memory, so the device's
    # stream never waits for the host in between (boolean-mask indexing would sync once per tensor)
    groups_h = groups.cpu().numpy()
    starts_h = np.flatnonzero(np.r_[True, groups_h[1:] != groups_h[:-1]])
    counts_h = np.diff(np.r_[starts_h, m])
    g, k = len(starts_h), int(counts_h.max())
    slot_h = np.repeat(np.arange(g), counts_h)  # padded row of each candidate
    col_h = np.arange(m) - starts_h[slot_h]
    flat_h = slot_h * k + col_h
    valid_flat = np.zeros(g * k, dtype=bool)
    valid_flat[flat_h] = True
    valid_h = valid_flat.reshape(g, k)
    flat = host_to_device(flat_h, dev)
    pb = torch.zeros(g * k, 4, device=dev).index_copy_(0, flat, boxes).view(g, k, 4)
    overlap = box_iou(pb, pb) > iou_threshold
    owner_h = _greedy_owners(
        overlap.cpu().numpy() & valid_h[:, :, None] & valid_h[:, None, :], valid_h, int(max_per_group)
    ).reshape(-1)[flat_h]  # (M,) seed column, -1 = dropped
    # the absorbed candidates by seed (each seed's group contiguous, seeds in candidate order), and where
    # each seed's run ends: its weighted sums are differences of one running sum at the run ends
    kept_h = np.flatnonzero(owner_h >= 0)
    if kept_h.size == 0:  # max_per_group 0
        return boxes[:0], keypoints[:0], scores[:0], groups[:0]
    target_h = slot_h[kept_h] * k + owner_h[kept_h]
    order_h = np.argsort(target_h, kind="stable")
    by_seed = kept_h[order_h]
    ends_h = np.flatnonzero(np.r_[np.diff(target_h[order_h]) != 0, True]) + 1
    by, ends, seeds = (host_to_device(a, dev) for a in (by_seed, ends_h, np.flatnonzero(owner_h == col_h)))
    w = scores[by].double()[:, None]
    vals = torch.cat([boxes[by], keypoints[by].reshape(-1, 2 * p)], 1).double() * w
    run = torch.cat([vals.new_zeros(1, 2 * p + 5), torch.cat([vals, w], 1).cumsum(0)])[ends]
    sums = torch.diff(run, dim=0, prepend=run.new_zeros(1, 2 * p + 5))
    merged = (sums[:, :-1] / sums[:, -1:].clamp(min=1e-12)).float()
    return (
        merged[:, :4],
        merged[:, 4:].reshape(-1, p, 2),
        scores[seeds],
        groups[seeds],
    )
