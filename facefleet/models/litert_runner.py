"""The official LiteRT (TFLite) interpreter behind the same call interface as the torch port.

``LiteRTModel(name)(x)`` takes ``(B, 3, H, W)`` float tensors and returns the same tuple of tensors
as :func:`facefleet.models.load_model` (TFLite output shapes with batch ``B``, float32, on the input's
device). CPU only; ``ai-edge-litert`` is imported lazily and is optional (``pip install ai-edge-litert``).
An interpreter is not thread-safe: calls of one instance from several threads take turns (a lock).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LiteRTModel", "LiteRTUnavailableError", "make_interpreter"]


class LiteRTUnavailableError(ImportError):
    """``ai-edge-litert`` is not installed."""


def make_interpreter(path: str | os.PathLike[str], num_threads: int | None = None) -> Any:
    """A LiteRT ``Interpreter`` for the ``.tflite`` file at ``path`` (XNNPACK, ``num_threads`` threads)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise LiteRTUnavailableError(
            "the LiteRT CPU runtime needs the `ai-edge-litert` package: pip install ai-edge-litert "
            "(or use the torch runtime, which needs nothing extra)"
        ) from exc
    return Interpreter(model_path=os.fspath(path), num_threads=num_threads or os.cpu_count() or 1)


class LiteRTModel:
    """Callable with the interface of the torch module, backed by LiteRT.

    Args:
        model: a model name (``"face_landmark"``...) or a path to a ``.tflite`` file.
        num_threads: interpreter threads (default ``os.cpu_count()``).
        model_dir: as in :func:`facefleet.models.model_path`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        num_threads: int | None = None,
        model_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from facefleet.models.fetch import model_path
        from facefleet.models.specs import MODELS

        path = model_path(str(model), model_dir=model_dir) if str(model) in MODELS else Path(model)
        self.source = str(path)
        self._it = make_interpreter(path, num_threads)
        self._it.allocate_tensors()
        inp = self._it.get_input_details()[0]
        self._in_index = int(inp["index"])
        _, h, w, c = (int(v) for v in inp["shape"])
        self.input_shape = (c, h, w)
        outs = self._it.get_output_details()
        self._out_index = [int(d["index"]) for d in outs]
        self.output_shapes = [(-1, *(int(v) for v in d["shape"][1:])) for d in outs]
        self.output_names = [str(d["name"]) for d in outs]
        self._batch = 1
        self._lock = threading.Lock()  # one interpreter: its input, invoke and outputs are one turn
        self.batched = self._batch_is_exact()

    def _batch_is_exact(self) -> bool:
        """Whether one batched invoke equals single invokes. Models with fixed-shape RESHAPEs (the
        short-range detector) mix the items of a resized batch, so they are run one item at a time."""
        rng = np.random.default_rng(0)
        x = rng.random((2, *self.input_shape), dtype=np.float32)
        both = self._invoke(x)
        one = [self._invoke(x[i : i + 1]) for i in range(2)]
        return all(
            np.allclose(b[i], o[i][0], atol=1e-4 * max(1.0, float(np.abs(b).max())))
            for i in range(2)
            for b, o in zip(both, [[t[k] for t in one] for k in range(len(both))], strict=True)
        )

    def _invoke(self, nchw: np.ndarray) -> list[np.ndarray]:
        nhwc = np.ascontiguousarray(np.asarray(nchw, dtype=np.float32).transpose(0, 2, 3, 1))
        batch = nhwc.shape[0]
        with self._lock:
            if batch != self._batch:
                self._it.resize_tensor_input(self._in_index, list(nhwc.shape))
                self._it.allocate_tensors()
                self._batch = batch
            self._it.set_tensor(self._in_index, nhwc)
            self._it.invoke()
            return [
                self._it.get_tensor(i).reshape(batch, *shape[1:]).copy()
                for i, shape in zip(self._out_index, self.output_shapes, strict=True)
            ]

    def eval(self) -> LiteRTModel:
        return self

    def __call__(self, x: Any) -> tuple[Any, ...]:
        """``x``: ``(B, C, H, W)`` torch tensor (or numpy array) -> tuple of ``(B, ...)`` float32 tensors."""
        import torch

        if tuple(x.shape[1:]) != self.input_shape or len(x.shape) != 4:
            raise ValueError(
                f"{Path(self.source).name}: expected input (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        x = np.asarray(x, dtype=np.float32)
        if self.batched or x.shape[0] == 1:
            outs = self._invoke(x)
        else:
            parts = [self._invoke(x[i : i + 1]) for i in range(x.shape[0])]
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return tuple(torch.from_numpy(o).to(device) for o in outs)
