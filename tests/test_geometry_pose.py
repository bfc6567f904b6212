"""Head pose from 468 landmarks: synthetic rotations and AFLW2000-3D sign agreement."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facefleet.geometry import estimate_pose, euler_to_matrix, load_geometry, to_landmarks68

REPO = Path(__file__).resolve().parents[1]


def _synthetic(
    yaw: list[float], pitch: list[float], roll: list[float], noise: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical shape posed with scale/translation, in image coordinates (y down, z closer)."""
    g = torch.Generator().manual_seed(seed)
    y, p, r = (torch.tensor(v, dtype=torch.float64) for v in (yaw, pitch, roll))
    rot = euler_to_matrix(y, p, r)
    n = len(yaw)
    scale = 5.0 + 20.0 * torch.rand(n, generator=g, dtype=torch.float64)
    trans = torch.rand(n, 3, generator=g, dtype=torch.float64) * 400.0
    can = torch.tensor(load_geometry().canonical, dtype=torch.float64)
    cam = scale[:, None, None] * torch.einsum("nij,vj->nvi", rot, can) + trans[:, None]
    img = cam * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    img = img + noise * scale[:, None, None] * torch.randn(img.shape, generator=g, dtype=torch.float64)
    return img, scale, rot, can


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recovers_single_axis_rotations(device: str, dtype: torch.dtype) -> None:
    angles = [-60.0, -30.0, -10.0, 0.0, 10.0, 30.0, 60.0]
    zeros = [0.0] * len(angles)
    cases = [(angles, zeros, zeros), (zeros, angles, zeros), (zeros, zeros, angles)]
    for yaw, pitch, roll in cases:
        img, scale, _, _ = _synthetic(yaw, pitch, roll, noise=0.02)
        pose = estimate_pose(img.to(device=device, dtype=dtype))
        assert pose.yaw.dtype == dtype and pose.yaw.device.type == torch.device(device).type
        got = torch.stack([pose.yaw, pose.pitch, pose.roll], 1).double().cpu()
        want = torch.tensor([yaw, pitch, roll], dtype=torch.float64).T
        assert torch.allclose(got, want, atol=1.5), (got, want)
        assert torch.allclose(pose.scale.double().cpu(), scale, rtol=0.02)


def test_matrix_maps_canonical_to_image_and_combined_rotations() -> None:
    rng = np.random.default_rng(1)
    yaw, pitch, roll = (rng.uniform(-60, 60, 16).tolist() for _ in range(3))
    img, _, _, can = _synthetic(yaw, pitch, roll)
    pose = estimate_pose(img)
    assert torch.allclose(pose.yaw, torch.tensor(yaw, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(pose.pitch, torch.tensor(pitch, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(pose.roll, torch.tensor(roll, dtype=torch.float64), atol=1e-4)
    hom = torch.cat([can, torch.ones(468, 1, dtype=torch.float64)], 1)
    mapped = torch.einsum("nij,vj->nvi", pose.matrix, hom)[..., :3]
    assert torch.allclose(mapped, img, atol=1e-6)
    # the image frame is left-handed: the linear part has a negative determinant
    assert (torch.linalg.det(pose.matrix[:, :3, :3]) < 0).all()
    poses = pose.to_poses()
    assert len(poses) == 16 and poses[3].matrix.shape == (4, 4)
    assert poses[3].yaw == pytest.approx(yaw[3], abs=1e-4)


def test_semantics_of_signs() -> None:
    """yaw > 0: face points to the image left; pitch > 0: looks up; roll > 0: clockwise."""
    can = load_geometry().canonical
    tip, top = int(np.argmax(can[:, 2])), int(np.argmax(can[:, 1]))
    img, _, _, _ = _synthetic([30.0, 0.0, 0.0], [0.0, 30.0, 0.0], [0.0, 0.0, 30.0])
    centre = img.mean(1)
    # yaw: nose tip left of the face centre in the image
    assert img[0, tip, 0] < centre[0, 0]
    # pitch up: nose tip above the centre (smaller image y) more than in the frontal pose
    assert (img[1, tip, 1] - centre[1, 1]) < (img[2, tip, 1] - centre[2, 1]) - 0.5
    # roll clockwise on screen (y down): the top of the head moves to the image right
    assert img[2, top, 0] > centre[2, 0] + 1.0


def test_input_validation_and_landmarks68() -> None:
    with pytest.raises(ValueError, match=r"\(N, 468, 3\)"):
        estimate_pose(torch.zeros(2, 467, 3))
    img, _, _, _ = _synthetic([0.0, 20.0], [0.0, 0.0], [0.0, 0.0])
    lm68 = to_landmarks68(img)
    assert lm68.shape == (2, 68, 2)
    idx = torch.as_tensor(load_geometry().landmarks68_index.astype(np.int64))
    assert torch.equal(lm68[1], img[1, idx, :2])


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_geometry", REPO / "scripts" / "make_geometry.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_geometry"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.shared_data
def test_pose_signs_match_aflw2000(shared_data: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("scipy")
    from scipy.io import loadmat

    gen = _load_generator()
    if not (gen.MODEL / "face_landmark.tflite").is_file():
        pytest.skip(f"{gen.MODEL / 'face_landmark.tflite'} not found")
    net = gen.LandmarkNet()
    d = shared_data / "benchmarks" / "aflw2000_3d_subset"
    agree, total = 0, 0
    for mat in sorted(d.glob("*.mat")):
        gt = gen.load_mat_points(mat)
        lm = gen.landmarks_in_image(net, gen.load_rgb(mat.with_suffix(".jpg")), gen.roi_from_points(gt))
        pose = estimate_pose(torch.from_numpy(lm * np.array([1.0, 1.0, -1.0]))[None])
        ref = np.degrees(loadmat(str(mat))["Pose_Para"][0, :3])  # pitch, yaw, roll
        est = [float(pose.pitch[0]), float(pose.yaw[0]), float(pose.roll[0])]
        for e, r in zip(est, ref, strict=True):
            if abs(r) >= 5.0:  # signs of near-zero angles are not meaningful
                total += 1
                agree += int(np.sign(e) == np.sign(r))
        assert np.sign(est[1]) == np.sign(ref[1]) or abs(ref[1]) < 5.0, (mat.name, est, ref)
    assert total >= 12 and agree >= total - 1, f"{agree}/{total} pose signs agree with Pose_Para"
