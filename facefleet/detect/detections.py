"""Detections (the typed result of every detector), validation of image batches, grouping by size and
the final sort and cap per image: what the detector families (BlazeFace, CenterFace, both combined)
share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from facefleet.types import FACE_SOURCES

__all__ = [
    "SOURCE_NAMES",
    "Detections",
    "ImageBatch",
    "as_image_list",
    "finish",
    "group_images",
    "image_count",
]

ImageBatch = Union[Tensor, Sequence[Tensor]]  # noqa: UP007 (a runtime alias)

#: :attr:`Detections.source` codes: the detector family of each face (:data:`facefleet.types.FACE_SOURCES`).
SOURCE_NAMES = FACE_SOURCES


@dataclass
class Detections:
    """Faces found in a batch of images, as flat tensors on the device (N faces in all).

    boxes: ``(N, 4)`` x0, y0, x1, y1 in original-image pixels (not clipped to the image);
    keypoints: ``(N, 6, 2)`` in pixels: of BlazeFace faces its six points, right eye, left eye, nose tip,
    mouth centre, right ear tragion, left ear tragion ("right" = the subject's right); of CenterFace faces
    its five, right eye, left eye, nose tip, right and left mouth corners, then NaN;
    scores: ``(N,)``; image_index: ``(N,)`` long; source: ``(N,)`` uint8, the index in
    :data:`SOURCE_NAMES` of the detector that found each face (None: all BlazeFace's).
    Faces are sorted by image, then by decreasing score.
    """

    boxes: Tensor
    keypoints: Tensor
    scores: Tensor
    image_index: Tensor
    num_images: int = 0
    source: Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def sources(self) -> Tensor:
        """``(N,)`` uint8 source codes (zeros when :attr:`source` is None)."""
        if self.source is not None:
            return self.source
        return torch.zeros(len(self), dtype=torch.uint8, device=self.scores.device)

    def select(self, mask_or_index: Tensor) -> Detections:
        """The subset given by a boolean mask ``(N,)`` or an index tensor."""
        m = mask_or_index
        if m.dtype == torch.bool:  # one wait for the device, not one per tensor
            m = m.nonzero().squeeze(1)
        return Detections(
            self.boxes[m],
            self.keypoints[m],
            self.scores[m],
            self.image_index[m],
            self.num_images,
            None if self.source is None else self.source[m],
        )

    def counts(self) -> list[int]:
        """Number of faces per image (length ``num_images``; one host sync)."""
        return torch.bincount(self.image_index, minlength=self.num_images).tolist()

    def to(self, device: str | torch.device) -> Detections:
        return Detections(
            self.boxes.to(device),
            self.keypoints.to(device),
            self.scores.to(device),
            self.image_index.to(device),
            self.num_images,
            None if self.source is None else self.source.to(device),
        )


def as_image_list(images: ImageBatch, device: torch.device | None = None) -> list[Tensor]:
    """Validate images: a ``(B, 3, H, W)`` uint8 tensor or a sequence of ``(3, H, W)`` uint8 tensors."""
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) image batch, got shape {tuple(images.shape)}")
        out = list(images.unbind(0))
    else:
        out = list(images)
    for i, im in enumerate(out):
        if not isinstance(im, Tensor) or im.ndim != 3 or im.shape[0] != 3:
            shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise ValueError(f"image {i}: expected a (3, H, W) uint8 tensor, got {shape}")
        _check_pixels(i, im, device)
    return out


def _check_pixels(i: int, t: Tensor, device: torch.device | None) -> None:
    """uint8, not empty, on ``device``: image ``t`` ``(3, H, W)``, or every image of a ``(B, 3, H, W)``
    batch at once (reported as image ``i``)."""
    if t.dtype != torch.uint8:
        raise ValueError(f"image {i}: expected dtype uint8, got {t.dtype}")
    if t.shape[-2] == 0 or t.shape[-1] == 0:
        raise ValueError(f"image {i}: empty image of shape {tuple(t.shape[-3:])}")
    if device is not None and not _same_device(t.device, device):
        raise ValueError(f"image {i}: on {t.device}, the detector runs on {device}")


def image_count(images: ImageBatch, device: torch.device | None = None) -> int:
    """Validate images as :func:`as_image_list` does and count them; a ``(B, 3, H, W)`` batch is checked
    once, not image by image (no ``B`` views of it: the engine's batches of 128 went through this
    three times per batch)."""
    if isinstance(images, Tensor) and images.ndim == 4 and images.shape[1] == 3:
        _check_pixels(0, images, device)
        return int(images.shape[0])
    return len(as_image_list(images, device))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """ "cuda" and "cuda:0" (the current device) count as the same device."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        cur = torch.cuda.current_device() if a.type == "cuda" else 0
        return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)
    return a.index == b.index


def group_images(images: ImageBatch, device: torch.device | None = None) -> list[tuple[list[int], Tensor]]:
    """Same-size images stacked once: [(image indices, ``(G, 3, H, W)`` uint8)] (a ``(B, 3, H, W)``
    batch is one group as it is, no copy). Validates as :func:`as_image_list`."""
    from facefleet.detect.views import stack_images

    if isinstance(images, Tensor) and images.ndim == 4:
        image_count(images, device)
        return [(list(range(images.shape[0])), images)]
    imgs = as_image_list(images, device)
    members: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(imgs):
        members.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
    return [
        (m, imgs[m[0]][None] if len(m) == 1 else stack_images([imgs[i] for i in m])) for m in members.values()
    ]


def finish(det: Detections, max_faces: int, num_images: int, keep: Tensor | None = None) -> Detections:
    """Sort by image then decreasing score, keep at most ``max_faces`` per image; of the detections in
    ``keep`` ``(N,)`` only (default all), with one selection for both (each selection waits for the
    device): the others are sorted after every image and dropped with the surplus."""
    img = det.image_index if keep is None else det.image_index.masked_fill(~keep, num_images)
    order = torch.sort(det.scores, descending=True, stable=True).indices
    order = order[torch.sort(img[order], stable=True).indices]
    det, img = det.select(order), img[order]
    if len(det):
        first = torch.searchsorted(img, img, right=False)
        rank = torch.arange(len(det), device=det.scores.device) - first
        det = det.select((rank < max_faces) & (img < num_images))
    det.num_images = num_images
    return det
