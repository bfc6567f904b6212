"""Face mesh: ROI construction, rotated crops and their inverse, the predictor on synthetic and real faces."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from facefleet.detect import Detections, FaceDetector
from facefleet.mesh import (
    MeshPredictor,
    crop_rois,
    crop_to_image,
    roi_from_detections,
    roi_from_landmarks,
    rois_to_image,
)
from facefleet.mesh.sampling import ImagePack


def _kps(r_eye: tuple[float, float], l_eye: tuple[float, float]) -> Tensor:
    k = torch.zeros(1, 6, 2)
    k[0, 0] = torch.tensor(r_eye)
    k[0, 1] = torch.tensor(l_eye)
    return k


def test_roi_from_detections_square_scaled_rotated() -> None:
    boxes = torch.tensor([[100.0, 50.0, 180.0, 170.0]])  # 80 x 120
    roi = roi_from_detections(boxes, _kps((120, 90), (160, 90)))
    assert torch.allclose(roi, torch.tensor([[140.0, 110.0, 180.0, 180.0, 0.0]]))
    # left eye (image right) lower than the right eye: head rolled, positive rotation (clockwise on screen)
    roi = roi_from_detections(boxes, _kps((120, 80), (160, 120)))
    assert math.isclose(float(roi[0, 4]), math.pi / 4, rel_tol=1e-6)
    roi = roi_from_detections(boxes, _kps((160, 90), (120, 90)))  # upside down
    assert math.isclose(abs(float(roi[0, 4])), math.pi, rel_tol=1e-6)


def test_roi_from_landmarks_uses_eye_corners_and_box() -> None:
    lm = torch.zeros(1, 468, 3)
    lm[0, :, 0] = torch.linspace(10, 110, 468)
    lm[0, :, 1] = torch.linspace(20, 80, 468)
    lm[0, 33, :2] = torch.tensor([40.0, 50.0])
    lm[0, 263, :2] = torch.tensor([80.0, 50.0])
    roi = roi_from_landmarks(lm)
    assert torch.allclose(roi, torch.tensor([[60.0, 50.0, 150.0, 150.0, 0.0]]))


def _dot_image(h: int, w: int, x: float, y: float, sigma: float = 2.0) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    g = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) * 255
    return g.round().to(torch.uint8).expand(3, h, w).contiguous()


def _centroid(crop: Tensor) -> Tensor:
    """(3, S, S) -> (2,) intensity centroid in crop pixels (continuous coordinates)."""
    m = crop[0]
    s = m.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    return torch.stack([(m * xs).sum(), (m * ys).sum()]) / m.sum()


@pytest.mark.parametrize("rotation", [0.0, 0.4, -2.5])
def test_rotated_crop_round_trip(rotation: float, device: str) -> None:
    # two images of different sizes, three faces; each ROI contains a bright dot at a known pixel
    imgs = [_dot_image(300, 400, 250.3, 120.7).to(device), _dot_image(500, 260, 100.2, 330.9).to(device)]
    dots = torch.tensor([[250.3, 120.7], [100.2, 330.9], [250.3, 120.7]])
    roi = torch.tensor(
        [
            [240.0, 140.0, 120.0, 120.0, rotation],
            [120.0, 300.0, 200.0, 200.0, rotation],
            [260, 110, 60, 60, -rotation],
        ]
    ).to(device)
    idx = torch.tensor([0, 1, 0], device=device)
    crops = crop_rois(imgs, idx, roi, 192)
    assert crops.shape == (3, 3, 192, 192) and crops.device.type == device
    cen = torch.stack([_centroid(c) for c in crops.cpu()])
    back = crop_to_image(cen[:, None].to(device), roi, 192)[:, 0].cpu()
    assert torch.allclose(back, dots, atol=0.15), back - dots
    # the affine form agrees with the point mapping
    a = rois_to_image(roi).cpu()
    pts = torch.cat([cen / 192, torch.ones(3, 1)], 1)
    assert torch.allclose(torch.einsum("nij,nj->ni", a, pts), back, atol=1e-3)


class _DotNet:
    """Fake landmark net: every landmark at the crop's intensity centroid, z = +5 crop px, logit 3."""

    def __call__(self, x: Tensor) -> Sequence[Tensor]:
        b = x.shape[0]
        cen = torch.stack([_centroid(c) for c in x.float().cpu()])
        lm = torch.cat([cen, torch.full((b, 1), 5.0)], 1)[:, None].expand(b, 468, 3).reshape(b, 1, 1, 1404)
        return lm.to(x.device), torch.full((b, 1, 1, 1), 3.0, device=x.device)


