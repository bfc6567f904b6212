"""Images given as arrays or tensors, checked and brought to the pipeline's form: ``(H, W, 3)`` uint8
RGB arrays, ``(3, H, W)`` uint8 tensors; a wrong shape or dtype is a ValueError naming the image."""

from __future__ import annotations

import numpy as np
import torch


def as_rgb_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) uint8/uint16/float arrays -> (H, W, 3) uint8."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an (H, W, 3) RGB array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif a.dtype.kind == "f":
        a = np.clip(a * 255.0 + 0.5, 0, 255)
    a = a.astype(np.uint8, copy=False)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def check_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ValueError(f"{name}: expected a uint8 tensor, got {t.dtype}")
    return t
