"""Pixel work on batches of video frames, on the torch device: face masks, anonymisation and the
RGB -> YUV 4:2:0 conversion that feeds the encoder (:mod:`facefleet.video.encode`); the overlays drawn
with the same face geometry are in :mod:`facefleet.video.overlay`.

Every function takes frames as a ``(B, 3, H, W)`` uint8 RGB tensor on any device (the GPU when there
is one) and keeps them there; face geometry comes from :class:`facefleet.types.Face` objects (host
numpy, a few hundred numbers per face) and is moved to the device once per batch. Nothing loops over
pixels in Python: masks are built from per-row spans of each face's region (a convex polygon or an
ellipse).

Colour: :func:`rgb_to_yuv420p` writes limited-range ("tv", 16-235 / 16-240) Y'CbCr with the BT.601
matrix by default, or BT.709 on request. PyAV decodes a video to RGB with the matrix its stream is
tagged with (BT.601 when untagged, swscale's default), so encoding with that same matrix
(:func:`facefleet.video.encode.source_matrix`) gives back the source's colours; the encoder tags its
output with the matrix used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facefleet.families import Topology

__all__ = [
    "ANONYMIZE_MODES",
    "MATRICES",
    "anonymize",
    "face_box",
    "face_masks",
    "faces_of",
    "mesh_xy",
    "rgb_to_yuv420p",
]

ANONYMIZE_MODES = ("blur", "pixelate", "solid")

#: Kr, Kb of the supported Y'CbCr matrices.
MATRICES: dict[str, tuple[float, float]] = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}

_DIRECTIONS = 32  # half-planes of the polygon that circumscribes a face's landmarks (<= 0.5 % larger)
_ELLIPSE_SCALE = 1.2  # a small face's ellipse: 1.2 x its box's half-sides (edges and most of the corners)
_BLUR_CELLS = 8.0  # blur: the face is reduced to ~8 cells across, then smoothed and interpolated back
_PIXEL_BLOCKS = 8.0  # pixelate: ~8 blocks across the face


# --------------------------------------------------------------------------------------------- faces


def faces_of(item: Any) -> list[Any]:
    """The faces of one frame: a :class:`FrameResult`, an :class:`ImageResult` or a list of faces."""
    if hasattr(item, "result"):  # FrameResult
        return list(item.result.faces)
    if hasattr(item, "faces"):  # ImageResult
        return list(item.faces)
    return list(item or [])


def mesh_xy(face: Any, topology: Topology | None) -> np.ndarray | None:
    """(V, 2) float64 mesh landmarks of ``face`` when they are usable for its region, else None."""
    lm = getattr(face, "landmarks", None)
    if lm is None or getattr(face, "small", False):
        return None
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < 3 or lm.shape[1] < 2:
        return None
    if topology is not None:
        lm = lm[: topology.n_mesh]
    xy = lm[:, :2]
    if not np.isfinite(xy).all() or min(np.ptp(xy[:, 0]), np.ptp(xy[:, 1])) < 2.0:
        return None
    return xy


def face_box(face: Any) -> np.ndarray | None:
    b = getattr(face, "bbox", None)
    if b is None:
        return None
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if b.shape[0] < 4 or not np.isfinite(b[:4]).all() or b[2] <= b[0] or b[3] <= b[1]:
        return None
    return b[:4]


@functools.lru_cache(maxsize=4)
def _unit_directions(k: int) -> np.ndarray:
    """(k, 2) unit normals at angles (i + 1/2) 2 pi / k: none is vertical (every one bounds x)."""
    a = (np.arange(k) + 0.5) * (2 * math.pi / k)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


@dataclass(frozen=True)
class _Regions:
    """Face regions of a batch (host numpy). Polygons: ``poly_frame`` (P,), ``poly_h`` (P, K) support
    values of the directions :func:`_unit_directions`, ``poly_size`` (P,); ellipses: ``ell_frame``
    (E,), ``ell`` (E, 4) centre x, centre y, semi-axis x, semi-axis y, ``ell_size`` (E,)."""

    poly_frame: np.ndarray
    poly_h: np.ndarray
    poly_size: np.ndarray
    ell_frame: np.ndarray
    ell: np.ndarray
    ell_size: np.ndarray


def _regions(faces_per_frame: Sequence[Any], topology: Topology | None, margin: float) -> _Regions:
    u = _unit_directions(_DIRECTIONS)
    pf: list[int] = []
    ph: list[np.ndarray] = []
    ps: list[float] = []
    ef: list[int] = []
    el: list[tuple[float, float, float, float]] = []
    es: list[float] = []
    for b, item in enumerate(faces_per_frame):
        for face in faces_of(item):
            xy = mesh_xy(face, topology)
            if xy is not None:
                size = float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1])))
                pf.append(b)
                ph.append((xy @ u.T).max(axis=0) + margin * size)
                ps.append(size)
                continue
            box = face_box(face)
            if box is None:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            size = float(max(w, h))
            grow = margin * size
            ef.append(b)
            el.append(
                (
                    (box[0] + box[2]) / 2,
                    (box[1] + box[3]) / 2,
                    _ELLIPSE_SCALE * w / 2 + grow,
                    _ELLIPSE_SCALE * h / 2 + grow,
                )
            )
            es.append(size)
    return _Regions(
        np.asarray(pf, dtype=np.int64),
        np.asarray(ph, dtype=np.float64).reshape(-1, _DIRECTIONS),
        np.asarray(ps, dtype=np.float64),
        np.asarray(ef, dtype=np.int64),
        np.asarray(el, dtype=np.float64).reshape(-1, 4),
        np.asarray(es, dtype=np.float64),
    )


def _row_spans(reg: _Regions, height: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per face and image row, the span of x its region covers: ``frame`` (F,), ``x0`` (F, H), ``x1``
    (F, H) (a row outside the region has x0 > x1) and ``size`` (F,), on ``device`` (float32)."""
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5  # pixel centres
    frames, x0s, x1s, sizes = [], [], [], []
    if len(reg.poly_frame):
        u = torch.as_tensor(_unit_directions(_DIRECTIONS), dtype=torch.float32, device=device)
        h = torch.as_tensor(reg.poly_h, dtype=torch.float32, device=device)  # (P, K)
        # u_x x + u_y y <= h  =>  x <= (h - u_y y) / u_x  (u_x > 0),  x >= ... (u_x < 0)
        bound = (h[:, :, None] - u[None, :, 1, None] * ys[None, None, :]) / u[None, :, 0, None]  # (P, K, H)
        right = u[:, 0] > 0
        x1s.append(bound[:, right].amin(dim=1))
        x0s.append(bound[:, ~right].amax(dim=1))
        frames.append(torch.as_tensor(reg.poly_frame, device=device))
        sizes.append(torch.as_tensor(reg.poly_size, dtype=torch.float32, device=device))
    if len(reg.ell_frame):
        e = torch.as_tensor(reg.ell, dtype=torch.float32, device=device)  # (E, 4)
        t = (ys[None, :] - e[:, 1:2]) / e[:, 3:4]
        half = e[:, 2:3] * torch.sqrt(torch.clamp(1 - t * t, min=0.0))
        inside = t.abs() <= 1
        x0s.append(torch.where(inside, e[:, 0:1] - half, torch.inf))
        x1s.append(torch.where(inside, e[:, 0:1] + half, -torch.inf))
        frames.append(torch.as_tensor(reg.ell_frame, device=device))
        sizes.append(torch.as_tensor(reg.ell_size, dtype=torch.float32, device=device))
    if not frames:
        empty = torch.zeros((0, height), device=device)
        return torch.zeros(0, dtype=torch.int64, device=device), empty, empty, torch.zeros(0, device=device)
    return torch.cat(frames), torch.cat(x0s), torch.cat(x1s), torch.cat(sizes)


