"""Run a TFLite float model as a PyTorch ``nn.Module``.

The ``.tflite`` flatbuffer (parsed with the ``tflite`` package) is turned, once at load time, into
a straight list of torch steps that compute the same graph:

* activations are kept channels-first: every rank-4 tensor of the graph (TFLite NHWC) is held as
  NCHW; RESHAPE, CONCATENATION, PAD and broadcasts translate their NHWC semantics accordingly, and
  rank-4 graph outputs are returned in the TFLite NHWC shape;
* constant sub-graphs (DEQUANTIZE of fp16/int8 weights, DENSIFY of sparse weights) are folded at
  load time; weights are converted to the torch layouts once and held as frozen parameters;
* TFLite SAME padding is reproduced exactly (asymmetric for stride 2), zero PAD ops that feed a
  convolution are folded into its padding;
* ``forward`` has no data-dependent Python control flow, so the module works with ``.half()``,
  ``.to(torch.bfloat16)``, ``torch.compile`` and CUDA graphs.

Supported operators: CONV_2D, DEPTHWISE_CONV_2D, PRELU, RELU, RELU6, LOGISTIC, TANH, ADD, MUL,
MAX_POOL_2D, AVERAGE_POOL_2D, PAD, RESHAPE, CONCATENATION, DEQUANTIZE, DENSIFY, RESIZE_BILINEAR,
DEPTH_TO_SPACE. Anything else raises :class:`UnsupportedOperatorError` at load time.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facefleet.models.mediapipe_ops import CUSTOM_HANDLERS

__all__ = ["TFLiteConversionError", "TFLiteModule", "UnsupportedOperatorError", "densify", "load_tflite"]


class TFLiteConversionError(ValueError):
    """The TFLite file cannot be expressed by this loader (the message names the file and why)."""


class UnsupportedOperatorError(TFLiteConversionError):
    """The TFLite graph uses an operator this loader does not implement."""


# --------------------------------------------------------------------------------------------- schema

_NP_DTYPES: dict[int, Any] = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
    7: np.int16, 9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16,
}  # fmt: skip
_FLOAT32, _FLOAT16 = 0, 1

# fused activations (schema ActivationFunctionType)
_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6, _ACT_TANH = 0, 1, 2, 3, 4
_SAME, _VALID = 0, 1
_DENSE, _SPARSE_CSR = 0, 1

# NHWC axis -> NCHW axis for rank-4 tensors
_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)


def _builtin_names() -> dict[int, str]:
    import tflite

    return {
        v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
    }


@dataclass
class _TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: int
    data: np.ndarray | None  # raw constant values (1-D for sparse tensors), None for activations
    raw: Any  # tflite.Tensor


def _buffer_bytes(model: Any, buf: bytes, index: int) -> bytes | None:
    b = model.Buffers(index)
    if b is None:
        return None
    if b.DataLength() > 0:
        return b.DataAsNumpy().tobytes()
    offset, size = int(b.Offset()), int(b.Size())
    if offset > 1 and size > 0:  # large models keep buffers after the flatbuffer
        return buf[offset : offset + size]
    return None


def _read_tensors(model: Any, sg: Any, buf: bytes, origin: str) -> list[_TensorInfo]:
    infos = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        data = _buffer_bytes(model, buf, t.Buffer())
        arr = None
        if data is not None:
            if t.Type() not in _NP_DTYPES:
                raise TFLiteConversionError(f"{origin}: constant tensor {i} has unsupported type {t.Type()}")
            arr = np.frombuffer(data, dtype=_NP_DTYPES[t.Type()]).copy()
            if t.Sparsity() is None:
                arr = arr.reshape(shape)
        infos.append(_TensorInfo(i, (t.Name() or b"").decode("utf-8", "replace"), shape, t.Type(), arr, t))
    return infos


def _index_vector(kind: int, table: Any) -> np.ndarray:
    """Decode a SparseIndexVector union member (Int32Vector / Uint16Vector / Uint8Vector)."""
    import tflite

    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}.get(kind)
    if cls is None or table is None:
        raise TFLiteConversionError(f"sparse tensor: unsupported index vector type {kind}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    return np.asarray(vec.ValuesAsNumpy(), dtype=np.int64).reshape(-1)


def densify(values: np.ndarray, dense_shape: Sequence[int], sparsity: Any) -> np.ndarray:
    """Expand a TFLite sparse tensor (``SparsityParameters``) into a dense array of ``dense_shape``.

    The format: ``traversal_order`` lists the n original and k block dimensions in storage order;
    ``block_map[j]`` is the original dimension block dimension ``n + j`` subdivides; each level has
    DENSE metadata (``dense_size``) or SPARSE_CSR metadata (``array_segments``, ``array_indices``).
    Values are stored in the order of that traversal.
    """
    shape = [int(s) for s in dense_shape]
    n = len(shape)
    order = (
        [int(v) for v in sparsity.TraversalOrderAsNumpy()]
        if sparsity.TraversalOrderLength()
        else list(range(n))
    )
    block_map = [int(v) for v in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    k = len(block_map)
    if len(order) != n + k or sparsity.DimMetadataLength() != n + k:
        raise TFLiteConversionError(
            f"sparse tensor: traversal order {order} / {sparsity.DimMetadataLength()} levels do not match "
            f"rank {n} with {k} block dims"
        )
    metas = [sparsity.DimMetadata(level) for level in range(n + k)]
    block_size = {j: int(metas[order.index(n + j)].DenseSize()) for j in range(k)}

    coords = np.zeros((n + k, 1), dtype=np.int64)  # expanded coordinates of every entry enumerated so far
    seg = np.zeros(1, dtype=np.int64)  # "previous index" of the CSR recursion per entry
    for level in range(n + k):
        dim, meta = order[level], metas[level]
        if meta.Format() == _DENSE:
            size = int(meta.DenseSize())
            m = seg.size
            seg = (seg[:, None] * size + np.arange(size)[None, :]).reshape(-1)
            coords = np.repeat(coords, size, axis=1)
            coords[dim] = np.tile(np.arange(size), m)
        elif meta.Format() == _SPARSE_CSR:
            segments = _index_vector(meta.ArraySegmentsType(), meta.ArraySegments())
            indices = _index_vector(meta.ArrayIndicesType(), meta.ArrayIndices())
            starts, ends = segments[seg], segments[seg + 1]
            counts = ends - starts
            total = int(counts.sum())
            seg = np.arange(total) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
            coords = np.repeat(coords, counts, axis=1)
            coords[dim] = indices[seg]
        else:
            raise TFLiteConversionError(f"sparse tensor: unknown dimension format {meta.Format()}")
    count = coords.shape[1]
    if values.size < count:
        raise TFLiteConversionError(f"sparse tensor: {values.size} values for {count} stored positions")
    orig = [coords[d].copy() for d in range(n)]
    for j, d in enumerate(block_map):
        orig[d] = orig[d] * block_size[j] + coords[n + j]
    dense = np.zeros(shape, dtype=values.dtype)
    dense[tuple(orig)] = values.reshape(-1)[:count]
    return dense


def _dequantize(info: _TensorInfo, data: np.ndarray) -> np.ndarray:
    """fp16 -> fp32; int8/uint8/int16 with scale/zero point (per tensor or per axis) -> fp32."""
    if data.dtype in (np.float16, np.float32, np.float64):
        return data.astype(np.float32)
    q = info.raw.Quantization()
    if q is None or q.ScaleLength() == 0:
        raise TFLiteConversionError(f"DEQUANTIZE of tensor {info.name!r}: integer tensor without scale")
    scale = q.ScaleAsNumpy().astype(np.float32)
    zero = q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else np.zeros_like(scale)
    if scale.size > 1:
        bshape = [1] * data.ndim
        bshape[q.QuantizedDimension()] = scale.size
        scale, zero = scale.reshape(bshape), zero.reshape(bshape)
    return (data.astype(np.float32) - zero) * scale


def _to_nchw_const(arr: np.ndarray) -> np.ndarray:
    """A constant broadcastable against an NHWC rank-4 tensor -> broadcastable against its NCHW copy."""
    if arr.ndim > 4:
        raise TFLiteConversionError(f"constant of rank {arr.ndim} cannot broadcast against a rank-4 tensor")
    a = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) for one spatial dimension: the extra pixel goes after."""
    out = (size + stride - 1) // stride
    eff = (k - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


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


# --------------------------------------------------------------------------------------------- module


class TFLiteModule(nn.Module):
    """A TFLite graph as a torch module.

    ``forward(x)``: ``x`` is ``(B, C, H, W)`` float (the TFLite input ``(1, H, W, C)`` channels-first,
    any batch size, already normalised as the model expects); it is cast to the module's dtype.
    Returns a tuple with one tensor per TFLite output, in the TFLite order and shape with batch ``B``,
    e.g. ``(B, 896, 16)`` or ``(B, 1, 1, 1404)``.
    """

    _dtype_probe: torch.Tensor

    def __init__(
        self,
        steps: list[nn.Module],
        wiring: list[tuple[tuple[int, ...], int, tuple[int, ...]]],
        n_slots: int,
        outputs: list[tuple[int, bool]],
        input_shape: tuple[int, ...],
        output_shapes: list[tuple[int, ...]],
        output_names: list[str],
        source: str,
    ) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self._wiring = wiring  # per step: input slots, output slot, slots to free afterwards
        self._n_slots = n_slots
        self._outputs = outputs  # (slot, is rank 4 -> permute back to NHWC)
        self.input_shape = input_shape  # (C, H, W)
        self.output_shapes = output_shapes  # TFLite shapes, batch dim as -1
        self.output_names = output_names
        self.source = source
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)
        self._head = _head_steps(steps, wiring, [slot for slot, _ in outputs])

    def extra_repr(self) -> str:
        shape = ", ".join(map(str, self.input_shape))
        return f"source={self.source!r}, input=(B, {shape}), outputs={self.output_shapes}"

    channels_last = False  # run convolutions in NHWC memory layout (faster on GPUs); see use_channels_last
    # captured CUDA graphs by input (shape, dtype, device): (graph, static input, static outputs)
    _graphs: dict[tuple[Any, ...], tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]]
    batch_sizes: tuple[int, ...] = ()  # fixed network batch sizes (see use_fixed_batches); () = any

    def use_fixed_batches(self, sizes: Sequence[int] | None = (128,)) -> TFLiteModule:
        """Run the network only at the given batch sizes: a batch is padded to the smallest size that
        holds it, larger batches go in chunks of the largest (outputs are sliced back to the real
        batch). ``None`` or ``()`` turns this off.

        cuDNN builds execution plans per new input shape; on an H200 that took 0.7-3.8 s per network
        and shape (``tools/probe_shapes.py``), against ~3 ms to run 128 crops. In a stream of batches
        whose sizes vary (faces per batch, tiles, the last batch of a unit) that cost recurred on every
        batch. With fixed sizes it is paid once, in :meth:`warmup`."""
        self.batch_sizes = tuple(sorted({int(n) for n in sizes or ()}))
        if any(n < 1 for n in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive, got {sizes}")
        return self

    @torch.inference_mode()
    def warmup(self) -> None:
        """Run every fixed batch size once (builds the cuDNN plans, and captures the CUDA graphs when
        they are on, before the first real batch)."""
        p = self._dtype_probe
        for n in self.batch_sizes:
            self(torch.zeros((n, *self.input_shape), dtype=p.dtype, device=p.device))

    cuda_graphs = False  # replay fixed-size CUDA calls as captured graphs (see use_cuda_graphs)

    def use_cuda_graphs(self, enable: bool = True) -> TFLiteModule:
        """On CUDA, run each fixed batch size (:meth:`use_fixed_batches`) as a captured CUDA graph:
        one launch instead of one per operator (~100-200 per network), which is what bounds these
        small networks: torch.compile's CUDA-graph mode ran them 2-2.8x faster per call at batch 128
        on an H200, its kernel fusion alone 0.85-1.4x (``tools/probe_compile.py``), so the graph is
        the part worth having; the engine on an H200 went 935 -> 1,345 img/s with one worker and
        1,632 -> 1,815 with two (single runs, which vary by ~20 %).
        Same kernels, same results as eager. A graph is captured on the first call of each shape
        (:meth:`warmup` does it up front); calls from several threads are ordered on the device.
        Other batch sizes, devices and calls made while a stream is being captured run eagerly."""
        self.cuda_graphs = bool(enable)
        self._graphs = {}
        return self

    compiled = False  # captured graphs run torch.compile's fused kernels (see use_compile)

    def use_compile(self, enable: bool = True) -> TFLiteModule:
        """Capture the CUDA graphs of :meth:`use_cuda_graphs` from ``torch.compile``'s code (TorchInductor,
        Triton kernels) instead of eager operators: each convolution's bias, PReLU and residual add fuse
        into one kernel rather than a pass over memory each. On an H200 at batch 128, fp16 this took the
        kernel time of a 1080p batch (both detectors, tiles, mesh passes) from 38.2 to 27.5 ms
        (``tools/probe_stages.py``; docs/benchmarks.md). Outputs differ from eager by fp16 rounding of
        the fused operations. The compilation happens at the first capture, in :meth:`warmup` (a cold
        machine: 65 s for the three networks and the gathers in one process with Inductor's compiler
        pool; ~20 s per process once torch's on-disk cache holds the code); if it fails the graphs
        capture eager code, with a warning. Only the graph path uses it: other calls and devices run
        eagerly."""
        self.compiled = bool(enable)
        self._graphs = {}
        return self

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        # .to() / .half() / .cuda() replace the weights: captured graphs would read the old ones
        self._graphs = {}
        out = super()._apply(*args, **kwargs)
        for i in self._head:  # the output heads stay in float32 (see _head_steps)
            self.steps[i].float()
        return out

    def use_channels_last(self, enable: bool = True) -> TFLiteModule:
        """Keep weights and activations in channels-last memory (same results, faster cuDNN kernels)."""
        self._graphs = {}  # the weights are replaced: captured graphs would read the old ones
        self.channels_last = bool(enable)
        fmt = torch.channels_last if enable else torch.contiguous_format
        for m in self.modules():
            for _name, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if p is not None and p.dim() == 4:  # clone: canonical strides (see _frozen)
                    p.data = p.data.clone(memory_format=fmt)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{Path(self.source).name}: expected input (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != self._dtype_probe.dtype:
            x = x.to(self._dtype_probe.dtype)
        n = int(x.shape[0])
        if not self.batch_sizes or n in self.batch_sizes:
            return self._forward(x)
        top = self.batch_sizes[-1]
        if n > top:  # chunks of the largest size, the last one padded
            parts = [self(x[s : s + top]) for s in range(0, n, top)]
            return tuple(torch.cat(ys) for ys in zip(*parts, strict=True))
        size = next(b for b in self.batch_sizes if b >= n)
        x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        return tuple(y[:n] for y in self._forward(x))

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._replay(x) if self._graphable(x) else self._eager(x)

    def _graphable(self, x: torch.Tensor) -> bool:
        return (
            self.cuda_graphs
            and x.is_cuda
            and int(x.shape[0]) in self.batch_sizes
            and not torch.cuda.is_current_stream_capturing()
        )

    def _replay(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(x.shape), x.dtype, x.device)
        shared = _GraphDevice.of(x.device)
        with shared.lock:
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._graphs[key] = self._capture(x, shared.pool)
                except RuntimeError as exc:  # a driver or build that cannot capture: run eagerly
                    self.cuda_graphs = False
                    warnings.warn(
                        f"{Path(self.source).name}: CUDA graph capture failed ({exc}); running eagerly",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return self._eager(x)
            graph, static_in, static_out = entry
            stream = torch.cuda.current_stream(x.device)
            if shared.done is not None:  # a replay queued by another thread/stream is over
                stream.wait_event(shared.done)
            static_in.copy_(x)
            graph.replay()
            out = tuple(o.clone() for o in static_out)  # later replays overwrite static_out
            done = torch.cuda.Event()
            done.record(stream)
            shared.done = done
        return out

    def _capture(self, x: torch.Tensor, pool: Any) -> tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]:
        static_in = x.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        body: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = self._eager
        with torch.cuda.stream(side):  # a run first: cuDNN plans, workspaces and compiled code exist
            if self.compiled:
                body = self._compiled_body(static_in)
            body(static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: decoder threads of the engine may use the device while this thread captures
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            static_out = body(static_in)
        return graph, static_in, static_out

    def _compiled_body(self, x: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        """``torch.compile`` of :meth:`_eager` for the fixed shape of ``x``, compiled now (a first call)
        so that capturing it records kernels only; :meth:`_eager` when that fails (no Triton, an
        unsupported build), with a warning."""
        import torch._dynamo

        # every network (and batch size, dtype) is one more compiled entry of the same code object,
        # TFLiteModule._eager: past torch's default of 8 per code object, further modules would silently
        # run uncompiled (a process benchmarking several precisions holds more than 8)
        cfg = torch._dynamo.config
        cfg.cache_size_limit = max(int(cfg.cache_size_limit), 64)
        try:
            fn = torch.compile(self._eager, dynamic=False)
            fn(x)
            return fn
        except Exception as exc:  # any compiler failure: run the eager code instead
            self.compiled = False
            warnings.warn(
                f"{Path(self.source).name}: torch.compile failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); capturing eager code",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._eager

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        vals: list[torch.Tensor | None] = [None] * self._n_slots
        vals[0] = x
        for k, (step, (ins, out, free)) in enumerate(zip(self.steps, self._wiring, strict=True)):
            args = [vals[i] for i in ins]
            if k in self._head:
                args = [a.float() if a is not None and a.is_floating_point() else a for a in args]
            vals[out] = step(*args)
            for i in free:
                vals[i] = None
        results = []
        for slot, rank4 in self._outputs:
            y = vals[slot]
            assert y is not None
            results.append(y.permute(0, 2, 3, 1).contiguous() if rank4 else y)
        return tuple(results)


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
    todo = [made[s] for s in outputs if s in made]
    while todo:
        k = todo.pop()
        if k in head:
            continue
        head.add(k)
        if isinstance(steps[k], _SHAPE_STEPS) or getattr(steps[k], "head_passthrough", False):
            todo += [made[s] for s in wiring[k][0] if s in made]
    return frozenset(head)


class _GraphDevice:
    """The CUDA-graph state shared by every network on one device: one memory pool (the graphs'
    intermediate buffers may overlap), so replays must not overlap either: one lock, and the event
    after the last replay's outputs were copied out, which the next replay's stream waits for."""

    _all: ClassVar[dict[torch.device, _GraphDevice]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.lock = threading.Lock()
        self.done: Any = None

    @classmethod
    def of(cls, device: torch.device) -> _GraphDevice:
        with cls._guard:
            if device not in cls._all:
                cls._all[device] = cls()
            return cls._all[device]


class _Converter:
    """Builds the step list of a :class:`TFLiteModule` from one TFLite subgraph."""

    def __init__(self, buf: bytes, origin: str) -> None:
        import tflite

        self.origin = origin
        try:
            self.model = tflite.Model.GetRootAsModel(buf, 0)
            n_sub = self.model.SubgraphsLength()
        except Exception as exc:  # flatbuffers raises assorted errors on garbage
            raise TFLiteConversionError(f"{origin}: not a TFLite flatbuffer ({exc})") from exc
        if n_sub < 1:
            raise TFLiteConversionError(f"{origin}: the model has no subgraph")
        self.sg = self.model.Subgraphs(0)
        self.tensors = _read_tensors(self.model, self.sg, buf, origin)
        self.consts: dict[int, np.ndarray] = {t.index: t.data for t in self.tensors if t.data is not None}
        self.names = _builtin_names()
        self.slots: dict[int, int] = {}
        self.steps: list[nn.Module] = []
        self.step_io: list[tuple[tuple[int, ...], int]] = []  # tensor indices in, tensor index out
        self.pad_alias: dict[int, tuple[int, tuple[int, int, int, int]]] = {}

    # ----- helpers
    def op_name(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == 32:  # CUSTOM
            custom = code.CustomCode()
            return f"CUSTOM({custom.decode() if custom else '?'})"
        return self.names.get(builtin, f"BUILTIN_{builtin}")

    def options(self, op: Any, cls_name: str) -> Any:
        import tflite

        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = getattr(tflite, cls_name)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def fail(self, i: int, name: str, why: str) -> TFLiteConversionError:
        return TFLiteConversionError(f"{self.origin}: operator #{i} {name}: {why}")

    def shape(self, t: int) -> tuple[int, ...]:
        return self.tensors[t].shape

    def emit(self, module: nn.Module, ins: Sequence[int], out: int) -> None:
        self.steps.append(module)
        self.step_io.append((tuple(ins), out))

    # ----- conversion
    def convert(self) -> TFLiteModule:
        ops = [self.sg.Operators(i) for i in range(self.sg.OperatorsLength())]
        names = [self.op_name(op) for op in ops]
        unknown = sorted({n for n in names if n not in _HANDLERS})
        if unknown:
            first = names.index(unknown[0])
            raise UnsupportedOperatorError(
                f"{self.origin}: unsupported TFLite operator(s) {', '.join(unknown)} "
                f"(first at operator #{first}); the TFLite->PyTorch loader implements "
                f"{', '.join(sorted(_HANDLERS))}"
            )
        inputs = [int(i) for i in self.sg.InputsAsNumpy()]
        outputs = [int(i) for i in self.sg.OutputsAsNumpy()]
        if len(inputs) != 1:
            raise TFLiteConversionError(
                f"{self.origin}: {len(inputs)} graph inputs; one image input expected"
            )
        in_shape = self.shape(inputs[0])
        if len(in_shape) != 4 or self.tensors[inputs[0]].dtype != _FLOAT32:
            raise TFLiteConversionError(f"{self.origin}: input must be float32 (1, H, W, C), got {in_shape}")

        consumers: dict[int, list[tuple[int, str]]] = {}
        for i, (op, name) in enumerate(zip(ops, names, strict=True)):
            for t in op.InputsAsNumpy():
                consumers.setdefault(int(t), []).append((i, name))
        self.consumers = consumers
        self.graph_outputs = set(outputs)

        for i, (op, name) in enumerate(zip(ops, names, strict=True)):
            ins = [int(t) for t in op.InputsAsNumpy()]
            outs = [int(t) for t in op.OutputsAsNumpy()]
            _HANDLERS[name](self, i, name, op, ins, outs)

        # assign slots: 0 = graph input; free each slot after its last use
        slot_of: dict[int, int] = {inputs[0]: 0}
        for _, out in self.step_io:
            slot_of.setdefault(out, len(slot_of))
        last_use: dict[int, int] = {}
        for s, (ins_t, _) in enumerate(self.step_io):
            for t in ins_t:
                last_use[t] = s
        wiring = []
        for s, (ins_t, out) in enumerate(self.step_io):
            free = tuple(
                sorted({slot_of[t] for t in ins_t if last_use[t] == s and t not in self.graph_outputs})
            )
            wiring.append((tuple(slot_of[t] for t in ins_t), slot_of[out], free))
        out_spec = []
        for t in outputs:
            if t not in slot_of:
                raise TFLiteConversionError(f"{self.origin}: output {self.tensors[t].name!r} is constant")
            out_spec.append((slot_of[t], len(self.shape(t)) == 4))
        return TFLiteModule(
            self.steps,
            wiring,
            len(slot_of),
            out_spec,
            (in_shape[3], in_shape[1], in_shape[2]),
            [(-1, *self.shape(t)[1:]) for t in outputs],
            [self.tensors[t].name for t in outputs],
            self.origin,
        )

    def const(self, i: int, name: str, t: int, what: str) -> np.ndarray:
        if t not in self.consts:
            raise self.fail(i, name, f"{what} (tensor {self.tensors[t].name!r}) must be a constant")
        return self.consts[t]

    def float_const(self, i: int, name: str, t: int, what: str) -> np.ndarray:
        arr = self.const(i, name, t, what)
        if arr.dtype not in (np.float32, np.float16, np.float64):
            raise self.fail(i, name, f"{what} has type {arr.dtype} (quantized models are not supported)")
        return arr.astype(np.float32)

    def activation(self, i: int, name: str, code: int) -> int:
        if code not in (_ACT_NONE, _ACT_RELU, _ACT_RELU6, _ACT_RELU_N1_TO_1, _ACT_TANH):
            raise self.fail(i, name, f"fused activation {code} is not supported")
        return code

    def runtime_rank4(self, i: int, name: str, t: int) -> None:
        if t in self.consts:
            raise self.fail(i, name, "constant data input is not supported")
        if len(self.shape(t)) != 4:
            raise self.fail(i, name, f"expects a rank-4 NHWC input, got shape {self.shape(t)}")


def _h_dequantize(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    data = c.const(i, name, ins[0], "input")
    c.consts[outs[0]] = _dequantize(c.tensors[ins[0]], data).reshape(c.shape(outs[0]))


def _h_densify(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    src = c.tensors[ins[0]]
    data = c.const(i, name, ins[0], "input")
    sparsity = src.raw.Sparsity()
    if sparsity is None:
        c.consts[outs[0]] = data.reshape(c.shape(outs[0]))
    else:
        try:
            c.consts[outs[0]] = densify(data, src.shape, sparsity)
        except TFLiteConversionError as exc:
            raise c.fail(i, name, f"tensor {src.name!r}: {exc}") from exc


def _h_conv(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    depthwise = name == "DEPTHWISE_CONV_2D"
    opts = c.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
    x = ins[0]
    extra = (0, 0, 0, 0)
    if x in c.pad_alias:
        x, extra = c.pad_alias[x]
    c.runtime_rank4(i, name, x)
    w = c.float_const(i, name, ins[1], "weights")
    bias = c.float_const(i, name, ins[2], "bias") if len(ins) > 2 and ins[2] >= 0 else None
    _, h, wd, cin = c.shape(x)
    h += extra[0] + extra[1]
    wd += extra[2] + extra[3]
    stride = (int(opts.StrideH()), int(opts.StrideW()))
    dil = (max(int(opts.DilationHFactor()), 1), max(int(opts.DilationWFactor()), 1))
    if depthwise:  # (1, KH, KW, C * M) -> (C * M, 1, KH, KW), one group per input channel
        weight = w.transpose(3, 0, 1, 2)
        groups = cin
    else:  # (O, KH, KW, I) -> (O, I, KH, KW)
        weight = w.transpose(0, 3, 1, 2)
        if cin % weight.shape[1]:
            raise c.fail(i, name, f"{cin} input channels, weights expect {weight.shape[1]}")
        groups = cin // weight.shape[1]
    kh, kw = weight.shape[2], weight.shape[3]
    if opts.Padding() == _SAME:
        top, bottom = _same_pads(h, kh, stride[0], dil[0])
        left, right = _same_pads(wd, kw, stride[1], dil[1])
    else:
        top = bottom = left = right = 0
    pads = (top + extra[0], bottom + extra[1], left + extra[2], right + extra[3])
    act = c.activation(i, name, int(opts.FusedActivationFunction()))
    c.emit(_Conv(weight, bias, stride, dil, groups, pads, act), [x], outs[0])


def _h_pool(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    opts = c.options(op, "Pool2DOptions")
    c.runtime_rank4(i, name, ins[0])
    _, h, w, _ = c.shape(ins[0])
    k = (int(opts.FilterHeight()), int(opts.FilterWidth()))
    stride = (int(opts.StrideH()), int(opts.StrideW()))
    if opts.Padding() == _SAME:
        pads = (*_same_pads(h, k[0], stride[0], 1), *_same_pads(w, k[1], stride[1], 1))
    else:
        pads = (0, 0, 0, 0)
    act = c.activation(i, name, int(opts.FusedActivationFunction()))
    c.emit(_Pool("max" if name == "MAX_POOL_2D" else "avg", k, stride, pads, act), [ins[0]], outs[0])


def _h_pad(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    if ins[0] in c.consts:
        raise c.fail(i, name, "padding a constant is not supported")
    paddings = c.const(i, name, ins[1], "paddings").astype(np.int64).reshape(-1, 2)
    if (paddings < 0).any():
        raise c.fail(i, name, "negative paddings")
    if len(ins) > 2 and ins[2] >= 0:
        value = c.const(i, name, ins[2], "constant value")
        if value.size and float(value.reshape(-1)[0]) != 0.0:
            raise c.fail(i, name, "non-zero pad value is not supported")
    rank = len(c.shape(ins[0]))
    if rank == 4:
        if paddings[0].any():
            raise c.fail(i, name, "padding the batch dimension is not supported")
        (t, b), (l, r), (cb, ca) = (tuple(int(v) for v in row) for row in paddings[1:])
        users = c.consumers.get(outs[0], [])
        spatial_only = not (cb or ca)
        if (
            spatial_only
            and outs[0] not in c.graph_outputs
            and len(users) == 1
            and users[0][1] in ("CONV_2D", "DEPTHWISE_CONV_2D")
        ):
            # fold into the following convolution's padding (zero padding either way)
            src, extra = c.pad_alias.get(ins[0], (ins[0], (0, 0, 0, 0)))
            c.pad_alias[outs[0]] = (src, (extra[0] + t, extra[1] + b, extra[2] + l, extra[3] + r))
            return
        pads: tuple[int, ...] = (l, r, t, b, cb, ca)
    else:
        if rank and paddings[0].any():
            raise c.fail(i, name, "padding the batch dimension is not supported")
        pads = tuple(int(v) for pair in paddings[::-1] for v in pair)
    c.emit(_Pad(pads), [ins[0]], outs[0])


def _h_prelu(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    alpha = c.float_const(i, name, ins[1], "alpha")
    rank = len(c.shape(ins[0]))
    alpha_t = _to_nchw_const(alpha) if rank == 4 else alpha
    c.emit(_PReLU(alpha_t), [ins[0]], outs[0])


def _h_unary(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    fn = {"RELU": "relu", "RELU6": "relu6", "LOGISTIC": "sigmoid", "TANH": "tanh"}[name]
    c.emit(_Unary(fn), [ins[0]], outs[0])


def _h_binary(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    opts = c.options(op, "AddOptions" if name == "ADD" else "MulOptions")
    act = c.activation(i, name, int(opts.FusedActivationFunction()) if opts is not None else 0)
    kind = "add" if name == "ADD" else "mul"
    a, b = ins[0], ins[1]
    a_const, b_const = a in c.consts, b in c.consts
    if a_const and b_const:
        raise c.fail(i, name, "both operands are constant")
    if a_const:
        a, b = b, a  # both ops commute
    if a_const or b_const:
        const = c.float_const(i, name, b, "operand")
        if len(c.shape(a)) == 4:
            const = _to_nchw_const(const)
        c.emit(_Binary(kind, act, const), [a], outs[0])
        return
    ra, rb = len(c.shape(a)), len(c.shape(b))
    if (ra == 4) != (rb == 4):
        raise c.fail(i, name, f"broadcasting rank {ra} against rank {rb} is not supported")
    c.emit(_Binary(kind, act), [a, b], outs[0])


def _h_reshape(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    in_shape, out_shape = c.shape(ins[0]), c.shape(outs[0])
    if not in_shape or not out_shape or in_shape[0] != out_shape[0]:
        raise c.fail(i, name, f"reshape {in_shape} -> {out_shape} does not keep the batch dimension first")
    if int(np.prod(in_shape)) != int(np.prod(out_shape)):
        raise c.fail(i, name, f"reshape {in_shape} -> {out_shape} changes the element count")
    c.emit(_Reshape(len(in_shape) == 4, out_shape), [ins[0]], outs[0])


def _h_concat(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    opts = c.options(op, "ConcatenationOptions")
    rank = len(c.shape(outs[0]))
    for t in ins:
        if t in c.consts:
            raise c.fail(i, name, "constant inputs are not supported")
    axis = int(opts.Axis())
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank:
        raise c.fail(i, name, f"concatenation along axis {axis} (batch) is not supported")
    dim = _NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis
    act = c.activation(i, name, int(opts.FusedActivationFunction()))
    c.emit(_Concat(dim, act), ins, outs[0])


def _h_resize(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    opts = c.options(op, "ResizeBilinearOptions")
    c.runtime_rank4(i, name, ins[0])
    size = c.const(i, name, ins[1], "size").astype(np.int64).reshape(-1)
    _, h, w, _ = c.shape(ins[0])
    align = bool(opts.AlignCorners()) if opts is not None else False
    half = bool(opts.HalfPixelCenters()) if opts is not None else False
    if align and half:
        raise c.fail(i, name, "align_corners and half_pixel_centers both set")
    c.emit(_ResizeBilinear((h, w), (int(size[0]), int(size[1])), align, half), [ins[0]], outs[0])


def _h_depth_to_space(c: _Converter, i: int, name: str, op: Any, ins: list[int], outs: list[int]) -> None:
    opts = c.options(op, "DepthToSpaceOptions")
    c.runtime_rank4(i, name, ins[0])
    block = int(opts.BlockSize())
    if block < 1 or c.shape(ins[0])[3] % (block * block):
        raise c.fail(i, name, f"block size {block} does not divide depth {c.shape(ins[0])[3]}")
    c.emit(_DepthToSpace(block), [ins[0]], outs[0])


_Handler = Callable[[_Converter, int, str, Any, list[int], list[int]], None]
_HANDLERS: dict[str, _Handler] = {
    "DEQUANTIZE": _h_dequantize,
    "DENSIFY": _h_densify,
    "CONV_2D": _h_conv,
    "DEPTHWISE_CONV_2D": _h_conv,
    "MAX_POOL_2D": _h_pool,
    "AVERAGE_POOL_2D": _h_pool,
    "PAD": _h_pad,
    "PRELU": _h_prelu,
    "RELU": _h_unary,
    "RELU6": _h_unary,
    "LOGISTIC": _h_unary,
    "TANH": _h_unary,
    "ADD": _h_binary,
    "MUL": _h_binary,
    "RESHAPE": _h_reshape,
    "CONCATENATION": _h_concat,
    "RESIZE_BILINEAR": _h_resize,
    "DEPTH_TO_SPACE": _h_depth_to_space,
    **CUSTOM_HANDLERS,
}


def load_tflite(source: str | os.PathLike[str] | bytes, name: str | None = None) -> TFLiteModule:
    """Convert a ``.tflite`` file (path or raw bytes) to a :class:`TFLiteModule` (float32, CPU, eval mode).

    Raises :class:`UnsupportedOperatorError` / :class:`TFLiteConversionError` naming the file and the
    operator when the graph cannot be converted.
    """
    if isinstance(source, bytes | bytearray):
        buf, origin = bytes(source), name or "<tflite bytes>"
    else:
        path = Path(source)
        try:
            buf = path.read_bytes()
        except OSError as exc:
            raise TFLiteConversionError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        origin = name or str(path)
    module = _Converter(buf, origin).convert()
    module.eval()
    module.requires_grad_(False)
    return module