def test_mesh_predictor_maps_back_through_the_crop() -> None:
    imgs = [_dot_image(300, 400, 250.3, 120.7), _dot_image(500, 260, 100.2, 330.9)]
    det = Detections(
        boxes=torch.tensor([[100.2 - 40, 330.9 - 30, 100.2 + 40, 330.9 + 30], [220.0, 90.0, 280.0, 150.0]]),
        keypoints=torch.cat([_kps((80, 320), (120, 335)), _kps((240, 110), (260, 108))]),
        scores=torch.tensor([0.9, 0.8]),
        image_index=torch.tensor([1, 0]),
        num_images=2,
    )
    for refine in (0, 1):
        res = MeshPredictor(net=_DotNet(), refine=refine, min_presence=0.96)(imgs, det)
        assert res.landmarks.shape == (2, 468, 3)
        assert torch.allclose(res.landmarks[0, :, :2], torch.tensor([100.2, 330.9]), atol=0.2)
        assert torch.allclose(res.landmarks[1, :, :2], torch.tensor([250.3, 120.7]), atol=0.2)
        # z: MediaPipe's +5 crop px (farther) -> -5 * roi side / 192 image px (larger = closer)
        assert torch.allclose(res.landmarks[:, 0, 2], -5 * res.roi[:, 2] / 192)
        assert torch.allclose(res.presence, torch.sigmoid(torch.tensor(3.0)).expand(2))
        assert res.keep.tolist() == [False, False] and res.image_index.tolist() == [1, 0]
    first = MeshPredictor(net=_DotNet(), refine=0)(imgs, det)
    assert torch.allclose(first.roi[0], torch.tensor([100.2, 330.9, 120, 120, float(first.roi[0, 4])]))
    empty = MeshPredictor(net=_DotNet())(imgs, det.select(torch.zeros(2, dtype=torch.bool)))
    assert empty.landmarks.shape == (0, 468, 3) and len(empty.filtered()) == 0


# ---------------------------------------------------------------------------------- real network
def test_astronaut_mesh(astronaut: np.ndarray) -> None:
    img = torch.from_numpy(astronaut).permute(2, 0, 1).contiguous()
    det = FaceDetector(model="short")([img])
    res = MeshPredictor()([img], det)
    assert res.landmarks.shape == (1, 468, 3) and bool(res.keep[0]) and float(res.presence[0]) > 0.9
    lm = res.landmarks[0]
    x0, y0, x1, y1 = det.boxes[0].tolist()
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
    assert (lm[:, 0] > cx - side).all() and (lm[:, 0] < cx + side).all()
    assert (lm[:, 1] > cy - side).all() and (lm[:, 1] < cy + side).all()
    # eye corners near the detector's eye keypoints; the nose tip (vertex 1) closer than the cheeks
    r_eye = lm[[33, 133], :2].mean(0)
    l_eye = lm[[263, 362], :2].mean(0)
    assert torch.linalg.norm(r_eye - det.keypoints[0, 0]) < 0.12 * side
    assert torch.linalg.norm(l_eye - det.keypoints[0, 1]) < 0.12 * side
    assert lm[1, 2] > lm[234, 2] + 0.1 * side and lm[1, 2] > lm[454, 2] + 0.1 * side
    # the same face in a batch tensor of two images (second mirrored) gives mirrored meshes
    batch = torch.stack([img, img.flip(-1)])
    det2 = FaceDetector(model="short")(batch)
    res2 = MeshPredictor(refine=0)(batch, det2)
    assert det2.counts() == [1, 1]
    mirrored = res2.landmarks[1].clone()
    mirrored[:, 0] = 512 - mirrored[:, 0]
    assert (mirrored[:, :2].mean(0) - res2.landmarks[0, :, :2].mean(0)).norm() < 3.0


