"""Face regions of interest (rotated squares) and batched rotated crops, as MediaPipe's face mesh does.

ROI layout ``(N, 5)``: centre x, centre y, width, height (pixels; width == height) and rotation in
radians. A point ``(u, v)`` of the crop, normalised to [0, 1], sits in the image at
``centre + R(rotation) @ ((u - 0.5) * width, (v - 0.5) * height)`` with ``R = [[cos, -sin], [sin, cos]]``
in image axes (y down), as in MediaPipe's ``LandmarkProjectionCalculator``. Pixel coordinates are
continuous with the origin at the top-left corner of the image (pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_rois", "crop_to_image", "roi_from_detections", "roi_from_landmarks", "rois_to_image"]

# MediaPipe face mesh (face_detection_front_detection_to_roi / face_landmarks_to_roi): rotation from the
# right eye to the left eye (detector keypoints 0 -> 1, mesh vertices 33 -> 263) with target angle 0,
# the box made square on its long side and scaled by 1.5 about its centre.
ROI_SCALE = 1.5
LEFT_EYE_MESH, RIGHT_EYE_MESH = 263, 33


def _normalize_radians(a: Tensor) -> Tensor:
    return a - 2 * math.pi * torch.floor((a + math.pi) / (2 * math.pi))


def _roi(boxes: Tensor, start: Tensor, end: Tensor, scale: float) -> Tensor:
    """Boxes ``(N, 4)`` and rotation-vector end points ``(N, 2)`` -> ROI ``(N, 5)``."""
    d = end - start
    rotation = _normalize_radians(-torch.atan2(-d[:, 1], d[:, 0]))  # target angle 0
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).amax(1) * scale
    return torch.stack([c[:, 0], c[:, 1], side, side, rotation], 1)


def roi_from_detections(boxes: Tensor, keypoints: Tensor, scale: float = ROI_SCALE) -> Tensor:
    """Detector boxes ``(N, 4)`` and keypoints ``(N, 6, 2)`` (pixels) -> mesh ROI ``(N, 5)``."""
    return _roi(boxes.float(), keypoints[:, 0].float(), keypoints[:, 1].float(), scale)


def roi_from_landmarks(landmarks: Tensor, scale: float = ROI_SCALE) -> Tensor:
    """Mesh landmarks ``(N, 468, 3)`` (pixels) -> ROI ``(N, 5)`` for the next pass (MediaPipe tracking):
    the axis-aligned box of all points, rotation from vertex 33 (right eye) to 263 (left eye)."""
    xy = landmarks[..., :2].float()
    boxes = torch.cat([xy.amin(1), xy.amax(1)], 1)
    return _roi(boxes, xy[:, RIGHT_EYE_MESH], xy[:, LEFT_EYE_MESH], scale)


def crop_to_image(points: Tensor, roi: Tensor, crop_size: int) -> Tensor:
    """Crop pixel coordinates ``(N, P, 2)`` (crop of side ``crop_size``) -> image pixels ``(N, P, 2)``."""
    cos, sin = torch.cos(roi[:, 4]), torch.sin(roi[:, 4])
    u = (points[..., 0] / crop_size - 0.5) * roi[:, None, 2]
    v = (points[..., 1] / crop_size - 0.5) * roi[:, None, 3]
    x = cos[:, None] * u - sin[:, None] * v + roi[:, None, 0]
    y = sin[:, None] * u + cos[:, None] * v + roi[:, None, 1]
    return torch.stack([x, y], -1)


def rois_to_image(roi: Tensor) -> Tensor:
    """Affine maps ``(N, 2, 3)`` from normalised crop coordinates in [0, 1] to image pixels."""
    cos, sin = torch.cos(roi[:, 4]), torch.sin(roi[:, 4])
    w, h = roi[:, 2], roi[:, 3]
    a = torch.stack([cos * w, -sin * h, roi[:, 0] - 0.5 * (cos * w - sin * h)], 1)
    b = torch.stack([sin * w, cos * h, roi[:, 1] - 0.5 * (sin * w + cos * h)], 1)
    return torch.stack([a, b], 1)


def crop_rois(
    images: Sequence[Tensor],
    image_index: Tensor,
    roi: Tensor,
    size: int = 192,
    padding_mode: str = "border",
) -> Tensor:
    """Rotated square crops ``(N, 3, size, size)`` float32 in [0, 1] of ROIs ``(N, 5)`` from uint8 images.

    ``images``: ``(3, H, W)`` uint8 tensors (or a ``(B, 3, H, W)`` tensor); ``image_index``: ``(N,)`` the
    image of each ROI. Bilinear sampling with ``grid_sample``; one call per distinct image (no per-face
    loops). ``padding_mode`` "border" repeats edge pixels (MediaPipe's default), "zeros" pads black.
    """
    n = int(roi.shape[0])
    dev = roi.device
    out = torch.zeros(n, 3, size, size, device=dev)
    if n == 0:
        return out
    roi = roi.float()
    cos, sin = torch.cos(roi[:, 4]), torch.sin(roi[:, 4])
    # affine_grid base coordinates xb in [-1, 1] (pixel centres, align_corners=False) are 2 * (u - 0.5)
    half_w, half_h = roi[:, 2] / 2, roi[:, 3] / 2
    idx_host = image_index.tolist()
    order: dict[int, list[int]] = {}
    for j, i in enumerate(idx_host):
        order.setdefault(int(i), []).append(j)
    for i, members in order.items():
        img = images[i]
        h, w = int(img.shape[-2]), int(img.shape[-1])
        sel = torch.tensor(members, device=dev)
        c, s, hw, hh = cos[sel], sin[sel], half_w[sel], half_h[sel]
        theta = torch.stack(
            [
                torch.stack([c * hw * 2 / w, -s * hh * 2 / w, 2 * roi[sel, 0] / w - 1], 1),
                torch.stack([s * hw * 2 / h, c * hh * 2 / h, 2 * roi[sel, 1] / h - 1], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [len(members), 3, size, size], align_corners=False)
        src = img.to(dev, torch.float32)[None].expand(len(members), -1, -1, -1)
        crops = F.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
        out[sel] = crops / 255.0
    return out
