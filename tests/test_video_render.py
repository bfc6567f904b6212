"""facefleet.video.render: face masks, anonymisation, overlays and RGB -> YUV 4:2:0 (synthetic frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facefleet.families import get_family
from facefleet.types import Face, ImageResult, Pose
from facefleet.video.overlay import draw_overlay
from facefleet.video.render import anonymize, face_masks, rgb_to_yuv420p
from facefleet.video.types import FrameResult

av = pytest.importorskip("av")

TOPO = get_family("mediapipe468").topology


def _face(
    cx: float, cy: float, r: float, *, small: bool = False, landmarks: bool = True, seed: int = 0
) -> Face:
    """A face whose 468 landmarks fill an ellipse of radii (0.8 r, r) about (cx, cy)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 2 * np.pi, 468)
    d = np.sqrt(rng.uniform(0, 1, 468))
    d[:60] = 1.0  # an outline
    lm = np.stack([cx + 0.8 * r * d * np.cos(a), cy + r * d * np.sin(a), np.zeros(468)], axis=1)
    lm[1] = (cx, cy, 0)  # nose tip
    m = np.eye(4)
    m[:3, :3] *= r / 10
    m[:3, 3] = (cx, cy, 0)
    return Face(
        bbox=np.array([cx - 0.8 * r, cy - r, cx + 0.8 * r, cy + r]),
        score=0.9,
        keypoints=np.zeros((6, 2)),
        landmarks=lm if landmarks else np.zeros((0, 3)),
        landmarks68=np.zeros((68, 2)),
        pose=Pose(0.0, 0.0, 0.0, m),
        small=small,
    )


def _frame(faces: list[Face], ids: list[int] | None = None, w: int = 256, h: int = 192) -> FrameResult:
    return FrameResult(0, 0.0, ImageResult("synthetic", w, h, faces), ids or [])


def _noise(b: int, h: int, w: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8).to(device)


def test_mask_covers_the_face_and_little_else(device: str) -> None:
    face = _face(120, 90, 40)
    m = face_masks([[face]], (192, 256), TOPO, margin=0.0, device=device)
    assert m.shape == (1, 1, 192, 256) and m.dtype == torch.bool and m.device.type == device
    m = m[0, 0].cpu().numpy()
    xy = np.floor(face.landmarks[:, :2]).astype(int)
    assert m[xy[:, 1], xy[:, 0]].mean() > 0.9  # a pixel of a point on the hull's edge may be half out
    grown = face_masks([[face]], (192, 256), TOPO, margin=0.03, device=device)[0, 0].cpu().numpy()
    assert grown[xy[:, 1], xy[:, 0]].all()
    ys, xs = np.nonzero(m)
    lm = face.landmarks[:, :2]
    assert xs.min() >= lm[:, 0].min() - 2 and xs.max() <= lm[:, 0].max() + 2
    assert ys.min() >= lm[:, 1].min() - 2 and ys.max() <= lm[:, 1].max() + 2
    ellipse = np.pi * 32 * 40
    assert 0.95 * ellipse < m.sum() < 1.08 * ellipse


def test_margin_grows_the_mask(device: str) -> None:
    face = _face(128, 96, 30)
    m0, m1, m2 = (
        face_masks([[face]], (192, 256), TOPO, margin=k, device=device)[0, 0].cpu() for k in (0.0, 0.2, 0.4)
    )
    assert m0.sum() < m1.sum() < m2.sum()
    assert bool((m1 | m0).eq(m1).all()) and bool((m2 | m1).eq(m2).all())
    size = 60  # landmarks' extent
    _, xs = np.nonzero(m1.numpy())
    assert xs.max() - xs.min() == pytest.approx(48 + 2 * 0.2 * size, abs=3)


