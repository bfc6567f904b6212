"""Small helpers for moving data between the host and a device without stalling the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["host_to_device"]


def host_to_device(a: Any, device: str | torch.device) -> Tensor:
    """A host array or tensor on ``device``, without waiting for the work queued there: CUDA waits
    for the stream to drain before copying from pageable host memory, not from pinned memory (torch's
    caching host allocator keeps the pinned block until the copy is done)."""
    t = torch.as_tensor(a)
    dev = torch.device(device)
    if dev.type != "cuda" or t.device.type != "cpu":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)