def test_batched_equals_per_image_for_a_mixed_batch(astronaut: np.ndarray) -> None:
    """Several same-size images with two faces each plus one image of another size: detection, mesh
    and texture of the batch equal those of each image alone (the batched paths group by size)."""
    from facefleet.detect import FaceDetector
    from facefleet.texture import TextureSampler

    face = torch.from_numpy(astronaut).permute(2, 0, 1)[:, 20:300, 110:360]  # (3, 280, 250) her head
    small = torch.nn.functional.interpolate(face[None].float(), scale_factor=0.7, mode="bilinear")[0]
    small = small.round().clamp(0, 255).to(torch.uint8)
    images = []
    for k in range(3):
        canvas = torch.full((3, 420, 760), 40 + 30 * k, dtype=torch.uint8)
        canvas[:, 60 : 60 + 280, 30 + 20 * k : 280 + 20 * k] = face if k != 1 else face.flip(-1)
        canvas[:, 150 : 150 + small.shape[1], 450 : 450 + small.shape[2]] = small
        images.append(canvas)
    images.append(torch.from_numpy(astronaut).permute(2, 0, 1).contiguous())  # 512 x 512
    det, mesh, tex = FaceDetector(), MeshPredictor(), TextureSampler(64)
    d = det(images)
    m = mesh(images, d)
    t = tex(images, m.landmarks, m.image_index)
    assert d.counts() == [2, 2, 2, 1]
    for i, im in enumerate(images):
        sel = d.image_index == i
        di = det([im])
        mi = mesh([im], di)
        ti = tex([im], mi.landmarks, mi.image_index)
        assert torch.allclose(d.boxes[sel], di.boxes, atol=1e-3) and torch.allclose(d.scores[sel], di.scores)
        assert torch.allclose(m.landmarks[sel], mi.landmarks, atol=1e-2)
        assert (t[sel].int() - ti.int()).abs().max() <= 1


