"""TFLite flatbuffer reading for the TFLite -> PyTorch loader: tensors, constants (dequantized, densified),
padding rules and the loader's errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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
