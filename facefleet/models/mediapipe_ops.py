"""MediaPipe's custom TFLite operators as batched torch modules, and their loader handlers.

The attention face mesh (``face_landmark_with_attention.tflite``) crops its own feature maps around
the lips and eyes with three custom operators (version 2 of each, as registered by MediaPipe's
``mediapipe/util/tflite/operations``). Their semantics, per face ``b`` of a batch:

* ``Landmarks2TransformMatrix`` ``(B, N, 3)`` landmarks -> ``(B, 4, 4)``: a rotated box around a subset
  of the landmarks, as the affine map from the pixels of an ``output_height x output_width`` patch to
  the landmarks' frame. ``rotation = target - atan2(right.y - left.y, right.x - left.x)`` (points
  ``right_rotation_idx`` / ``left_rotation_idx``); the subset is rotated by ``rotation``, its
  axis-aligned box (width ``w``, height ``h``, centre ``c``) is taken and ``c`` rotated back; the map is
  ``shift(c) @ rot(-rotation) @ scale(scale_x * w / W, scale_y * h / H) @ shift(-W / 2, -H / 2)``.
* ``TransformTensorBilinear`` ``(B, H, W, C)`` features and that matrix -> ``(B, h, w, C)``: output
  pixel ``(u, v)`` samples the input bilinearly at ``M[:2] @ (u + 0.5, v + 0.5, 0, 1) - 0.5`` (the
  version 2 half-pixel correction); samples outside ``[0, W - 1] x [0, H - 1]`` are zero.
* ``TransformLandmarks`` ``(B, N, D)`` points (D = 2 or 3) and a matrix -> the points' x, y mapped by
  the matrix's 2D affine part, any z kept.

Here activations are held channels-first (see :mod:`facefleet.models.tflite_torch`); matrices and
landmark geometry are computed in float32 whatever the network's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Converter(Protocol):
    """What a custom operator's handler uses of the TFLite converter
    (:class:`facefleet.models.tflite_torch._Converter`)."""

    model: Any  # the flatbuffer's tflite.Model
    consts: dict[int, np.ndarray]  # constant tensors by index

    def options(self, op: Any, cls_name: str) -> Any: ...
    def fail(self, i: int, name: str, why: str) -> Exception: ...
    def shape(self, t: int) -> tuple[int, ...]: ...
    def emit(self, module: nn.Module, ins: Sequence[int], out: int) -> None: ...
    def const(self, i: int, name: str, t: int, what: str) -> np.ndarray: ...
    def runtime_rank4(self, i: int, name: str, t: int) -> None: ...


__all__ = [
    "CUSTOM_HANDLERS",
    "LandmarksToTransformMatrix",
    "TransformLandmarks",
    "TransformTensorBilinear",
    "custom_options",
]


def custom_options(op: Any) -> dict[str, Any]:
    """The flexbuffer map of a custom operator's options (empty when it has none)."""
    from flatbuffers import flexbuffers

    if not op.CustomOptionsLength():
        return {}
    value = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
    return value if isinstance(value, dict) else {}