def test_sampling_same_for_channels_first_and_last_layouts(astronaut: np.ndarray, device: str) -> None:
    """Images decoded on the CPU are channels-last views of (H, W, 3) arrays; packing them as they lie
    (no copy to planes) samples exactly what channels-first packing and grid_sample do."""
    import torch.nn.functional as F

    from facefleet.detect.views import is_hwc, stack_images
    from facefleet.mesh.sampling import pack_images, sample_bilinear

    hwc = [
        torch.from_numpy(np.ascontiguousarray(astronaut[s:, s:])).permute(2, 0, 1).to(device) for s in (0, 7)
    ]
    chw = [im.contiguous() for im in hwc]
    assert all(is_hwc(im) for im in hwc) and not any(is_hwc(im) for im in chw)
    rng = np.random.default_rng(0)
    xy = torch.from_numpy(rng.uniform(-20, 530, (2, 500, 2)).astype(np.float32)).to(device)
    idx = torch.tensor([0, 1], device=device)
    far = torch.tensor([[[600.0, 100.0]] * 500, [[-50.0, -80.0]] * 500], device=device)  # outside the image
    for mode in ("border", "zeros"):
        a = sample_bilinear(pack_images(hwc), idx, xy, mode, regions=False)
        b = sample_bilinear(pack_images(chw), idx, xy, mode, regions=False)
        assert pack_images(hwc).hwc and not pack_images(chw).hwc
        assert torch.equal(a, b)
        for pts in (xy, xy[:, :50] * 0.1 + 100, far):  # the CPU region path: same samples
            for pack in (pack_images(hwc), pack_images(chw)):
                ref_pts = sample_bilinear(pack, idx, pts, mode, regions=False)
                assert torch.allclose(sample_bilinear(pack, idx, pts, mode), ref_pts, atol=1e-3)
        for i, im in enumerate(chw):
            h, w = im.shape[1:]
            # float64 reference: a float32 grid's round trip through [-1, 1] moves points that lie
            # on a pixel boundary next to a zero-padded border to the other side of it (seen on CUDA)
            p64 = xy[i].double()
            grid = torch.stack([p64[:, 0] / w * 2 - 1, p64[:, 1] / h * 2 - 1], -1)[None, None]
            ref = F.grid_sample(
                im[None].double(), grid, mode="bilinear", padding_mode=mode, align_corners=False
            )
            assert torch.allclose(a[i].double(), ref[0, :, 0], atol=1e-3)
    same = [hwc[0][:, :400, :400], hwc[1][:, :400, :400]]  # crops: strided views, still interleaved
    stacked = stack_images(same)
    assert all(is_hwc(im) for im in same) and stacked.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(stacked, torch.stack([im.contiguous() for im in same]))
    s4 = sample_bilinear(pack_images(stacked), idx, xy.clamp(0, 399), "border")
    c4 = sample_bilinear(pack_images(stacked.contiguous()), idx, xy.clamp(0, 399), "border")
    l4 = sample_bilinear(pack_images(same), idx, xy.clamp(0, 399), "border")
    assert torch.equal(s4, c4) and torch.equal(s4, l4)


def test_cpu_uint8_letterbox_matches_float_path(astronaut: np.ndarray) -> None:
    """The CPU letterbox resizes uint8 frames directly (fast path); it differs from the float resize by
    whole-level rounding only."""
    import torch.nn.functional as F

    from facefleet.detect.views import letterbox_pixels

    frame = torch.from_numpy(np.ascontiguousarray(np.tile(astronaut, (2, 3, 1))[:1000, :1500]))
    x = frame.permute(2, 0, 1)[None]
    fast = letterbox_pixels(x, 128)
    ref = F.interpolate(x.float(), size=(85, 128), mode="bilinear", align_corners=False, antialias=True) / 255
    assert fast.shape == (1, 3, 128, 128)
    top = (128 - 85) // 2
    assert (fast[:, :, top : top + 85] - ref).abs().max() <= 1.0 / 255 + 1e-6
    assert fast[:, :, :top].abs().max() == 0  # black letterbox bars


@pytest.mark.parametrize(
    ("h", "w", "n_out"), [(1080, 1920, 192), (1000, 1500, 85), (300, 40, 20), (90, 120, 128)]
)
def test_resize_matrix_is_the_antialiased_bilinear_resize(h: int, w: int, n_out: int) -> None:
    """The GPU letterbox resizes with two matrix products; their weights are exactly torch's
    antialiased (shrinking) or plain (enlarging) bilinear resize along each axis."""
    import torch.nn.functional as F

    from facefleet.detect.views import resize_matrix

    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 3, h, w)).double()
    nh, nw = n_out, max(1, round(n_out * w / h))
    ref = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)
    got = resize_matrix(h, nh) @ x @ resize_matrix(w, nw).t()
    assert torch.allclose(got, ref, atol=1e-9)
    padded = resize_matrix(h, nh, pad_before=3, total=nh + 5)
    assert padded[:3].abs().sum() == 0 and padded[3 + nh :].abs().sum() == 0
    assert torch.allclose(padded[3 : 3 + nh].sum(1), torch.ones(nh, dtype=torch.float64))


