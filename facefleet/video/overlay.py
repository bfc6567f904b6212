"""Overlays drawn on batches of video frames on the torch device: each face's mesh wireframe (or points),
box, track id and pose axes, as points sampled along line segments and scattered into the frames."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facefleet.export.overlay import pose_axes_2d
from facefleet.families import Topology
from facefleet.video.render import face_box, faces_of, mesh_xy

__all__ = ["draw_overlay"]

_NOSE_TIP = 1  # MediaPipe mesh vertex of the nose tip (anchor of the pose axes)
_MESH_VERTICES = 468


_MESH_COLOR = (255, 255, 255)
_BOX_COLOR = (0, 230, 120)
_SMALL_BOX_COLOR = (255, 170, 0)
_AXIS_COLORS = ((230, 40, 40), (40, 200, 60), (50, 110, 255))  # x red, y green, z blue (as the photo overlay)


@functools.lru_cache(maxsize=8)
def _edges_of(triangles_key: bytes, n: int) -> np.ndarray:
    t = np.frombuffer(triangles_key, dtype=np.int64).reshape(n, 3)
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]], axis=0)
    e.sort(axis=1)
    return np.unique(e, axis=0)


def _edges(topology: Topology) -> np.ndarray:
    t = np.ascontiguousarray(topology.triangles, dtype=np.int64)
    return _edges_of(t.tobytes(), len(t))


@functools.lru_cache(maxsize=256)
def _label_bitmap(text: str, px: int) -> np.ndarray:
    """(h, w) bool glyph pixels of ``text`` in PIL's default font at ``px`` pixels, with a 2 px pad."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font: Any = ImageFont.load_default(size=px)
    except TypeError:  # pragma: no cover - Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    x0, y0, x1, y1 = font.getbbox(text)
    img = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(img).text((2 - x0, 2 - y0), text, fill=255, font=font)
    return np.asarray(img) > 96


class _Layer:
    """Segments and pixel blocks of one style, gathered on the host and drawn in one scatter."""

    def __init__(self, thickness: int, alpha: float) -> None:
        self.thickness, self.alpha = thickness, alpha
        self.seg: list[np.ndarray] = []  # (S, 8): frame, x0, y0, x1, y1, r, g, b
        self.pix: list[np.ndarray] = []  # (N, 6): frame, x, y, r, g, b

    def segments(self, frame: int, p0: np.ndarray, p1: np.ndarray, color: Sequence[int]) -> None:
        n = len(p0)
        rows = np.empty((n, 8))
        rows[:, 0], rows[:, 1:3], rows[:, 3:5], rows[:, 5:8] = frame, p0, p1, color
        self.seg.append(rows)

    def pixels(self, frame: int, xy: np.ndarray, color: Sequence[int]) -> None:
        rows = np.empty((len(xy), 6))
        rows[:, 0], rows[:, 1:3], rows[:, 3:6] = frame, xy, color
        self.pix.append(rows)

    def draw(self, out: Tensor) -> None:
        """Blend this layer into ``out`` (B, 3, H, W) uint8 in place (every pixel under it is read
        before any is written, so a pixel that several samples hit is blended once)."""
        dev = out.device
        _, _, h, w = out.shape
        pts: list[Tensor] = []
        if self.seg:
            s = torch.as_tensor(np.concatenate(self.seg), dtype=torch.float32, device=dev)
            length = torch.hypot(s[:, 3] - s[:, 1], s[:, 4] - s[:, 2])
            n = torch.ceil(length.clamp(max=4 * (h + w))).to(torch.int64) + 1  # samples per segment
            seg = torch.repeat_interleave(torch.arange(len(s), device=dev), n)
            first = torch.cumsum(n, 0) - n
            step = (torch.arange(len(seg), device=dev) - first[seg]).to(torch.float32)
            t = (step / (n[seg] - 1).clamp(min=1))[:, None]
            xy = s[seg, 1:3] * (1 - t) + s[seg, 3:5] * t
            pts.append(torch.cat([s[seg, 0:1], xy, s[seg, 5:8]], dim=1))
        if self.pix:
            pts.append(torch.as_tensor(np.concatenate(self.pix), dtype=torch.float32, device=dev))
        if not pts:
            return
        p = torch.cat(pts)
        k = self.thickness
        off = torch.arange(k, device=dev, dtype=torch.float32) - (k - 1) / 2
        ox, oy = torch.meshgrid(off, off, indexing="xy")
        x = torch.floor(p[:, None, 1] + ox.reshape(1, -1)).to(torch.int64).reshape(-1)
        y = torch.floor(p[:, None, 2] + oy.reshape(1, -1)).to(torch.int64).reshape(-1)
        fr = p[:, 0].to(torch.int64).repeat_interleave(k * k)
        rgb = p[:, 3:6].repeat_interleave(k * k, dim=0)
        keep = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        fr, x, y, rgb = fr[keep], x[keep], y[keep], rgb[keep]
        under = out[fr, :, y, x].to(torch.float32)  # (N, 3)
        val = under + self.alpha * (rgb - under)
        out[fr, :, y, x] = val.round_().clamp_(0, 255).to(torch.uint8)