class LandmarksToTransformMatrix(nn.Module):
    """``Landmarks2TransformMatrix`` v2: landmarks ``(B, N, 3)`` -> patch-to-landmark-frame maps ``(B, 4, 4)``
    (float32). ``subset``: the landmark indices the box is fitted to."""

    subset: torch.Tensor
    # computed from the mesh output in float32, with the steps that feed it (see tflite_steps._head_steps):
    # in bfloat16 the patch positions were coarse and the lips and eyes moved by pixels
    float32_root = True
    head_passthrough = True

    def __init__(
        self,
        subset: list[int],
        left: int,
        right: int,
        target_rotation: float,
        out_hw: tuple[int, int],
        scale_xy: tuple[float, float],
    ) -> None:
        super().__init__()
        self.left, self.right, self.target = int(left), int(right), float(target_rotation)
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.scale_xy = (float(scale_xy[0]), float(scale_xy[1]))
        self.register_buffer("subset", torch.tensor(subset, dtype=torch.long), persistent=False)

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        lm = landmarks.float()
        d = lm[:, self.right, :2] - lm[:, self.left, :2]
        rot = self.target - torch.atan2(d[:, 1], d[:, 0])  # (B,)
        cos, sin = torch.cos(rot)[:, None], torch.sin(rot)[:, None]
        pts = lm.index_select(1, self.subset)[..., :2]
        x = cos * pts[..., 0] - sin * pts[..., 1]  # the subset rotated by `rot`
        y = sin * pts[..., 0] + cos * pts[..., 1]
        x0, x1, y0, y1 = x.amin(1), x.amax(1), y.amin(1), y.amax(1)
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        cos, sin = cos[:, 0], sin[:, 0]
        cx, cy = cos * mx + sin * my, -sin * mx + cos * my  # the box centre rotated back
        h, w = self.out_hw
        sx = self.scale_xy[0] * (x1 - x0) / w
        sy = self.scale_xy[1] * (y1 - y0) / h
        zero, one = torch.zeros_like(sx), torch.ones_like(sx)
        a, b = cos * sx, sin * sy  # rot(-rot) @ scale: [[a, b], [c, e]]
        c, e = -sin * sx, cos * sy
        rows = [
            a, b, zero, cx - (a * w / 2 + b * h / 2),
            c, e, zero, cy - (c * w / 2 + e * h / 2),
            zero, zero, one, zero,
            zero, zero, zero, one,
        ]  # fmt: skip
        return torch.stack(rows, 1).view(-1, 4, 4)


