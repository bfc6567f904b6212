"""Merging detections: of BlazeFace's two models (:func:`keep_better`), of tiles inside larger faces
(:func:`inside_larger`), and of two detector families, BlazeFace and CenterFace (:func:`merge_families`,
:class:`CombinedDetector`: the ``combined`` detector mode)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from facefleet.detect.detections import Detections, ImageBatch, finish, image_count
from facefleet.detect.nms import box_iou

__all__ = ["CombinedDetector", "inside_larger", "keep_better", "merge_families"]


def _io_min(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over the smaller area of boxes ``(N, 4)``, ``(M, 4)`` -> ``(N, M)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    wh = (
        torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])
    ).clamp(min=0)
    return wh[..., 0] * wh[..., 1] / torch.minimum(area_a[:, None], area_b[None, :]).clamp(min=1e-12)


def inside_larger(
    b: Tensor,
    bi: Tensor,
    w: Tensor,
    wi: Tensor,
    w_mask: Tensor | None = None,
    ratio: float = 2.0,
    grow: float = 1.5,
) -> Tensor:
    """``(N,)`` True where box ``b`` has its centre inside a same-image box of ``w`` (grown ``grow`` times
    about its centre, i.e. the head region) at least ``ratio`` times larger: a tile's view of part of a
    big head (an ear, an eye) is not a face of its own. ``w_mask`` ``(M,)``: the boxes of ``w`` that
    count (default all)."""
    if b.shape[0] == 0 or w.shape[0] == 0:
        return torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    c = (b[:, :2] + b[:, 2:]) / 2
    wc, wh = (w[:, :2] + w[:, 2:]) / 2, (w[:, 2:] - w[:, :2]) * (grow / 2)
    inside = ((c[:, None] >= (wc - wh)[None]) & (c[:, None] <= (wc + wh)[None])).all(-1)
    side_b = (b[:, 2:] - b[:, :2]).amax(1)
    side_w = (w[:, 2:] - w[:, :2]).amax(1)
    hit = inside & (side_w[None] >= ratio * side_b[:, None]) & (bi[:, None] == wi[None])
    return (hit if w_mask is None else hit & w_mask[None]).any(1)


def keep_better(det: Detections, from_a: Tensor, thresh: float = 0.5) -> Tensor:
    """Which detections ``(N,)`` of two models' (``from_a``: the first model's) to keep: of two
    same-image detections of different models overlapping by more than ``thresh`` (intersection over
    the smaller box) only the higher-scoring one stays (ties: the first model's). A mask, so that the
    caller selects once."""
    if len(det) == 0:
        return from_a
    img = det.image_index
    hit = (_io_min(det.boxes, det.boxes) > thresh) & (img[:, None] == img[None])
    hit &= from_a[:, None] & ~from_a[None]  # hit[i, j]: i of the first model, j of the second
    a_wins = det.scores[:, None] >= det.scores[None]
    drop_a = (hit & ~a_wins).any(1)
    drop_b = (hit & a_wins).any(0)
    return ~(drop_a | drop_b)


def merge_families(
    blaze: Detections,
    center: Detections,
    num_images: int,
    max_faces: int,
    match_iou: float = 0.3,
    alternates: bool = False,
) -> Detections:
    """One set of faces from BlazeFace's ``blaze`` and CenterFace's ``center`` (boxes in the same
    convention, CenterFace's scores already calibrated to BlazeFace's scale).

    A CenterFace face whose box overlaps a same-image BlazeFace box by IoU > ``match_iou`` is that face:
    BlazeFace's box and six keypoints stay (the mesh ROI was made for them), with the higher of the two
    scores. The other CenterFace faces (crowds, small faces BlazeFace missed) join with their five points.
    Vectorised over the batch: CenterFace's faces are laid out per image, padded to the most any image has
    (one host sync for that count), and every BlazeFace face is compared with its image's row only.
    ``alternates``: keep the matched CenterFace faces too, as second views of BlazeFace's faces, for a
    caller that meshes both and keeps the better one (:class:`~facefleet.pipeline.Reconstructor` in the
    combined mode: the mesh rejects some of BlazeFace's crops of turned faces that CenterFace's keep).
    Returns the merged faces sorted by image then decreasing score, at most ``max_faces`` per image, with
    :attr:`Detections.source` set.
    """
    dev = blaze.scores.device
    center = center.select(torch.sort(center.image_index, stable=True).indices)  # by image (no sync)
    nb, nc = len(blaze), len(center)
    src_b = torch.zeros(nb, dtype=torch.uint8, device=dev)
    src_c = torch.ones(nc, dtype=torch.uint8, device=dev)
    keep_c = torch.ones(nc, dtype=torch.bool, device=dev)
    scores_b = blaze.scores.float()
    if nb and nc:
        ci = center.image_index
        counts = torch.bincount(ci, minlength=num_images)
        k = int(counts.max())  # the one host sync
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(nc, device=dev) - starts[ci]
        flat_c = ci * k + slot  # (Nc,) place of each CenterFace face in the padded table
        size = num_images * k
        boxes = torch.full((size, 4), math.nan, device=dev).index_copy_(0, flat_c, center.boxes.float())
        sc = torch.full((size,), -math.inf, device=dev).index_copy_(0, flat_c, center.scores.float())
        rows = blaze.image_index  # (Nb,) each BlazeFace face's image row of the table
        cand = boxes.view(num_images, k, 4)[rows]  # (Nb, K, 4)
        hit = box_iou(blaze.boxes.float()[:, None], cand)[:, 0] > match_iou  # (Nb, K); NaN rows never hit
        best = torch.where(hit, sc.view(num_images, k)[rows], torch.full_like(hit, -math.inf, dtype=sc.dtype))
        scores_b = torch.maximum(scores_b, best.amax(1))
        flat_hit = (rows[:, None] * k + torch.arange(k, device=dev)[None]).masked_fill(~hit, num_images * k)
        matched = torch.zeros(num_images * k + 1, dtype=torch.bool, device=dev)
        matched[flat_hit.reshape(-1)] = True
        keep_c = ~matched[flat_c] | alternates
    merged = Detections(
        torch.cat([blaze.boxes.float(), center.boxes.float()]),
        torch.cat([blaze.keypoints.float(), center.keypoints.float()]),
        torch.cat([scores_b, center.scores.float()]),
        torch.cat([blaze.image_index, center.image_index]),
        num_images,
        torch.cat([src_b, src_c]),
    )
    keep = torch.cat([torch.ones(nb, dtype=torch.bool, device=dev), keep_c])
    return finish(merged, max_faces, num_images, keep=keep)


class CombinedDetector:
    """BlazeFace (a :class:`~facefleet.detect.FaceDetector`) and CenterFace (a
    :class:`~facefleet.detect.centerface.CenterFaceDetector`) on the same images, merged by
    :func:`merge_families`; the ``combined`` detector mode. Both detectors must return boxes in BlazeFace's
    short-range convention (their default) and at most ``max_faces`` faces per image."""

    def __init__(
        self, blaze: Any, center: Any, max_faces: int = 100, match_iou: float = 0.3, alternates: bool = False
    ) -> None:
        self.blaze = blaze
        self.center = center
        self.max_faces = int(max_faces)
        self.match_iou = float(match_iou)
        self.alternates = bool(alternates)  # see merge_families
        self.device = blaze.device

    @property
    def kinds(self) -> tuple[str, ...]:
        """The networks this detector runs: BlazeFace's, then "centerface"."""
        return (*self.blaze.kinds, *self.center.kinds)

    @property
    def _compiled_casts(self) -> bool | None:
        return self.blaze._compiled_casts

    def network(self, kind: str) -> Any:
        return self.center.network(kind) if kind in self.center.kinds else self.blaze.network(kind)

    @torch.inference_mode()
    def __call__(self, images: ImageBatch) -> Detections:
        """Detect faces in ``(B, 3, H, W)`` uint8 or a list of ``(3, H, W)`` uint8 tensors (any sizes)."""
        n = image_count(images, self.device)
        blaze, center = self.blaze(images), self.center(images)
        return merge_families(blaze, center, n, self.max_faces, self.match_iou, self.alternates)
