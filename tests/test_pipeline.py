"""Reconstructor: the per-face results of a batch, as the data contract describes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facefleet.pipeline import Reconstructor


@pytest.fixture(scope="module")
def rec() -> Reconstructor:
    return Reconstructor(device="cpu", runtime="torch", texture_size=64)


def test_batch_results_follow_the_contract(rec: Reconstructor, astronaut: np.ndarray) -> None:
    blank = np.zeros_like(astronaut)
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    res = rec([astronaut, blank, flipped], texture=True)
    assert [len(r.faces) for r in res] == [1, 0, 1]
    assert [r.source for r in res] == ["image_0", "image_1", "image_2"]
    for r in (res[0], res[2]):
        f = r.faces[0]
        assert f.bbox.shape == (4,) and f.keypoints.shape == (6, 2) and f.landmarks.shape == (468, 3)
        assert f.landmarks68.shape == (68, 2) and f.pose.matrix.shape == (4, 4)
        assert f.pose.matrix.dtype == np.float64 and f.landmarks.dtype == np.float32
        assert f.texture is not None and f.texture.shape == (64, 64, 4)
        assert 0.5 <= f.score <= 1 and f.presence >= 0.5
        # the landmarks lie in the box, the 68 points are vertices of the mesh
        x, y = f.landmarks[:, 0], f.landmarks[:, 1]
        assert f.bbox[0] - 40 < x.mean() < f.bbox[2] + 40 and f.bbox[1] - 40 < y.mean() < f.bbox[3] + 40
        idx = rec.geometry.landmarks68_index
        assert np.array_equal(f.landmarks68, f.landmarks[idx, :2])
    # the mirrored portrait: mirrored box, opposite yaw
    a, b = res[0].faces[0], res[2].faces[0]
    assert abs((511 - b.bbox[2] + 1) - a.bbox[0]) < 3 and abs(a.pose.yaw + b.pose.yaw) < 3
    # the same image alone gives the same face as in the batch
    alone = rec([astronaut])[0].faces[0]
    assert np.allclose(alone.landmarks, a.landmarks, atol=1e-3)


def test_faces_below_min_presence_are_dropped(astronaut: np.ndarray) -> None:
    strict = Reconstructor(device="cpu", runtime="torch", min_presence=1.01)  # above any probability
    assert strict([astronaut])[0].faces == []
    kept = Reconstructor(device="cpu", runtime="torch", min_presence=0.0)
    assert len(kept([astronaut])[0].faces) == 1


def test_tensor_batch_equals_list(rec: Reconstructor, astronaut: np.ndarray) -> None:
    t = torch.from_numpy(astronaut).permute(2, 0, 1).contiguous()
    batch = torch.stack([t, t.flip(-1)])
    a = rec.reconstruct_tensors(batch, ["a", "b"])
    b = rec.reconstruct_tensors([t, t.flip(-1)], ["a", "b"])
    for ra, rb in zip(a, b, strict=True):
        assert len(ra.faces) == len(rb.faces) == 1
        assert np.array_equal(ra.faces[0].landmarks, rb.faces[0].landmarks)


def test_refine_passes(astronaut: np.ndarray) -> None:
    one = Reconstructor(device="cpu", runtime="torch", refine=0)
    assert one.mesher.refine == 0
    a = one([astronaut])[0].faces[0]
    b = Reconstructor(device="cpu", runtime="torch")([astronaut])[0].faces[0]  # two passes more
    shift = np.abs(a.landmarks[:, :2] - b.landmarks[:, :2]).max()
    assert 0 < shift < 0.1 * (b.bbox[2] - b.bbox[0])  # the same face, the ROI refined


def test_compile_setting_reaches_every_network_and_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compiled=False`` (``[gpu] compile = false``) turns torch.compile off for the three networks and
    the texture gather alike (the crop gather follows the mesh predictor's setting)."""
    import facefleet.models

    real = facefleet.models.load_model
    seen = []

    def recording(name: str, *args: object, compiled: bool | None = None, **kwargs: object) -> object:
        seen.append((name, compiled))
        return real(name, *args, compiled=compiled, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(facefleet.models, "load_model", recording)
    rec = Reconstructor(device="cpu", runtime="torch", texture_size=64, compiled=False)
    rec.detector.network("short"), rec.detector.network("full"), rec.mesher.network
    assert seen == [("face_detection_short_range", False), ("face_detection_full_range", False),
                    ("face_landmark", False)]  # fmt: skip
    assert rec.mesher.compiled is False and rec.sampler.compiled is False