class TransformTensorBilinear(nn.Module):
    """``TransformTensorBilinear`` v2 on channels-first features: ``(B, C, H, W)`` and ``(B, 4, 4)`` ->
    ``(B, C, h, w)`` (``out_hw``), zero outside the input."""

    def __init__(self, out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))

    def forward(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        m = matrix.float()
        h_in, w_in = int(x.shape[2]), int(x.shape[3])
        h, w = self.out_hw
        v, u = torch.meshgrid(
            torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
            torch.arange(w, device=x.device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        uv1 = torch.stack([u, v, torch.ones_like(u)], -1).view(1, h * w, 3)  # (1, h*w, 3)
        affine = m[:, :2][:, :, [0, 1, 3]]  # (B, 2, 3): z of the output pixels is 0
        tc = uv1 @ affine.mT - 0.5  # (B, h*w, 2) input pixel coordinates
        inside = (tc[..., 0] >= 0) & (tc[..., 0] <= w_in - 1) & (tc[..., 1] >= 0) & (tc[..., 1] <= h_in - 1)
        # align_corners=True: -1 and 1 are the centres of the first and last pixels
        gx = tc[..., 0] * (2.0 / max(w_in - 1, 1)) - 1
        gy = tc[..., 1] * (2.0 / max(h_in - 1, 1)) - 1
        grid = torch.stack([gx, gy], -1).view(-1, h, w, 2)
        # sampled in float32: in half precision the grid's coordinates are off by up to 0.1 feature pixel,
        # which moved the lips' points by pixels
        y = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (y * inside.view(-1, 1, h, w)).to(x.dtype)


class TransformLandmarks(nn.Module):
    """``TransformLandmarks`` v2: points ``(B, N, D)`` (D = 2 or 3) and ``(B, 4, 4)`` -> ``(B, N, D)``
    float32: x, y mapped by the matrix, z (when D = 3) kept."""

    head_passthrough = True  # the output heads' float32 reaches back through it (see _head_steps)

    def forward(self, points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        p, m = points.float(), matrix.float()
        xy = torch.baddbmm(m[:, None, :2, 3], p[..., :2], m[:, :2, :2].mT)
        return torch.cat([xy, p[..., 2:]], -1)


# ---------------------------------------------------------------------------------------- handlers


def _version(c: _Converter, op: Any) -> int:
    return int(c.model.OperatorCodes(op.OpcodeIndex()).Version())


def _check_v2(c: _Converter, i: int, name: str, op: Any) -> None:
    if _version(c, op) != 2:
        raise c.fail(i, name, f"version {_version(c, op)} is not supported (version 2 is)")


def _h_landmarks_to_matrix(
    c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]
) -> None:
    _check_v2(c, i, name, op)
    shape = c.shape(ins[0])
    if len(shape) != 3 or shape[2] != 3 or ins[0] in c.consts:
        raise c.fail(i, name, f"expects runtime landmarks (1, N, 3), got {shape}")
    o = custom_options(op)
    try:
        subset = [int(v) for v in o["subset_idxs"]]
        module = LandmarksToTransformMatrix(
            subset,
            int(o["left_rotation_idx"]),
            int(o["right_rotation_idx"]),
            float(o.get("target_rotation_radians", 0.0)),
            (int(o["output_height"]), int(o["output_width"])),
            (float(o["scale_x"]), float(o["scale_y"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise c.fail(i, name, f"bad options {sorted(o)} ({exc})") from exc
    if not subset or min([*subset, module.left, module.right]) < 0 or max(subset) >= shape[1]:
        raise c.fail(i, name, f"landmark indices outside [0, {shape[1]})")
    c.emit(module, [ins[0]], outs[0])


def _h_transform_tensor(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    _check_v2(c, i, name, op)
    c.runtime_rank4(i, name, ins[0])
    out = c.shape(outs[0])
    o = custom_options(op)
    hw = (int(o.get("output_height", out[1])), int(o.get("output_width", out[2])))
    if len(out) != 4 or hw != (out[1], out[2]):
        raise c.fail(i, name, f"output size {hw} does not match the output tensor {out}")
    c.emit(TransformTensorBilinear(hw), [ins[0], ins[1]], outs[0])


def _h_transform_landmarks(
    c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]
) -> None:
    _check_v2(c, i, name, op)
    shape = c.shape(ins[0])
    if len(shape) != 3 or shape[2] not in (2, 3):
        raise c.fail(i, name, f"expects points (1, N, 2|3), got {shape}")
    c.emit(TransformLandmarks(), [ins[0], ins[1]], outs[0])


class StridedSlice(nn.Module):
    """STRIDED_SLICE with NHWC semantics (rank-4 tensors are held NCHW); the batch stays whole."""

    head_passthrough = True

    def __init__(self, rank4: bool, slices: tuple[slice, ...]) -> None:
        super().__init__()
        self.rank4, self.slices = rank4, slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), *self.slices)
        if self.rank4:
            return x.permute(0, 2, 3, 1)[index].permute(0, 3, 1, 2)
        return x[index]


def _h_strided_slice(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    opts = c.options(op, "StridedSliceOptions")
    if ins[0] in c.consts:
        raise c.fail(i, name, "slicing a constant is not supported")
    if opts is not None and (opts.EllipsisMask() or opts.NewAxisMask() or opts.ShrinkAxisMask()):
        raise c.fail(i, name, "ellipsis, new-axis and shrink masks are not supported")
    shape = c.shape(ins[0])
    begin = c.const(i, name, ins[1], "begin").astype(np.int64).reshape(-1)
    end = c.const(i, name, ins[2], "end").astype(np.int64).reshape(-1)
    strides = c.const(i, name, ins[3], "strides").astype(np.int64).reshape(-1)
    bmask = int(opts.BeginMask()) if opts is not None else 0
    emask = int(opts.EndMask()) if opts is not None else 0
    if (strides[: len(shape)] <= 0).any():
        raise c.fail(i, name, f"strides {strides.tolist()}: only positive strides are supported")
    slices = []
    for d, size in enumerate(shape):
        s = slice(
            None if bmask >> d & 1 else int(begin[d]),
            None if emask >> d & 1 else int(end[d]),
            int(strides[d]),
        )
        if d == 0:
            if s.indices(size) != (0, size, 1):
                raise c.fail(i, name, "slicing the batch dimension is not supported")
            continue
        slices.append(s)
    c.emit(StridedSlice(len(shape) == 4, tuple(slices)), [ins[0]], outs[0])


CUSTOM_HANDLERS: dict[str, Any] = {
    "CUSTOM(Landmarks2TransformMatrix)": _h_landmarks_to_matrix,
    "CUSTOM(TransformTensorBilinear)": _h_transform_tensor,
    "CUSTOM(TransformLandmarks)": _h_transform_landmarks,
    "STRIDED_SLICE": _h_strided_slice,
}
