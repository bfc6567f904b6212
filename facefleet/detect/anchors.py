"""SSD anchors and box decoding of MediaPipe's BlazeFace detectors.

The anchors follow MediaPipe's ``SsdAnchorsCalculator``: for each group of consecutive layers sharing a
stride, every feature-map cell gets one anchor per (layer, aspect ratio) plus one interpolated-scale
anchor per layer, centred on the cell (offset 0.5). Both face detectors use ``fixed_anchor_size``, so
every anchor has width = height = 1 (in normalised input coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DETECTOR_SPECS",
    "DetectorSpec",
    "decode_boxes",
    "decode_centres",
    "decode_keypoints",
    "sigmoid_scores",
    "ssd_anchors",
]


@dataclass(frozen=True)
class DetectorSpec:
    """Geometry of one BlazeFace model: input side, SSD strides and anchors per layer."""

    model_name: str  # name for ``facefleet.models.load_model``
    input_size: int  # square input side in pixels
    strides: tuple[int, ...]
    interpolated_anchor: bool  # one extra interpolated-scale anchor per layer (short range: yes)
    num_keypoints: int = 6

    @property
    def num_anchors(self) -> int:
        return int(ssd_anchors(self.input_size, self.strides, self.interpolated_anchor).shape[0])


DETECTOR_SPECS: dict[str, DetectorSpec] = {
    "short": DetectorSpec("face_detection_short_range", 128, (8, 16, 16, 16), True),
    "full": DetectorSpec("face_detection_full_range", 192, (4,), False),
}


def ssd_anchors(
    input_size: int,
    strides: Sequence[int],
    interpolated_anchor: bool,
    device: str | torch.device = "cpu",
    anchor_offset: float = 0.5,
) -> Tensor:
    """Anchors ``(A, 4)`` = (x_center, y_center, width, height), normalised to [0, 1], in MediaPipe order.

    Order: per stride group, row-major over cells (y outer, x inner), anchors of a cell innermost.
    ``fixed_anchor_size`` is implied (width = height = 1).
    """
    chunks: list[Tensor] = []
    layer = 0
    n = len(strides)
    while layer < n:
        last = layer
        per_cell = 0
        while last < n and strides[last] == strides[layer]:
            per_cell += 1 + (1 if interpolated_anchor else 0)  # aspect ratio 1.0 (+ interpolated)
            last += 1
        fm = math.ceil(input_size / strides[layer])
        centres = (torch.arange(fm, dtype=torch.float64) + anchor_offset) / fm
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        xy = torch.stack([cx, cy], dim=-1).reshape(fm * fm, 1, 2).expand(fm * fm, per_cell, 2)
        chunks.append(xy.reshape(-1, 2))
        layer = last
    xy = torch.cat(chunks, dim=0)
    wh = torch.ones_like(xy)
    return torch.cat([xy, wh], dim=1).to(device=device, dtype=torch.float32)


def decode_boxes(
    raw: Tensor, anchors: Tensor, input_size: int, num_keypoints: int = 6
) -> tuple[Tensor, Tensor]:
    """Decode regressors ``(..., A, 4 + 2K)`` against anchors ``(A, 4)``.

    Returns boxes ``(..., A, 4)`` as (x0, y0, x1, y1) and keypoints ``(..., A, K, 2)``, both normalised to
    the model input ([0, 1] spans the input side). MediaPipe's rule: ``x = raw / input_size * anchor_w +
    anchor_x`` (raw order x, y, w, h, then keypoint x, y pairs).
    """
    raw = raw.float()
    c, half = decode_centres(raw, anchors, input_size)
    return torch.cat([c - half, c + half], -1), decode_keypoints(raw, anchors, input_size, num_keypoints)


def decode_centres(raw: Tensor, anchors: Tensor, input_size: int) -> tuple[Tensor, Tensor]:
    """Box centres and half sizes ``(..., A, 2)`` of regressors ``(..., A, >= 4)`` (see
    :func:`decode_boxes`); ``anchors`` ``(A, 4)``, or one per row of ``raw``."""
    xy, scale = _anchor_parts(anchors, input_size)
    return torch.addcmul(xy, raw[..., 0:2], scale), raw[..., 2:4] * (scale * 0.5)


def decode_keypoints(raw: Tensor, anchors: Tensor, input_size: int, num_keypoints: int = 6) -> Tensor:
    """Keypoints ``(..., A, K, 2)`` of regressors ``(..., A, 4 + 2K)`` (see :func:`decode_boxes`)."""
    xy, scale = _anchor_parts(anchors, input_size)
    kp = raw[..., 4 : 4 + 2 * num_keypoints].unflatten(-1, (num_keypoints, 2))
    return torch.addcmul(xy[..., None, :], kp, scale[..., None, :])


def _anchor_parts(anchors: Tensor, input_size: int) -> tuple[Tensor, Tensor]:
    """Anchors ``(..., 4)`` -> centres ``(..., 2)`` and the factors ``(..., 2)`` that turn raw regressor
    values (input pixels) into normalised offsets: ``x = raw * anchor_w / input_size + anchor_x``."""
    return anchors[..., :2], anchors[..., 2:] / float(input_size)


def sigmoid_scores(raw: Tensor, clip: float = 100.0) -> Tensor:
    """Score logits ``(..., A, 1)`` or ``(..., A)`` -> probabilities ``(..., A)`` (raw clipped to ±clip)."""
    if raw.shape[-1] == 1:
        raw = raw[..., 0]
    return torch.sigmoid(raw.float().clamp(-clip, clip))
