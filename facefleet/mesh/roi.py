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
from torch import Tensor

from facefleet.mesh.sampling import ImagePack, grid_points, pack_images, sample_grid
from facefleet.models import CompileCache

__all__ = [
    "crop_affine",
    "crop_points",
    "crop_rois",
    "crop_to_image",
    "roi_from_detections",
    "roi_from_landmarks",
    "rois_to_image",
]

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
    """Mesh landmarks ``(N, V, 3)`` (pixels; V >= 468, MediaPipe's vertices first) -> ROI ``(N, 5)`` for
    the next pass (MediaPipe tracking):
    the axis-aligned box of all points, rotation from vertex 33 (right eye) to 263 (left eye)."""
    xy = landmarks[..., :2].float()
    boxes = torch.cat([xy.amin(1), xy.amax(1)], 1)
    return _roi(boxes, xy[:, RIGHT_EYE_MESH], xy[:, LEFT_EYE_MESH], scale)


def crop_affine(roi: Tensor, crop_size: int) -> tuple[Tensor, Tensor]:
    """Affine maps of ROIs ``(N, 5)`` from crop pixels to image pixels: ``(N, 3, 3)`` matrices ``m`` and
    offsets ``t`` ``(N, 3)`` with ``image = m @ (x, y, z) + t`` for a point ``(x, y)`` of the crop (side
    ``crop_size``, origin at its top-left corner) and MediaPipe's depth ``z`` in crop pixels (smaller =
    closer), giving facefleet's depth: image pixels, larger = closer."""
    cos, sin = torch.cos(roi[:, 4]), torch.sin(roi[:, 4])
    w, h = roi[:, 2] / crop_size, roi[:, 3] / crop_size  # image pixels per crop pixel
    zero = torch.zeros_like(w)
    m = torch.stack([cos * w, -sin * h, zero, sin * w, cos * h, zero, zero, zero, -w], 1).view(-1, 3, 3)
    # the crop's centre lands on the ROI's centre
    t = torch.cat([roi[:, :2], zero[:, None]], 1) - (crop_size / 2) * (m[:, :, 0] + m[:, :, 1])
    return m, t


def crop_to_image(points: Tensor, roi: Tensor, crop_size: int) -> Tensor:
    """Crop pixel coordinates ``(N, P, 2)`` (crop of side ``crop_size``) -> image pixels ``(N, P, 2)``."""
    m, t = crop_affine(roi, crop_size)
    return torch.baddbmm(t[:, None, :2], points, m[:, :2, :2].mT)


def rois_to_image(roi: Tensor) -> Tensor:
    """Affine maps ``(N, 2, 3)`` from normalised crop coordinates in [0, 1] to image pixels."""
    m, t = crop_affine(roi, 1)
    return torch.cat([m[:, :2, :2], t[:, :2, None]], 2)


def crop_points(roi: Tensor, size: int, affine: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Image pixel coordinates ``(N, size * size, 2)`` of the pixel centres of each ROI's crop (row-major).
    ``affine``: ``crop_affine(roi, size)`` when the caller has it already."""
    m, t = crop_affine(roi, size) if affine is None else affine
    return grid_points(m[:, :2, :2], t[:, :2], size)


def crop_rois(
    images: Sequence[Tensor] | Tensor | ImagePack,
    image_index: Tensor,
    roi: Tensor,
    size: int = 192,
    padding_mode: str = "border",
    affine: tuple[Tensor, Tensor] | None = None,
    compiled: bool | None = None,
    dtype: torch.dtype = torch.float32,
    cache: CompileCache | None = None,
) -> Tensor:
    """Rotated square crops ``(N, 3, size, size)`` of ``dtype`` in [0, 1] of ROIs ``(N, 5)`` from uint8
    images.

    ``images``: ``(3, H, W)`` uint8 tensors of any sizes, a ``(B, 3, H, W)`` tensor or an
    :class:`ImagePack` of them; ``image_index``: ``(N,)`` the image of each ROI. Bilinear sampling of all
    faces of all images at once (``grid_sample`` semantics, align_corners=False), with no per-image or
    per-face loop. ``padding_mode`` "border" repeats edge pixels (MediaPipe's default), "zeros" pads black.
    ``affine``: ``crop_affine(roi, size)`` when the caller has it already. ``compiled``: as for
    :func:`facefleet.mesh.sampling.sample_grid` (on CUDA one kernel per call, the crops written in
    ``dtype``: the mesh network's precision). ``cache``: the owner's compile cache (as there).
    """
    n = int(roi.shape[0])
    if n == 0:
        return torch.zeros(0, 3, size, size, device=roi.device, dtype=dtype)
    pack = images if isinstance(images, ImagePack) else pack_images(images, roi.device)
    roi = roi.float()
    m, t = crop_affine(roi, size) if affine is None else affine
    idx = image_index.to(roi.device)
    crops = sample_grid(
        pack, idx, m[:, :2, :2], t[:, :2], size, padding_mode,
        scale=1 / 255.0, dtype=dtype, compiled=compiled, cache=cache,
    )  # fmt: skip
    return crops.unflatten(2, (size, size))  # channels-last (pixel by pixel): no copy
