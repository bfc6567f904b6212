"""Devices and dtypes: resolving what a user names (``"auto"``, ``"fp16"``), and moving data between the
host and a device without stalling the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["host_to_device", "resolve_device", "resolve_precision"]


def host_to_device(a: Any, device: str | torch.device) -> Tensor:
    """A host array or tensor on ``device``, without waiting for the work queued there: CUDA waits
    for the stream to drain before copying from pageable host memory, not from pinned memory (torch's
    caching host allocator keeps the pinned block until the copy is done)."""
    t = torch.as_tensor(a)
    dev = torch.device(device)
    if dev.type != "cuda" or t.device.type != "cpu":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


_PRECISIONS = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> the current CUDA device if there is one, else CPU."""
    if device is None or str(device) == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_precision(precision: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        dtype = precision
    else:
        try:
            dtype = _PRECISIONS[precision.lower()]
        except KeyError:
            raise ValueError(f"unknown precision {precision!r}: use fp32, fp16 or bf16") from None
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("fp16 is not supported on the CPU: use fp32 (or bf16)")
    return dtype
