"""UV texture sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facefleet.geometry import euler_to_matrix, load_geometry
from facefleet.texture import TextureSampler, texel_map

SIZE = 128


def _posed(yaw: float, scale: float, cx: float, cy: float, mirror: bool = False) -> torch.Tensor:
    """(468, 3) image landmarks of the canonical face with a yaw, scale and centre."""
    can = torch.tensor(load_geometry().canonical, dtype=torch.float64)
    rot = euler_to_matrix(
        torch.tensor([yaw], dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
    )[0]
    cam = scale * can @ rot.T
    img = cam * torch.tensor([-1.0 if mirror else 1.0, -1.0, 1.0], dtype=torch.float64)
    return (img + torch.tensor([cx, cy, 0.0], dtype=torch.float64)).float()


def _quadrant_image(h: int, w: int, cx: float, cy: float) -> torch.Tensor:
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    left, top = xs < cx, ys < cy
    img[0][left & top] = 255  # red: image top-left
    img[1][~left & top] = 255  # green: top-right
    img[2][left & ~top] = 255  # blue: bottom-left
    img[:, ~left & ~top] = 255  # white: bottom-right
    return img


def _texel_positions(lm: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy reference: image position of every texel centre and its triangle."""
    tri_id, bary = texel_map(SIZE)
    tri = load_geometry().triangles
    verts = tri[np.clip(tri_id, 0, None)]  # (T, T, 3)
    pos = (bary[..., None] * lm.numpy()[verts][..., :2]).sum(2)
    return pos, tri_id


def test_texel_map_covers_layout() -> None:
    tri_id, bary = texel_map(SIZE)
    assert tri_id.shape == (SIZE, SIZE) and bary.shape == (SIZE, SIZE, 3)
    cov = tri_id >= 0
    assert 0.4 < cov.mean() < 0.9
    assert np.allclose(bary[cov].sum(1), 1.0, atol=1e-5) and (bary[cov] >= -1e-5).all()
    # the eye and mouth holes are uncovered: texel under each hole centroid
    geo = load_geometry()
    for loop in (geo.eye_left, geo.eye_right, geo.mouth):
        u, v = geo.uv[loop].mean(0)
        assert tri_id[int(v * SIZE), int(u * SIZE)] == -1
    assert texel_map(SIZE) is texel_map(SIZE)  # cached


def test_known_colour_regions(device: str) -> None:
    h, w, cx, cy = 300, 260, 130.0, 150.0
    img = _quadrant_image(h, w, cx, cy)
    lm = _posed(0.0, 12.0, cx, cy)
    tex = TextureSampler(SIZE, device=device)([img.to(device)], lm[None].to(device), [0])
    assert tex.shape == (1, 4, SIZE, SIZE) and tex.dtype == torch.uint8
    tex = tex[0].cpu().numpy()
    pos, tri_id = _texel_positions(lm)
    vis = tex[3] == 255
    assert vis.sum() > 0.9 * (tri_id >= 0).sum()  # a frontal face is almost entirely visible
    assert (tex[3][tri_id < 0] == 0).all()
    far = (np.abs(pos[..., 0] - cx) > 2) & (np.abs(pos[..., 1] - cy) > 2) & vis
    left, top = pos[..., 0] < cx, pos[..., 1] < cy
    expect = np.zeros((3, SIZE, SIZE), np.uint8)
    expect[0][left & top] = 255
    expect[1][~left & top] = 255
    expect[2][left & ~top] = 255
    expect[:, ~left & ~top] = 255
    assert np.array_equal(tex[:3][:, far], expect[:, far])
    # the subject's right half (image left) lands in the left half of the texture
    cols = np.nonzero(far & left)[1]
    assert cols.mean() < SIZE / 2


def test_back_facing_triangles_have_zero_alpha() -> None:
    img = torch.full((3, 200, 200), 128, dtype=torch.uint8)
    sampler = TextureSampler(SIZE)
    mirrored = _posed(0.0, 8.0, 100.0, 100.0, mirror=True)  # every triangle seen from behind
    turned = _posed(75.0, 8.0, 100.0, 100.0)  # strong yaw: the far cheek turns away
    frontal = _posed(0.0, 8.0, 100.0, 100.0)
    tex = sampler([img], torch.stack([mirrored, turned, frontal]), [0, 0, 0]).numpy()
    covered = texel_map(SIZE)[0] >= 0
    # seen from behind, only the few triangles under the nose (facing down) stay visible, and
    # they are exactly the ones hidden in the frontal view
    assert (tex[0, 3][covered] == 255).mean() < 0.05
    assert np.array_equal(tex[0, 3][covered] == 255, tex[2, 3][covered] == 0)
    facing = sampler.facing(turned[None])[0].numpy()
    assert 0.05 < (~facing).mean() < 0.6
    tri_id, _ = texel_map(SIZE)
    back = (tri_id >= 0) & ~facing[np.clip(tri_id, 0, None)]
    front = (tri_id >= 0) & facing[np.clip(tri_id, 0, None)]
    assert back.sum() > 100
    assert (tex[1, 3][back] == 0).all() and (tex[1, :3][:, back] == 0).all()
    assert (tex[1, 3][front] == 255).all()
    # yaw > 0: the subject turns to their right, so their right cheek (small u) turns away
    assert np.nonzero(back)[1].mean() < SIZE / 2


def test_batch_equals_one_by_one_with_mixed_image_sizes(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device)
        for h, w in ((180, 240), (320, 200), (97, 131))
    ]
    faces = [
        (_posed(0.0, 6.0, 120.0, 90.0), 0),
        (_posed(-30.0, 9.0, 100.0, 160.0), 1),
        (_posed(20.0, 4.0, 60.0, 50.0), 2),
        (_posed(10.0, 7.0, 30.0, 60.0), 0),  # partly outside its image
        (_posed(45.0, 5.0, 150.0, 250.0), 1),
    ]
    lms = torch.stack([f[0] for f in faces]).to(device)
    index = torch.tensor([f[1] for f in faces])
    sampler = TextureSampler(SIZE, device=device, chunk=2)
    batch = sampler(images, lms, index)
    for k, (lm, i) in enumerate(faces):
        one = TextureSampler(SIZE, device=device)([images[i]], lm[None].to(device), [0])
        assert torch.equal(batch[k], one[0]), k
    # the partly outside face has transparent texels where its texel positions leave the image
    pos, tri_id = _texel_positions(faces[3][0])
    outside = (tri_id >= 0) & ((pos[..., 0] < -1) | (pos[..., 1] < -1))
    assert outside.sum() > 50
    assert (batch[3, 3].cpu().numpy()[outside] == 0).all()


def test_errors() -> None:
    s = TextureSampler(SIZE)
    img = torch.zeros(3, 10, 10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="image_index"):
        s([img], torch.zeros(1, 468, 3), [1])
    with pytest.raises(ValueError, match=r"\(N, 468, 3\)"):
        s([img], torch.zeros(1, 400, 3), [0])
    assert s([img], torch.zeros(0, 468, 3), []).shape == (0, 4, SIZE, SIZE)