def test_small_face_and_no_landmarks_get_the_box_ellipse(device: str) -> None:
    small = _face(60, 60, 12, small=True)
    bare = _face(180, 120, 20, landmarks=False)
    m = face_masks([[small, bare]], (192, 256), TOPO, margin=0.0, device=device)[0, 0].cpu().numpy()
    for f in (small, bare):
        x0, y0, x1, y1 = f.bbox
        cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, 0.6 * (x1 - x0), 0.6 * (y1 - y0)
        yy, xx = np.mgrid[0:192, 0:256] + 0.5
        inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        near = (np.abs(xx - cx) < 2 * a) & (np.abs(yy - cy) < 2 * b)
        assert (m[near] == inside[near]).mean() > 0.98
        assert not m[int(y0) + 1, int(x0) + 1]  # the box's corner lies outside its ellipse
    # the small face's mesh is not used: its landmarks' hull would be the same ellipse shape but smaller
    grown = face_masks([[small]], (192, 256), TOPO, margin=0.5, device=device)[0, 0].cpu().numpy()
    assert grown.sum() > m[:, :128].sum()


def test_masks_of_a_batch_and_with_scale(device: str) -> None:
    a, b = _face(60, 60, 20), _face(180, 100, 40)
    m, s = face_masks(
        [_frame([a]), _frame([]), _frame([a, b])], (192, 256), TOPO, 0.1, device, with_scale=True
    )
    assert m.shape == s.shape == (3, 1, 192, 256)
    assert m[1].sum() == 0 and m[0].sum() > 0 and m[2].sum() > m[0].sum()
    assert bool((s > 0).eq(m).all())
    assert s[2, 0, 100, 180].item() == pytest.approx(80, abs=2)
    assert s[2, 0, 60, 60].item() == pytest.approx(40, abs=2)


def _laplacian_energy(x: np.ndarray, where: np.ndarray) -> float:
    x = x.astype(np.float64).mean(axis=0)
    lap = np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:])
    return float(lap[where[1:-1, 1:-1]].mean())


@pytest.mark.parametrize("mode", ["blur", "pixelate", "solid"])
def test_anonymize_changes_only_the_masked_pixels(device: str, mode: str) -> None:
    frames = _noise(2, 192, 256, device)
    faces = [[_face(100, 90, 50)], [_face(150, 80, 30, seed=1)]]
    m, s = face_masks(faces, (192, 256), TOPO, 0.2, device, with_scale=True)
    out = anonymize(frames, m, mode, scale=s, color=(10, 200, 30))
    assert out.shape == frames.shape and out.dtype == torch.uint8 and out.device == frames.device
    keep = ~m.expand_as(frames)
    assert torch.equal(out[keep], frames[keep])
    x, y = frames.cpu().numpy(), out.cpu().numpy()
    for i in range(2):
        mi = m[i, 0].cpu().numpy()
        inner = mi & np.roll(mi, 3, 0) & np.roll(mi, -3, 0) & np.roll(mi, 3, 1) & np.roll(mi, -3, 1)
        if mode == "blur":  # the high frequencies are gone
            assert _laplacian_energy(y[i], inner) < 0.05 * _laplacian_energy(x[i], inner)
        elif mode == "pixelate":  # blocks: most neighbours are equal
            same = (y[i][:, :, 1:] == y[i][:, :, :-1]).all(axis=0)
            assert same[inner[:, 1:] & inner[:, :-1]].mean() > 0.75
            assert len(np.unique(y[i][:, inner].T, axis=0)) < 0.05 * inner.sum()
        else:
            assert (y[i][:, mi].T == (10, 200, 30)).all()


def test_blur_and_blocks_scale_with_the_face(device: str) -> None:
    frames = _noise(1, 256, 256, device)
    masks = torch.ones((1, 1, 256, 256), dtype=torch.bool, device=device)
    small = anonymize(frames, masks, "pixelate", scale=32.0).cpu().numpy()[0]
    large = anonymize(frames, masks, "pixelate", scale=256.0).cpu().numpy()[0]
    assert len(np.unique(small.reshape(3, -1).T, axis=0)) > 4 * len(np.unique(large.reshape(3, -1).T, axis=0))
    # no scale: sqrt(masked area) per frame
    assert np.array_equal(anonymize(frames, masks, "pixelate").cpu().numpy()[0], large)