def face_masks(
    faces_per_frame: Sequence[Any],
    size: tuple[int, int],
    topology: Topology | None = None,
    margin: float = 0.2,
    device: str | torch.device = "cpu",
    *,
    with_scale: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The pixels each frame's faces cover: ``(B, 1, H, W)`` bool on ``device``.

    ``faces_per_frame``: B items, each a :class:`facefleet.video.FrameResult`, an
    :class:`facefleet.types.ImageResult` or a list of :class:`facefleet.types.Face`; ``size``:
    ``(H, W)`` of the frames; ``topology``: the family's topology (only its first ``n_mesh``
    landmarks, the mesh vertices, are used; None: all landmarks).

    A face with a usable mesh covers the convex hull of its landmarks' (x, y), grown outwards by
    ``margin`` x its size (the larger side of the landmarks' extent): the hull is the polygon cut by
    32 half-planes that touch it (at most 0.5 % wider than the exact hull), grown by moving every
    half-plane out. A face marked ``small`` (its mesh is unreliable), or without finite landmarks,
    covers an ellipse over its box: semi-axes 1.2 x the box's half-sides plus ``margin`` x its larger
    side. Faces without a finite box or landmarks cover nothing.

    ``with_scale=True`` also returns ``(B, 1, H, W)`` float32: the size in pixels of the face that
    covers each pixel (the mean of the sizes where faces overlap, 0 where none does): what
    :func:`anonymize` scales its blur and blocks to.
    """
    h, w = int(size[0]), int(size[1])
    dev = torch.device(device)
    bsz = len(faces_per_frame)
    reg = _regions(faces_per_frame, topology, float(margin))
    frame, x0, x1, fsize = _row_spans(reg, h, dev)
    # a pixel x is inside when its centre x + 0.5 lies in [x0, x1]: columns start .. end - 1
    start = torch.ceil(x0 - 0.5).clamp(0, w).to(torch.int64)
    end = (torch.floor(x1 - 0.5) + 1).clamp(0, w).to(torch.int64)
    ok = end > start  # (F, H)
    mask = torch.zeros((bsz, 1, h, w), dtype=torch.bool, device=dev)
    scale = torch.zeros((bsz, 1, h, w), dtype=torch.float32, device=dev) if with_scale else None
    rows = ok.any(dim=0).nonzero().reshape(-1)
    if len(rows) == 0:
        return (mask, scale) if scale is not None else mask
    r0, r1 = int(rows[0]), int(rows[-1]) + 1  # the band of rows any face covers
    fi, yi = ok.nonzero(as_tuple=True)
    bi = frame[fi]
    s0, s1 = start[fi, yi], end[fi, yi]
    yb = yi - r0
    # difference arrays along x: +1 where a span starts, -1 after it ends; the running sum counts faces
    count = torch.zeros((bsz, r1 - r0, w + 1), dtype=torch.int32, device=dev)
    one = torch.ones_like(s0, dtype=torch.int32)
    count.index_put_((bi, yb, s0), one, accumulate=True)
    count.index_put_((bi, yb, s1), -one, accumulate=True)
    covered = torch.cumsum(count, dim=2, dtype=torch.int32)[:, :, :w]
    mask[:, 0, r0:r1] = covered > 0
    if scale is None:
        return mask
    acc = torch.zeros((bsz, r1 - r0, w + 1), dtype=torch.float32, device=dev)
    sz = fsize[fi]
    acc.index_put_((bi, yb, s0), sz, accumulate=True)
    acc.index_put_((bi, yb, s1), -sz, accumulate=True)
    total = torch.cumsum(acc, dim=2)[:, :, :w]
    scale[:, 0, r0:r1] = torch.where(covered > 0, total / covered.clamp(min=1).to(torch.float32), 0.0)
    return mask, scale


# ----------------------------------------------------------------------------------------- anonymise

# cell/block sides in pixels that anonymize rounds to (about two per octave): few distinct sizes, so
# few whole-frame filter passes per batch
_LADDER = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _ladder_bounds(device: torch.device) -> Tensor:
    """(len(_LADDER) - 1,) geometric means of neighbouring sides: ``bucketize`` by them rounds a side
    to the nearest of the ladder in log scale."""
    lad = np.asarray(_LADDER, dtype=np.float64)
    return torch.as_tensor(np.sqrt(lad[:-1] * lad[1:]), dtype=torch.float32, device=device)


def _extent(any_: Tensor) -> tuple[int, int]:
    """First and one-past-last index where the 1-D bool ``any_`` is true (it must be true somewhere)."""
    idx = any_.nonzero().reshape(-1)
    return int(idx[0]), int(idx[-1]) + 1


def _low_pass(x: Tensor, cell: int, mode: str) -> Tensor:
    """(B, 3, H, W) float -> same shape: pixelated (block means, ``cell`` pixels) or blurred (block
    means smoothed over 3 x 3 blocks and interpolated back bilinearly: about a Gaussian of sigma ~ cell)."""
    h, w = x.shape[-2:]
    low = F.avg_pool2d(x, cell, cell, ceil_mode=True)
    if mode == "pixelate":
        up = low.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)
    else:
        low = F.avg_pool2d(low, 3, 1, 1, count_include_pad=False)
        up = F.interpolate(low, scale_factor=cell, mode="bilinear", align_corners=False)
    return up[..., :h, :w]


def anonymize(
    frames: Tensor,
    masks: Tensor,
    mode: str = "blur",
    *,
    scale: Tensor | float | None = None,
    color: tuple[int, int, int] = (0, 0, 0),
) -> Tensor:
    """Cover the masked pixels of ``frames``: a new ``(B, 3, H, W)`` uint8 tensor, same device.

    ``frames``: ``(B, 3, H, W)`` uint8 RGB; ``masks``: ``(B, 1, H, W)`` bool (:func:`face_masks`);
    only pixels under the mask change. ``mode``: ``"blur"`` (the image reduced to ~8 cells across
    the face, smoothed over 3 x 3 cells and interpolated back: a blob with no features, not a
    readable soft face), ``"pixelate"`` (block means, ~8 blocks across the face, on a grid aligned
    to the frame) or ``"solid"`` (``color``). The cell and block sides follow the face's size:
    ``scale`` is the per-pixel face size of ``face_masks(..., with_scale=True)`` ``(B, 1, H, W)``,
    a ``(B,)`` tensor or a number (pixels); None takes sqrt(masked area) of each frame (one face:
    about its size; several: larger, so a stronger blur). Sides are rounded to a ladder of about two
    sizes per octave, and each side in use costs one whole-frame pass.
    """
    if mode not in ANONYMIZE_MODES:
        raise ValueError(f"anonymize: mode must be one of {', '.join(ANONYMIZE_MODES)}, got {mode!r}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"anonymize: frames must be (B, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}"
        )
    b, _, h, w = frames.shape
    m = masks.to(device=frames.device, dtype=torch.bool)
    if m.shape != (b, 1, h, w):
        raise ValueError(f"anonymize: masks must be {(b, 1, h, w)}, got {tuple(m.shape)}")
    if not bool(m.any()):
        return frames.clone()
    if mode == "solid":
        fill = torch.tensor(color, dtype=torch.uint8, device=frames.device).view(1, 3, 1, 1)
        return torch.where(m, fill, frames)
    if scale is None:
        scale = m.flatten(1).sum(dim=1).to(torch.float32).sqrt()
    s = torch.as_tensor(scale, dtype=torch.float32, device=frames.device)
    # everything below happens inside the window of the batch's masked pixels
    wy0, wy1 = _extent(m.any(dim=3).any(dim=0).reshape(-1))
    wx0, wx1 = _extent(m.any(dim=2).any(dim=0).reshape(-1))
    mw = m[:, :, wy0:wy1, wx0:wx1]
    if s.ndim <= 1:
        s = s.reshape(-1, 1, 1, 1).expand(b, 1, wy1 - wy0, wx1 - wx0)
    else:
        s = s[:, :, wy0:wy1, wx0:wx1]
    cells = _BLUR_CELLS if mode == "blur" else _PIXEL_BLOCKS
    level = torch.bucketize(s / cells, _ladder_bounds(frames.device))  # (B, 1, h, w): index in _LADDER
    used = torch.bincount(level[mw], minlength=len(_LADDER)).nonzero().reshape(-1).tolist()
    out = frames.clone()
    for li in used:
        cell = _LADDER[li]
        sel = mw & (level == li) if len(used) > 1 else mw
        # the window of this level's pixels, grown by 3 cells (the reach of the smoothing and the
        # interpolation) and aligned to the cell grid: the result equals the whole frame's, and
        # blocks stay on one grid through the video
        ry0, ry1 = _extent(sel.any(dim=3).any(dim=0).reshape(-1))
        rx0, rx1 = _extent(sel.any(dim=2).any(dim=0).reshape(-1))
        y0 = max(0, ((wy0 + ry0) // cell - 3) * cell)
        x0 = max(0, ((wx0 + rx0) // cell - 3) * cell)
        y1 = min(h, ((wy0 + ry1 - 1) // cell + 4) * cell)
        x1 = min(w, ((wx0 + rx1 - 1) // cell + 4) * cell)
        cover = _low_pass(frames[:, :, y0:y1, x0:x1].to(torch.float32), cell, mode)
        cover = cover.round_().clamp_(0, 255).to(torch.uint8)
        # the level's pixels, placed in this window
        pick = torch.zeros((b, 1, y1 - y0, x1 - x0), dtype=torch.bool, device=frames.device)
        py0, px0 = wy0 + ry0 - y0, wx0 + rx0 - x0
        pick[:, :, py0 : py0 + ry1 - ry0, px0 : px0 + rx1 - rx0] = sel[:, :, ry0:ry1, rx0:rx1]
        win = out[:, :, y0:y1, x0:x1]
        win.copy_(torch.where(pick, cover, win))
    return out


def rgb_to_yuv420p(frames: Tensor, matrix: str = "bt601") -> Tensor:
    """``(B, 3, H, W)`` uint8 RGB -> ``(B, H2 * 3 // 2, W2)`` uint8 planar Y'CbCr 4:2:0, same device.

    Limited range (Y' 16-235, Cb/Cr 16-240) with the ``matrix`` (``"bt601"``: Kr 0.299, Kb 0.114,
    swscale's default and what PyAV decodes untagged video with; ``"bt709"``: Kr 0.2126, Kb 0.0722).
    Chroma is the mean of each 2 x 2 block (centred siting). ``H2, W2``: H and W rounded up to even:
    4:2:0 needs even sides (H.264 cannot crop a single row or column of a 4:2:0 frame either), so an
    odd frame gets its last row / column repeated and the video is encoded one pixel larger.
    Each frame's rows are the Y plane (H2 x W2 bytes) then the Cb and Cr planes (H2/2 x W2/2 bytes
    each), contiguous: PyAV's ``VideoFrame.from_ndarray(a, format="yuv420p")`` layout.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"rgb_to_yuv420p: frames must be (B, 3, H, W) uint8, got {tuple(frames.shape)}")
    if matrix not in MATRICES:
        raise ValueError(f"rgb_to_yuv420p: matrix must be one of {', '.join(MATRICES)}, got {matrix!r}")
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    b, _, h, w = frames.shape
    x = frames.to(torch.float32)
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    h2, w2 = x.shape[-2:]
    r, g, bl = x[:, 0], x[:, 1], x[:, 2]
    luma = kr * r + kg * g + kb * bl  # 0..255
    y = luma * (219.0 / 255.0) + 16.0
    cb = (bl - luma) * (224.0 / 255.0 / (2 * (1 - kb))) + 128.0
    cr = (r - luma) * (224.0 / 255.0 / (2 * (1 - kr))) + 128.0
    c = F.avg_pool2d(torch.stack([cb, cr], dim=1), 2)  # (B, 2, H2/2, W2/2)
    yq = y.round_().clamp_(0, 255).to(torch.uint8).reshape(b, -1)
    cq = c.round_().clamp_(0, 255).to(torch.uint8).reshape(b, -1)
    return torch.cat([yq, cq], dim=1).reshape(b, h2 * 3 // 2, w2)
