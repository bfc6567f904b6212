"""facefleet: GPU-fast, distributed 3D face reconstruction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facefleet.types import Face, ImageResult, Pose

__version__ = "0.1.0"
__all__ = ["Face", "ImageResult", "Pose", "Reconstructor", "__version__"]

if TYPE_CHECKING:
    from facefleet.pipeline import Reconstructor


def __getattr__(name: str) -> Any:
    # Lazy: importing facefleet must not import torch (fast CLI start, no CUDA init).
    if name == "Reconstructor":
        from facefleet.pipeline import Reconstructor

        return Reconstructor
    raise AttributeError(name)
