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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from facefleet.models.mediapipe_ops import CUSTOM_HANDLERS
from facefleet.models.tflite_module import TFLiteModule, _GraphDevice  # noqa: F401  (tests patch it here)
from facefleet.models.tflite_schema import (
    _ACT_NONE,
    _ACT_RELU,
    _ACT_RELU6,
    _ACT_RELU_N1_TO_1,
    _ACT_TANH,
    _FLOAT32,
    _NHWC_TO_NCHW_AXIS,
    _SAME,
    TFLiteConversionError,
    UnsupportedOperatorError,
    _builtin_names,
    _dequantize,
    _read_tensors,
    _same_pads,
    _to_nchw_const,
    densify,
)
from facefleet.models.tflite_steps import (
    _Binary,
    _Concat,
    _Conv,
    _DepthToSpace,
    _Pad,
    _Pool,
    _PReLU,
    _Reshape,
    _ResizeBilinear,
    _Unary,
)

__all__ = ["TFLiteConversionError", "TFLiteModule", "UnsupportedOperatorError", "densify", "load_tflite"]


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
