"""Shared fixtures: real-data locations, the bundled sample portrait, devices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("FACEFLEET_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $FACEFLEET_SHARED_DATA); skips the test when absent."""
    d = _shared_data_dir()
    if not (d / "images").is_dir():
        pytest.skip(f"real test data not found at {d} (set FACEFLEET_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """(512, 512, 3) uint8 RGB public-domain portrait shipped by scikit-image."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


DEVICES = ["cpu"] + (["cuda"] if _cuda_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _SizesOnly:
    """A pipeline stand-in for ``reconstruct``: one faceless result of each image's size."""

    device = "cpu"

    def __call__(self, arrays: list[np.ndarray], sources: list[str], texture: bool = False) -> list[object]:
        from facefleet.types import ImageResult

        return [ImageResult(s, a.shape[1], a.shape[0]) for a, s in zip(arrays, sources, strict=True)]


@pytest.fixture
def sizes_only_reconstruct(monkeypatch: pytest.MonkeyPatch) -> None:
    """``facefleet reconstruct`` runs over :class:`_SizesOnly` (no models): what it reads, names and
    writes, without the networks."""
    from facefleet import reconstruct_cmd

    monkeypatch.setattr(reconstruct_cmd, "_make_reconstructor", lambda args: _SizesOnly())
