"""The README's second set-up command, ``facefleet demo``, and ``facefleet reconstruct`` with model flags,
end to end on the real pipeline (CPU): the command line's typed ``[model]`` settings reach the
Reconstructor and the files appear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _models_present() -> bool:
    from facefleet.models import cache_dir

    return (cache_dir() / "face_landmark.tflite").is_file()


pytestmark = pytest.mark.skipif(not _models_present(), reason="model files not in the cache")


def test_demo_reconstructs_the_bundled_portrait(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from facefleet.entrypoints.cli.reconstruct import demo_main

    out = tmp_path / "demo"
    assert demo_main(["-o", str(out), "--device", "cpu"]) == 0
    assert "demo: 1 face(s) reconstructed on cpu" in capsys.readouterr().out
    doc = json.loads((out / "astronaut.json").read_text())
    assert len(doc["faces"]) == 1 and len(doc["faces"][0]["landmarks"]) == 468
    for name in ("astronaut.glb", "astronaut_overlay.png", "astronaut_face0.obj"):
        assert (out / name).stat().st_size > 0


def test_reconstruct_takes_model_flags(tmp_path: Path) -> None:
    from skimage import data

    from facefleet.entrypoints.cli.reconstruct import reconstruct_main

    Image.fromarray(np.ascontiguousarray(data.astronaut())).save(tmp_path / "a.png")
    out = tmp_path / "out"
    argv = [str(tmp_path / "a.png"), "-o", str(out), "--device", "cpu", "--formats", "json"]
    assert reconstruct_main([*argv, "--detector", "combined", "--refine", "0"]) == 0
    face = json.loads((out / "a.png.json").read_text())["faces"][0]
    assert len(face["keypoints"]) == 6  # BlazeFace's face kept where both detectors found it