def test_anonymize_without_faces_is_a_copy(device: str) -> None:
    frames = _noise(2, 64, 80, device)
    m = face_masks([[], []], (64, 80), TOPO, device=device)
    assert torch.equal(anonymize(frames, m, "blur"), frames)
    with pytest.raises(ValueError, match="mode"):
        anonymize(frames, m, "smudge")


def test_draw_overlay(device: str) -> None:
    frames = torch.full((2, 3, 192, 256), 40, dtype=torch.uint8, device=device)
    face, small = _face(100, 96, 50), _face(220, 40, 10, small=True)
    out = draw_overlay(frames, [_frame([face, small], [7, 8]), _frame([])], TOPO)
    assert out.shape == frames.shape and out.dtype == torch.uint8 and out.device == frames.device
    assert torch.equal(out[1], frames[1])  # no face, nothing drawn
    changed = (out[0] != frames[0]).any(dim=0).cpu().numpy()
    assert changed[:, :10].sum() == 0 and changed[180:, :].sum() == 0  # far from every face
    x0, y0, x1, y1 = face.bbox.astype(int)
    assert changed[y0, x0 + 5 : x1 - 5].mean() > 0.9  # the box's top edge
    assert changed[y0 + 5 : y1 - 5, x0 + 5 : x1 - 5].mean() > 0.15  # mesh and axes
    assert changed[: y0 - 1, x0 : x0 + 20].sum() > 20  # the id label above the box
    img = out[0].cpu().numpy()
    sx0, sy0 = small.bbox[:2].astype(int)
    assert tuple(img[:, sy0, sx0 + 2]) == (255, 170, 0)  # small face: an orange box
    pts = draw_overlay(frames, [_frame([face]), _frame([])], None)  # no topology: points
    assert (pts[0] != frames[0]).any()


def _smooth_rgb(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    g = 128 + 90 * np.cos((xx + yy) / 17.0)
    b = 40 + 200 * (xx / w)
    return np.clip(np.stack([r, g, b], axis=2), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("matrix", "colorspace"), [("bt601", "ITU601"), ("bt709", "ITU709")])
def test_yuv420p_matches_pyav(device: str, matrix: str, colorspace: str) -> None:
    rgb = _smooth_rgb(96, 128)
    ours = rgb_to_yuv420p(torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device), matrix)[0].cpu().numpy()
    assert ours.shape == (144, 128) and ours.dtype == np.uint8
    theirs = (
        av.VideoFrame.from_ndarray(rgb, format="rgb24")
        .reformat(format="yuv420p", dst_colorspace=colorspace)
        .to_ndarray()
    )
    d = np.abs(ours.astype(int) - theirs.astype(int))
    y, c = d[:96], d[96:]
    assert y.max() <= 1
    assert c.mean() < 0.6 and np.percentile(c, 99) <= 2
    # back to RGB through PyAV: as close to the input as PyAV's own conversion's round trip

    def round_trip_error(planes: np.ndarray) -> float:
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        back = frame.reformat(format="rgb24", src_colorspace=colorspace).to_ndarray()
        return float(np.abs(back.astype(int) - rgb.astype(int)).mean())

    assert round_trip_error(ours) < round_trip_error(theirs) + 0.3


def test_yuv420p_odd_size_repeats_the_edge(device: str) -> None:
    rgb = _smooth_rgb(77, 101)
    out = rgb_to_yuv420p(torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device))[0].cpu().numpy()
    assert out.shape == (78 * 3 // 2, 102)
    y = out[:78]
    assert np.array_equal(y[77], y[76]) and np.array_equal(y[:, 101], y[:, 100])