def test_matmul_letterbox_matches_interpolate(astronaut: np.ndarray) -> None:
    """The float16 matrix-product letterbox (the GPU path) against the float32 interpolate path."""
    from facefleet.detect.views import _letterbox_matmul, letterbox_pixels

    frame = torch.from_numpy(np.ascontiguousarray(np.tile(astronaut, (2, 3, 1))[:1000, :1500]))
    x = frame.permute(2, 0, 1)[None].contiguous()
    ref = letterbox_pixels(x.float(), 192)  # float input: the interpolate path
    got = _letterbox_matmul(x, 192)
    assert got.shape == ref.shape == (1, 3, 192, 192) and got.dtype == torch.float32
    assert (got - ref).abs().max() <= 1.5 / 255
    assert (got - ref).abs().mean() <= 0.1 / 255
    # several sizes from one column product: each as its own letterbox
    from facefleet.detect.views import _letterbox_matmuls

    small, big = _letterbox_matmuls(x, (128, 192))
    assert torch.equal(big, got) and small.shape == (1, 3, 128, 128)
    assert (small - letterbox_pixels(x.float(), 128)).abs().max() <= 1.5 / 255


def test_tile_letterboxes_from_block_matrix_products(astronaut: np.ndarray) -> None:
    """Tiles of a grid letterboxed by two block matrix products over whole frames (the GPU path of
    the detector's tiling) equal each tile letterboxed on its own, in tile-major order."""
    from facefleet.detect.views import letterbox_pixels, letterbox_tiles

    frame = torch.from_numpy(np.ascontiguousarray(np.tile(astronaut, (1, 2, 1))[:400, :700]))
    x = torch.stack([frame, frame.flip(1), frame.flip(0)]).permute(0, 3, 1, 2).contiguous()
    origins = [(0, 0), (300, 0), (420, 0), (0, 120), (420, 120), (300, 120)]  # any order, grid or not
    got = letterbox_tiles(x, origins, 280, 96, dtype=torch.float32, budget=2 * 3 * 400 * 700)  # 2 chunks
    assert got.shape == (len(origins) * 3, 3, 96, 96)
    ref = torch.cat([letterbox_pixels(x[:, :, y : y + 280, c : c + 280].float(), 96) for c, y in origins])
    assert (got - ref).abs().max() <= 1e-4
    # elsewhere than on CUDA without a dtype: tile by tile, the same views
    slow = letterbox_tiles(x, origins, 280, 96)
    assert slow.shape == got.shape and (slow - ref).abs().max() <= 1.5 / 255


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tile_letterboxes_on_cuda(astronaut: np.ndarray) -> None:
    from facefleet.detect.views import letterbox_pixels, letterbox_tiles

    frame = torch.from_numpy(np.ascontiguousarray(np.tile(astronaut, (3, 4, 1))[:1080, :1920]))
    x = torch.stack([frame, frame.flip(1)]).permute(0, 3, 1, 2).contiguous()
    origins = [(0, 0), (704, 189), (1408, 568)]
    got = letterbox_tiles(x.cuda(), origins, 512, 192).cpu()
    ref = torch.cat([letterbox_pixels(x[:, :, y : y + 512, c : c + 512].float(), 192) for c, y in origins])
    assert (got - ref).abs().max() <= 1.5 / 255 and (got - ref).abs().mean() <= 0.1 / 255
    # both detectors' whole-frame letterboxes from one pass (letterbox_sizes)
    from facefleet.detect.views import letterbox_sizes

    for size, out in zip((128, 192), letterbox_sizes(x.cuda(), (128, 192)), strict=True):
        ref = letterbox_pixels(x.float(), size)
        assert out.shape == ref.shape and (out.cpu() - ref).abs().max() <= 1.5 / 255