def draw_overlay(
    frames: Tensor,
    frame_results: Sequence[Any],
    topology: Topology | None = None,
    *,
    mesh: str = "wireframe",
    mesh_opacity: float = 0.45,
    axis_scale: float = 0.6,
) -> Tensor:
    """Draw each frame's faces: a new ``(B, 3, H, W)`` uint8 tensor on the frames' device.

    ``frames``: ``(B, 3, H, W)`` uint8 RGB; ``frame_results``: B :class:`facefleet.video.FrameResult`
    (or :class:`ImageResult` / lists of faces, drawn without ids), coordinates in the frames' pixels.
    Drawn per face: the mesh (``mesh="wireframe"``: the topology's triangle edges; ``"points"``: the
    vertices; ``"none"``), translucent white at ``mesh_opacity``; the box (green; orange and no mesh
    or axes for a face marked ``small``, whose mesh is unreliable); the pose axes from the nose tip,
    ``axis_scale`` x the face size long (x red, y green, z blue, as :mod:`facefleet.export.overlay`);
    the track id as text above the box on a dark plate. Without a topology the mesh is drawn as points.
    Line widths follow the frame size (1 px mesh, ~1/360 of the short side for boxes and axes).
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"draw_overlay: frames must be (B, 3, H, W) uint8, got {tuple(frames.shape)}")
    if len(frame_results) != frames.shape[0]:
        raise ValueError(f"draw_overlay: {len(frame_results)} frame results for {frames.shape[0]} frames")
    if mesh not in ("wireframe", "points", "none"):
        raise ValueError(f"draw_overlay: mesh must be wireframe, points or none, got {mesh!r}")
    _, _, h, w = frames.shape
    short = min(h, w)
    line = max(1, round(short / 360))
    mesh_layer = _Layer(1 if mesh == "wireframe" else max(1, round(short / 540)), mesh_opacity)
    box_layer = _Layer(line, 1.0)
    axis_layer = _Layer(line + 1, 1.0)
    plate_layer = _Layer(1, 0.6)
    text_layer = _Layer(1, 1.0)
    font_px = max(10, round(short / 36))
    edges = _edges(topology) if topology is not None and mesh == "wireframe" else None
    for b, item in enumerate(frame_results):
        faces = faces_of(item)
        ids = list(getattr(item, "track_ids", []) or [])
        for j, face in enumerate(faces):
            box = face_box(face)
            small = bool(getattr(face, "small", False))
            xy = mesh_xy(face, topology)
            if xy is not None and mesh != "none":
                if edges is not None and len(xy) >= _MESH_VERTICES:
                    mesh_layer.segments(b, xy[edges[:, 0]], xy[edges[:, 1]], _MESH_COLOR)
                else:
                    mesh_layer.pixels(b, xy, _MESH_COLOR)
            if box is not None:
                corners = box[[0, 1, 2, 1, 2, 3, 0, 3]].reshape(4, 2)
                box_layer.segments(
                    b, corners, np.roll(corners, -1, axis=0), _SMALL_BOX_COLOR if small else _BOX_COLOR
                )
            fsize = (
                float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1])))
                if xy is not None
                else (float(max(box[2] - box[0], box[3] - box[1])) if box is not None else 0.0)
            )
            pose = getattr(getattr(face, "pose", None), "matrix", None)
            if not small and pose is not None and fsize > 0:
                anchor = (
                    xy[_NOSE_TIP]
                    if xy is not None and len(xy) >= _MESH_VERTICES
                    else (None if box is None else np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]))
                )
                m = np.asarray(pose, dtype=np.float64)
                if anchor is not None and np.isfinite(m).all():
                    dirs = pose_axes_2d(m) * (axis_scale * fsize)
                    for k in (2, 1, 0):  # z first: x and y stay visible when z points at the camera
                        axis_layer.segments(b, anchor[None], (anchor + dirs[k])[None], _AXIS_COLORS[k])
            if j < len(ids) and box is not None:
                bits = _label_bitmap(f"#{ids[j]}", font_px)
                lh, lw = bits.shape
                x0 = float(np.clip(box[0], 0, max(w - lw, 0)))
                y0 = float(box[1] - lh - line)
                y0 = float(box[3] + line) if y0 < 0 else y0
                gy, gx = np.mgrid[0:lh, 0:lw]
                plate = np.stack([gx.ravel() + x0, gy.ravel() + y0], axis=1)
                plate_layer.pixels(b, plate, (0, 0, 0))
                ty, tx = np.nonzero(bits)
                text_layer.pixels(b, np.stack([tx + x0, ty + y0], axis=1), (255, 255, 255))
    out = frames.clone()
    for layer in (mesh_layer, box_layer, axis_layer, plate_layer, text_layer):
        layer.draw(out)
    return out


# ----------------------------------------------------------------------------------------- colour
