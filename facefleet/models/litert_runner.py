"""The official LiteRT (TFLite) interpreter behind the same call interface as the torch port.

``LiteRTModel(name)(x)`` takes ``(B, 3, H, W)`` float tensors and returns the same tuple of tensors
as :func:`facefleet.models.load_model` (TFLite output shapes with batch ``B``, float32, on the input's
device). CPU only; ``ai-edge-litert`` is imported lazily and is optional (``pip install ai-edge-litert``).
An interpreter is not thread-safe: calls of one instance from several threads take turns (a lock).

A LiteRT interpreter is allocated for one input shape; resizing it re-plans and re-allocates its tensors
(the larger the batch, the dearer: fresh memory). Batches vary (faces per batch, tiled images), so a
model keeps one interpreter per power-of-two batch size up to :data:`MAX_CHUNK`, each allocated once,
and runs a batch as power-of-two chunks (13 = 8 + 4 + 1; larger ones in chunks of ``MAX_CHUNK``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_CHUNK", "LiteRTModel", "LiteRTUnavailableError", "make_interpreter"]

MAX_CHUNK = 16  # largest batch of one invoke (a power of two); bounds the interpreters' memory


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
        self._threads = num_threads
        self._it = make_interpreter(path, num_threads)
        self._it.allocate_tensors()
        self._its: dict[int, Any] = {1: self._it}  # batch size -> interpreter allocated for it
        inp = self._it.get_input_details()[0]
        self._in_index = int(inp["index"])
        _, h, w, c = (int(v) for v in inp["shape"])
        self.input_shape = (c, h, w)
        outs = self._it.get_output_details()
        self._out_index = [int(d["index"]) for d in outs]
        self.output_shapes = [(-1, *(int(v) for v in d["shape"][1:])) for d in outs]
        self.output_names = [str(d["name"]) for d in outs]
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

    def _interpreter(self, batch: int) -> Any:
        """The interpreter allocated for ``batch`` items (made on first use; under the lock)."""
        it = self._its.get(batch)
        if it is None:
            it = make_interpreter(self.source, self._threads)
            it.resize_tensor_input(self._in_index, [batch, *self.input_shape[1:], self.input_shape[0]])
            it.allocate_tensors()
            self._its[batch] = it
        return it

    def _invoke(self, nchw: np.ndarray) -> list[np.ndarray]:
        """Outputs of a ``(B, C, H, W)`` batch, run in power-of-two chunks (see the module docstring)."""
        nhwc = np.ascontiguousarray(np.asarray(nchw, dtype=np.float32).transpose(0, 2, 3, 1))
        parts: list[list[np.ndarray]] = []
        at = 0
        with self._lock:
            while at < nhwc.shape[0]:
                n = min(MAX_CHUNK, 1 << ((nhwc.shape[0] - at).bit_length() - 1))
                it = self._interpreter(n)
                it.set_tensor(self._in_index, nhwc[at : at + n])
                it.invoke()
                parts.append(
                    [
                        it.get_tensor(i).reshape(n, *shape[1:]).copy()
                        for i, shape in zip(self._out_index, self.output_shapes, strict=True)
                    ]
                )
                at += n
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return [np.zeros((0, *shape[1:]), np.float32) for shape in self.output_shapes]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self._out_index))]

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
