"""The step modules of a converted TFLite graph (one per operator), channels-first, and which steps form
the output heads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facefleet.models.tflite_schema import _ACT_NONE, _ACT_RELU, _ACT_RELU6, _ACT_RELU_N1_TO_1

# --------------------------------------------------------------------------------------------- steps


def _act(x: torch.Tensor, code: int) -> torch.Tensor:
    if code == _ACT_NONE:
        return x
    if code == _ACT_RELU:
        return F.relu(x)
    if code == _ACT_RELU6:
        return F.hardtanh(x, 0.0, 6.0)
    if code == _ACT_RELU_N1_TO_1:
        return F.hardtanh(x, -1.0, 1.0)
    return torch.tanh(x)  # _ACT_TANH (others are rejected at load)


def _frozen(arr: np.ndarray) -> nn.Parameter:
    # clone: canonical strides. NumPy keeps a transposed weight's strides on its size-1 dimensions
    # (a 1x1 kernel permuted from TFLite's OHWI came out with strides (I, 1, I, I)), which torch
    # reads as channels-last: such a convolution returned channels-last activations inside a
    # channels-first network, and each residual ADD of mixed layouts ran torch's slow strided kernel
    t = torch.from_numpy(np.asarray(arr, dtype=np.float32)).clone(memory_format=torch.contiguous_format)
    return nn.Parameter(t, requires_grad=False)


class _Conv(nn.Module):
    """CONV_2D / DEPTHWISE_CONV_2D on NCHW, explicit (possibly asymmetric) padding, fused activation."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        pads: tuple[int, int, int, int],  # top, bottom, left, right
        act: int,
    ) -> None:
        super().__init__()
        self.weight = _frozen(weight)
        self.bias = _frozen(bias) if bias is not None else None
        self.stride, self.dilation, self.groups, self.act = stride, dilation, groups, act
        top, bottom, left, right = pads
        if top == bottom and left == right:
            self.padding: tuple[int, int] = (top, left)
            self.pre_pad: tuple[int, int, int, int] | None = None
        else:
            self.padding, self.pre_pad = (0, 0), (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return _act(y, self.act)


class _Pool(nn.Module):
    """MAX_POOL_2D / AVERAGE_POOL_2D (TFLite ignores padded cells in both)."""

    def __init__(
        self,
        kind: str,
        k: tuple[int, int],
        stride: tuple[int, int],
        pads: tuple[int, int, int, int],
        act: int,
    ) -> None:
        super().__init__()
        self.kind, self.k, self.stride, self.act = kind, k, stride, act
        top, bottom, left, right = pads
        self.symmetric = top == bottom and left == right and 2 * top <= k[0] and 2 * left <= k[1]
        self.padding = (top, left)
        self.pre_pad = (left, right, top, bottom)
        self.any_pad = any(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            if self.symmetric:
                y = F.max_pool2d(x, self.k, self.stride, self.padding)
            else:
                y = F.max_pool2d(F.pad(x, self.pre_pad, value=float("-inf")), self.k, self.stride)
        elif not self.any_pad:
            y = F.avg_pool2d(x, self.k, self.stride)
        else:  # average over the valid cells only
            s = F.avg_pool2d(F.pad(x, self.pre_pad), self.k, self.stride, divisor_override=1)
            ones = F.pad(torch.ones_like(x[:1, :1]), self.pre_pad)
            y = s / F.avg_pool2d(ones, self.k, self.stride, divisor_override=1)
        return _act(y, self.act)


class _Pad(nn.Module):
    def __init__(self, pads: tuple[int, ...]) -> None:
        super().__init__()
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


class _PReLU(nn.Module):
    def __init__(self, alpha_nchw: np.ndarray) -> None:
        super().__init__()
        per_channel = alpha_nchw.ndim == 4 and alpha_nchw.shape[2:] == (1, 1) and alpha_nchw.shape[0] == 1
        self.per_channel = per_channel
        self.alpha = _frozen(alpha_nchw.reshape(-1) if per_channel else alpha_nchw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return F.prelu(x, self.alpha)
        return torch.where(x >= 0, x, x * self.alpha)


class _Unary(nn.Module):
    def __init__(self, fn: str) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn == "relu":
            return F.relu(x)
        if self.fn == "relu6":
            return F.hardtanh(x, 0.0, 6.0)
        if self.fn == "sigmoid":
            return torch.sigmoid(x)
        return torch.tanh(x)


class _Binary(nn.Module):
    """ADD / MUL of two activations, or of an activation and a constant (held as a parameter)."""

    def __init__(self, op: str, act: int, const: np.ndarray | None = None) -> None:
        super().__init__()
        self.op, self.act = op, act
        self.const = _frozen(const) if const is not None else None

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        other = self.const if b is None else b
        assert other is not None
        y = a + other if self.op == "add" else a * other
        return _act(y, self.act)


class _Reshape(nn.Module):
    """RESHAPE with NHWC semantics on tensors whose rank-4 copies are held NCHW; batch stays dim 0."""

    def __init__(self, in_rank4: bool, target: tuple[int, ...]) -> None:
        super().__init__()
        self.in_rank4, self.target = in_rank4, target
        self.out_rank4 = len(target) == 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_rank4:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape((x.shape[0], *self.target[1:]))
        if self.out_rank4:
            y = y.permute(0, 3, 1, 2)
        return y


class _Concat(nn.Module):
    def __init__(self, dim: int, act: int) -> None:
        super().__init__()
        self.dim, self.act = dim, act

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return _act(torch.cat(xs, dim=self.dim), self.act)


class _ResizeBilinear(nn.Module):
    """RESIZE_BILINEAR with TFLite's align_corners / half_pixel_centers / legacy sampling."""

    lo_h: torch.Tensor
    hi_h: torch.Tensor
    frac_h: torch.Tensor
    lo_w: torch.Tensor
    hi_w: torch.Tensor
    frac_w: torch.Tensor

    def __init__(
        self, in_hw: tuple[int, int], out_hw: tuple[int, int], align_corners: bool, half_pixel: bool
    ):
        super().__init__()
        self.out_hw, self.align_corners, self.half_pixel = out_hw, align_corners, half_pixel
        self.native = align_corners or half_pixel  # torch's interpolate matches these two modes
        if not self.native:  # legacy TF sampling: src = dst * in / out, no half-pixel offset
            for axis, (n_in, n_out) in zip("hw", zip(in_hw, out_hw, strict=True), strict=True):
                src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
                lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
                hi = np.minimum(lo + 1, n_in - 1)
                frac = (src - np.floor(src)).astype(np.float32)
                self.register_buffer(f"lo_{axis}", torch.from_numpy(lo), persistent=False)
                self.register_buffer(f"hi_{axis}", torch.from_numpy(hi), persistent=False)
                self.register_buffer(f"frac_{axis}", torch.from_numpy(frac), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            return F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=self.align_corners)
        fh = self.frac_h.to(x.dtype).view(1, 1, -1, 1)
        fw = self.frac_w.to(x.dtype).view(1, 1, 1, -1)
        top, bot = x.index_select(2, self.lo_h), x.index_select(2, self.hi_h)
        x = top + (bot - top) * fh
        left, right = x.index_select(3, self.lo_w), x.index_select(3, self.hi_w)
        return left + (right - left) * fw


class _DepthToSpace(nn.Module):
    """TF DEPTH_TO_SPACE (DCR order: depth index = (i * b + j) * C + c) on NCHW."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        n, c, h, w = x.shape
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (b * b), h * b, w * b)


_SHAPE_STEPS = (_Reshape, _Concat, _DepthToSpace)


_Wiring = Sequence[tuple[tuple[int, ...], int, tuple[int, ...]]]


def _head_steps(steps: Sequence[nn.Module], wiring: _Wiring, outputs: list[int]) -> frozenset[int]:
    """The output heads: the steps that make the outputs, back through steps that only move values
    (reshapes, concatenations, depth-to-space) to the operations that compute them (the last
    convolutions). They run in float32 whatever the module's dtype: in float16 the face mesh's landmark
    coordinates (0-192 crop pixels) came out in steps of 0.125 px above 128 (~0.35 image px for a face
    of ~350 px; bfloat16: 1 px), which made the largest landmark difference per face against float32
    0.19 px (median over 53 faces of 1080p frames, CPU); with float32 heads 0.03 px. The heads are a few
    small convolutions at the networks' ends."""
    made = {out: k for k, (_, out, _) in enumerate(wiring)}
    head: set[int] = set()
    # and the geometry the network computes from its own outputs (MediaPipe's Landmarks2TransformMatrix:
    # ``float32_root``), with the steps that feed it
    todo = [made[s] for s in outputs if s in made]
    todo += [k for k, step in enumerate(steps) if getattr(step, "float32_root", False)]
    while todo:
        k = todo.pop()
        if k in head:
            continue
        head.add(k)
        if isinstance(steps[k], _SHAPE_STEPS) or getattr(steps[k], "head_passthrough", False):
            todo += [made[s] for s in wiring[k][0] if s in made]
    return frozenset(head)