def _cuda_packs(astronaut: np.ndarray, seed: int) -> tuple[torch.Generator, list[ImagePack]]:
    """For the compiled-code tests on CUDA (skipped without Triton): a seeded generator and packs of two
    frames, planar and interleaved."""
    from facefleet.mesh import pack_images
    from facefleet.models import compile_available

    if not compile_available():
        pytest.skip("no Triton here")
    img = torch.from_numpy(astronaut).permute(2, 0, 1).cuda()
    planar = torch.stack([img, img.flip(2)])
    batches = (planar, planar.flip(2).contiguous(memory_format=torch.channels_last))
    return torch.Generator(device="cuda").manual_seed(seed), [pack_images(b) for b in batches]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_gather_matches_eager_on_cuda(astronaut: np.ndarray) -> None:
    """On CUDA the bilinear gather runs as torch.compile code by default: the same samples as the eager
    operations (float rounding aside) for both padding modes, both memory layouts and any point count."""
    from facefleet.mesh import sample_bilinear

    g, packs = _cuda_packs(astronaut, 3)
    cache: dict[str, object] = {}
    for pack in packs:
        for n, p in ((3, 1000), (17, 37)):
            xy = torch.rand(n, p, 2, generator=g, device="cuda") * 700 - 100  # also outside the image
            idx = torch.randint(0, 2, (n,), generator=g, device="cuda")
            for mode in ("border", "zeros"):
                ref = sample_bilinear(pack, idx, xy, mode, compiled=False, scale=0.5)
                got = sample_bilinear(pack, idx, xy, mode, compiled=True, scale=0.5, cache=cache)
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
    assert cache.get("fn") not in (None, False), "compilation failed and fell back to eager"


