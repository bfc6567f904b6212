"""CenterFace through onnxruntime on the CPU: the faster CPU runtime where it is installed.

Measured on a 2-core x86 machine, one 1920x1088 frame, 2 threads each, best of 5 (``python -m
facefleet.bench.centerface``): onnxruntime 1.32 0.34 s, facefleet's torch loader (torch 2.13)
0.52 s channels-last and 0.99 s channels-first. :func:`facefleet.detect.modes.centerface_runtime`
picks it for CPU fp32 runs when ``import onnxruntime`` works (``pip install onnxruntime``; in the
``dev`` and ``test`` extras), else the torch module. GPUs always run the torch module (fp16/bf16,
batched).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["OrtModel", "dynamic_model_bytes"]


def dynamic_model_bytes(path: str | os.PathLike[str]) -> bytes:
    """The ONNX model at ``path`` with its one input's batch and spatial dimensions (and its outputs')
    made symbolic (``B``, ``H``, ``W``; ``h``, ``w``), serialised: the file as shipped fixes them."""
    import onnx

    model = onnx.load(os.fspath(path))
    consts = {t.name for t in model.graph.initializer}
    for value in [i for i in model.graph.input if i.name not in consts]:
        for d, name in zip(value.type.tensor_type.shape.dim, ("B", None, "H", "W")):
            if name is not None:
                d.dim_param = name
    for value in model.graph.output:
        for d, name in zip(value.type.tensor_type.shape.dim, ("B", None, "h", "w")):
            if name is not None:
                d.dim_param = name
    del model.graph.value_info[:]  # static intermediate shapes would contradict other sizes
    return bytes(model.SerializeToString())


class OrtModel:
    """An onnxruntime CPU session with a torch module's call: ``(B, C, H, W)`` float32 CPU tensor -> the
    model's outputs as float32 CPU tensors, in the graph's order. ``threads``: intra-op threads (default:
    torch's, ``torch.get_num_threads()``, so it shares the process's CPU budget as the torch module would)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the shipped file's unused batch-norm initialisers warn otherwise
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        self.session: Any = ort.InferenceSession(
            dynamic_model_bytes(path), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.dtype = torch.float32

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outs = self.session.run(self.output_names, {self.input_name: arr})
        return tuple(torch.from_numpy(o) for o in outs)
