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