def test_fused_sampler_matches_the_gather_and_the_grid_points() -> None:
    """The form of the sampler that torch.compile fuses into one kernel (each tap a plain read; the crop
    grid's points computed from the affine inside it) gives the eager gather's samples, for both memory
    layouts and padding modes, points outside the images included, and crops in float16 differ by fp16
    rounding only. Run eagerly here: the compiled code computes the same operations."""
    from facefleet.mesh import sampling
    from facefleet.mesh.sampling import grid_points, pack_images, sample_bilinear, sample_grid

    g = torch.Generator().manual_seed(11)
    for hwc in (False, True):
        frames = torch.randint(0, 256, (3, 3, 70, 90), dtype=torch.uint8, generator=g)
        pack = pack_images(frames.contiguous(memory_format=torch.channels_last) if hwc else frames)
        assert pack.hwc == hwc
        idx = torch.tensor([0, 2, 1, 2, 0])
        xy = torch.rand(5, 200, 2, generator=g) * 120 - 15
        ang, sc = torch.rand(5, generator=g) * 6 - 3, torch.rand(5, generator=g) + 0.3
        m = torch.stack(
            [
                torch.stack([sc * ang.cos(), -sc * ang.sin()], 1),
                torch.stack([sc * ang.sin(), sc * ang.cos()], 1),
            ],
            1,
        )
        t = torch.rand(5, 2, generator=g) * 100 - 10
        affine = torch.cat([m[:, 0], t[:, :1], m[:, 1], t[:, 1:]], 1)
        for mode in ("border", "zeros"):
            border = mode == "border"
            ref = sample_bilinear(pack, idx, xy, mode, regions=False, compiled=False, scale=0.5)
            fused = sampling._sample_meta(pack.data, pack.meta, idx, xy, hwc, border, 0.5)
            torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-4)
            ref = sample_bilinear(pack, idx, grid_points(m, t, 13), mode, regions=False, compiled=False)
            eager = sample_grid(pack, idx, m, t, 13, mode, compiled=False)  # the CPU's region path
            torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-3)
            fused = sampling._grid_meta(
                pack.data, pack.meta, idx, affine, 13, hwc, border, 1.0, torch.float32
            )
            torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-3)
            half = sampling._grid_meta(
                pack.data, pack.meta, idx, affine, 13, hwc, border, 1 / 255, torch.float16
            )
            assert half.dtype == torch.float16 and half.shape == (5, 3, 169)
            torch.testing.assert_close(half.float(), ref / 255, rtol=0, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_crops_match_eager_on_cuda(astronaut: np.ndarray) -> None:
    """On CUDA the mesh crops are one compiled kernel in the network's precision: the eager crops, to
    fp16 rounding, for both padding modes and both layouts, 1 and many faces."""
    from facefleet.mesh.sampling import sample_grid

    g, packs = _cuda_packs(astronaut, 4)
    cache: dict[str, object] = {}
    for pack in packs:
        for n in (1, 40):
            m = torch.randn(n, 2, 2, generator=g, device="cuda") * 2
            t = torch.rand(n, 2, generator=g, device="cuda") * 600 - 50
            idx = torch.randint(0, 2, (n,), generator=g, device="cuda")
            for mode in ("border", "zeros"):
                ref = sample_grid(pack, idx, m, t, 192, mode, scale=1 / 255, compiled=False)
                got = sample_grid(
                    pack, idx, m, t, 192, mode, scale=1 / 255, dtype=torch.float16, compiled=True, cache=cache
                )
                assert got.dtype == torch.float16
                torch.testing.assert_close(got.float(), ref, rtol=0, atol=2e-3)
    assert cache.get("grid") not in (None, False), "compilation failed and fell back to eager"


def test_compiled_gather_compiles_once_per_layout() -> None:
    """After ``warm_up_gather`` no call recompiles (each took seconds, mid-run: the engine's first batch,
    a per-image loop's first single-face image): not one image or one face (torch specialises sizes 0
    and 1), not a batch that is a view into a decoder slot (torch guarded on the inputs' bases), not
    lists of images of several sizes. Made as the pipeline makes them (the graph is specialised to the
    grad mode and to inference tensors): images made outside inference mode, the calls in it. Counted
    with a compiler that only counts graphs (no C++ needed)."""
    import torch._dynamo

    from facefleet.mesh import pack_images, sample_bilinear, sampling
    from facefleet.mesh.sampling import sample_grid

    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        graphs.append(1)
        return gm.forward

    grids: list[int] = []

    def counting_grids(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        grids.append(1)
        return gm.forward

    torch._dynamo.reset()
    cache = {  # one owner's compile cache (a Reconstructor's), with counting compilers
        "fn": torch.compile(sampling._sample_meta, dynamic=True, backend=counting),
        "grid": torch.compile(sampling._grid_meta, dynamic=True, backend=counting_grids),
    }
    try:
        sampling.warm_up_gather("cpu", compiled=True, grid=("border", torch.float16), cache=cache)
        assert len(graphs) == 2 and len(grids) == 2  # one per memory layout
        g = torch.Generator().manual_seed(5)
        frames = torch.randint(0, 256, (4, 3, 64, 96), dtype=torch.uint8, generator=g)
        slot = torch.randint(0, 256, (200_000,), dtype=torch.uint8, generator=g)
        for hwc in (False, True):
            b = frames.contiguous(memory_format=torch.channels_last) if hwc else frames
            in_slot = slot[: 6 * 3 * 64 * 96].view(6, 3, 64, 96)
            if hwc:
                in_slot = slot[: 6 * 3 * 64 * 96].view(6, 64, 96, 3).permute(0, 3, 1, 2)
            for images, n, p, scale in (
                (b, 3, 100, 1 / 255.0), (b, 5, 300, 1.0), (b[:1], 1, 100, 1 / 255.0), (b, 1, 50, 1.0),
                (b[:1], 2, 100, 1 / 255.0), (b[:2], 2, 2, 1 / 255.0), (in_slot, 6, 6, 1 / 255.0),
                ([in_slot[0], in_slot[1][:, :50, :70]], 3, 9, 1.0), ([in_slot[2]], 1, 9, 1 / 255.0),
            ):  # fmt: skip
                with torch.inference_mode():
                    pack = pack_images(images)
                    idx = torch.randint(0, len(pack), (n,), generator=g)
                    xy = torch.rand(n, p, 2, generator=g) * 80 - 5
                    got = sample_bilinear(
                        pack, idx, xy, "border", scale=scale, compiled=True, regions=False, cache=cache
                    )
                    ref = sample_bilinear(pack, idx, xy, "border", scale=scale, compiled=False, regions=False)
                    m, t = torch.rand(n, 2, 2, generator=g) * 2, torch.rand(n, 2, generator=g) * 60
                    crops = sample_grid(
                        pack, idx, m, t, 192, "border", dtype=torch.float16, compiled=True, cache=cache
                    )
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
                assert crops.shape == (n, 3, 192 * 192) and crops.dtype == torch.float16
        assert len(graphs) == 2, "a call recompiled the gather"
        assert len(grids) == 2, "a call recompiled the crops' grid sampler"
    finally:
        torch._dynamo.reset()


def test_letterbox_cast_compiles_once() -> None:
    """The letterboxes' uint8 -> float16 cast (compiled on CUDA: torch's own cast kernel is not
    vectorised) is compiled by the warm-up and then serves every chunk of frames and every frame size,
    slices of a decoder slot included, at the start of their memory or after it, without recompiling;
    the same values as torch's cast. Counted with a compiler that only counts graphs (no C++ needed)."""
    import torch._dynamo

    from facefleet.detect import views

    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        graphs.append(1)
        return gm.forward

    torch._dynamo.reset()
    cache = {"half": torch.compile(views._half, dynamic=True, backend=counting)}  # one owner's cache
    try:
        views.warm_up_letterbox("cpu", compiled=True, cache=cache)
        assert len(graphs) == 2  # chunks at offset 0 and after it
        g = torch.Generator().manual_seed(2)
        frames = torch.randint(0, 256, (12, 3, 40, 60), dtype=torch.uint8, generator=g)
        slot = torch.randint(0, 256, (100_000,), dtype=torch.uint8, generator=g)
        batch = slot[: 4 * 3 * 40 * 60].view(4, 3, 40, 60)  # a decoded batch at the start of its slot
        for x in (
            frames, frames[1:], frames[3:5], frames[7:8], frames[:5], batch, batch[:3], batch[1:],
            slot[7_200 : 7_200 + 2 * 3 * 30 * 50].view(2, 3, 30, 50),
        ):  # fmt: skip
            with torch.inference_mode():
                got = views.to_half(x, compiled=True, cache=cache)
            assert got.dtype == torch.float16 and torch.equal(got, x.half())
        assert len(graphs) == 2, "a call recompiled the cast"
    finally:
        torch._dynamo.reset()


def test_a_compiler_failure_switches_off_one_owner_only() -> None:
    """A failed ``torch.compile`` turns the compiled path off in its owner's cache (with one warning), not
    process-wide: another owner (another Reconstructor) tries again, and succeeds when it can."""
    from facefleet.models import call_compiled

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no compiler here")

    first: dict[str, object] = {"k": broken}  # a "compiled" function that fails when called
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        assert call_compiled(first, "k", broken, [torch.ones(3)], "test") is None
    assert first["k"] is False
    assert call_compiled(first, "k", broken, [torch.ones(3)], "test") is None  # off, no second warning
    second: dict[str, object] = {"k": lambda x: x * 2}  # another owner's cache is not affected
    assert torch.equal(call_compiled(second, "k", broken, [torch.ones(3)], "test"), torch.full((3,), 2.0))


def test_mesh_rejects_detections_of_other_images() -> None:
    """Detections made by hand (no image count) are checked against the images (a batch tensor or a
    list); the detector's own skip the check (it is a device sync)."""
    from facefleet.detect import Detections
    from facefleet.mesh import MeshPredictor

    det = Detections(
        torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.zeros(1, 6, 2), torch.ones(1), torch.tensor([3])
    )
    mesher = MeshPredictor(device="cpu")
    frames = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    for images in (frames, list(frames)):
        with pytest.raises(ValueError, match="refer to image 3 of 2 images"):
            mesher(images, det)
