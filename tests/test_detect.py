"""Face detection: anchors, decoding, weighted NMS, letterbox mapping, and the detector end to end."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from facefleet.detect import (
    DETECTOR_SPECS,
    FaceDetector,
    box_iou,
    decode_boxes,
    letterbox,
    sigmoid_scores,
    ssd_anchors,
    tile_grid,
    tile_layout,
    weighted_nms,
)


# ------------------------------------------------------------------------------------------- anchors
def test_anchor_counts_and_layout() -> None:
    short = ssd_anchors(128, (8, 16, 16, 16), True)
    full = ssd_anchors(192, (4,), False)
    assert short.shape == (896, 4) and full.shape == (2304, 4)
    assert DETECTOR_SPECS["short"].num_anchors == 896 and DETECTOR_SPECS["full"].num_anchors == 2304
    assert torch.all(short[:, 2:] == 1) and torch.all(full[:, 2:] == 1)  # fixed anchor size
    # stride 8: 16x16 cells, 2 anchors each, row-major; stride 16: 8x8 cells, 6 anchors each
    assert torch.allclose(short[0, :2], torch.tensor([0.5 / 16, 0.5 / 16]))
    assert torch.equal(short[0], short[1])
    assert torch.allclose(short[2, :2], torch.tensor([1.5 / 16, 0.5 / 16]))
    assert torch.allclose(short[32, :2], torch.tensor([0.5 / 16, 1.5 / 16]))
    assert torch.allclose(short[512:518, :2], torch.tensor([[0.5 / 8, 0.5 / 8]]).expand(6, 2))
    assert torch.allclose(short[-1, :2], torch.tensor([7.5 / 8, 7.5 / 8]))
    assert torch.allclose(full[1, :2], torch.tensor([1.5 / 48, 0.5 / 48]))
    assert torch.allclose(full[-1, :2], torch.tensor([47.5 / 48, 47.5 / 48]))


def _encode(boxes: Tensor, kps: Tensor, anchors: Tensor, size: int) -> Tensor:
    """Inverse of MediaPipe's decoding, for building synthetic raw outputs: (A, 4), (A, 6, 2) -> (A, 16)."""
    ax, ay, aw, ah = anchors.unbind(-1)
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = boxes[:, 2:] - boxes[:, :2]
    raw = torch.zeros(anchors.shape[0], 16)
    raw[:, 0] = (c[:, 0] - ax) * size / aw
    raw[:, 1] = (c[:, 1] - ay) * size / ah
    raw[:, 2] = wh[:, 0] * size / aw
    raw[:, 3] = wh[:, 1] * size / ah
    raw[:, 4::2] = (kps[..., 0] - ax[:, None]) * size / aw[:, None]
    raw[:, 5::2] = (kps[..., 1] - ay[:, None]) * size / ah[:, None]
    return raw


def test_decode_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    anchors = ssd_anchors(128, (8, 16, 16, 16), True)
    lo = torch.rand(896, 2, generator=g) * 0.6
    boxes = torch.cat([lo, lo + 0.1 + torch.rand(896, 2, generator=g) * 0.3], 1)
    kps = torch.rand(896, 6, 2, generator=g)
    raw = _encode(boxes, kps, anchors, 128)
    # the raw value itself: x_center = raw / 128 * anchor_w + anchor_x
    assert torch.allclose(raw[5, 0] / 128 + anchors[5, 0], (boxes[5, 0] + boxes[5, 2]) / 2)
    b, k = decode_boxes(raw[None], anchors, 128)
    assert b.shape == (1, 896, 4) and k.shape == (1, 896, 6, 2)
    assert torch.allclose(b[0], boxes, atol=1e-5) and torch.allclose(k[0], kps, atol=1e-5)


def test_sigmoid_scores_clipped() -> None:
    s = sigmoid_scores(torch.tensor([[[1e6], [-1e6], [0.0]]]))
    assert s.shape == (1, 3)
    assert s[0, 0] == 1.0 and s[0, 1] == torch.sigmoid(torch.tensor(-100.0)) and s[0, 2] == 0.5
    assert torch.isfinite(s).all()


# ---------------------------------------------------------------------------------------------- NMS
def test_weighted_nms_blends_clusters_and_keeps_disjoint() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # cluster A seed (0.9)
            [1.0, 1.0, 11.0, 11.0],  # A member (0.6), IoU 0.68
            [50.0, 50.0, 60.0, 60.0],  # B, alone (0.8)
            [2.0, 0.0, 12.0, 10.0],  # A member (0.3)
            [0.0, 0.0, 10.0, 10.0],  # same box but another image (0.5)
            [20.0, 0.0, 30.0, 10.0],  # C, touches nothing (0.7)
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.8, 0.3, 0.5, 0.7])
    groups = torch.tensor([0, 0, 0, 0, 1, 0])
    kps = boxes[:, None, :2].repeat(1, 6, 1) + torch.arange(6.0)[None, :, None]
    b, k, s, gi = weighted_nms(boxes, kps, scores, groups, 0.3, 10)
    assert gi.tolist() == [0, 0, 0, 1]
    assert torch.allclose(s, torch.tensor([0.9, 0.8, 0.7, 0.5]))
    w = torch.tensor([0.9, 0.6, 0.3])
    expect = (boxes[[0, 1, 3]] * w[:, None]).sum(0) / w.sum()
    assert torch.allclose(b[0], expect) and torch.allclose(
        k[0], (kps[[0, 1, 3]] * w[:, None, None]).sum(0) / w.sum()
    )
    assert torch.equal(b[1], boxes[2]) and torch.equal(b[2], boxes[5]) and torch.equal(b[3], boxes[4])
    # max per group: only the best seeds
    b2, _, s2, g2 = weighted_nms(boxes, kps, scores, groups, 0.3, 1)
    assert g2.tolist() == [0, 1] and torch.allclose(s2, torch.tensor([0.9, 0.5]))
    assert torch.allclose(b2[0], expect)
    # a threshold above every IoU keeps all candidates unchanged
    b3, _, _, _ = weighted_nms(boxes, kps, scores, groups, 0.99, 10)
    assert b3.shape[0] == 6
    # empty input
    e = weighted_nms(boxes[:0], kps[:0], scores[:0], groups[:0])
    assert e[0].shape == (0, 4) and e[1].shape == (0, 6, 2)


def test_weighted_nms_chain_is_greedy() -> None:
    # b overlaps a and c, a and c do not overlap: a (best) absorbs b, c stays alone (MediaPipe's greedy order)
    boxes = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10], [8.0, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, _, s, _ = weighted_nms(boxes, torch.zeros(3, 6, 2), scores, torch.zeros(3, dtype=torch.long), 0.3, 10)
    assert torch.allclose(s, torch.tensor([0.9, 0.7]))


def _nms_reference(boxes: torch.Tensor, kps: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                   iou: float, most: int) -> list[tuple[int, float, list[float]]]:  # fmt: skip
    """Weighted NMS one image and one seed at a time, in float64: (group, score, box + keypoints)."""
    out = []
    for gid in sorted(set(groups.tolist())):
        idx = sorted((i for i in range(len(scores)) if groups[i] == gid), key=lambda i: -float(scores[i]))
        free, seeds = list(idx), 0
        while free and seeds < most:
            seed = free[0]
            ious = box_iou(boxes[seed, None], boxes[free]).squeeze(0).tolist()
            members = [j for j, v in zip(free, ious, strict=True) if j == seed or v > iou]
            free = [j for j in free if j not in members]
            w = scores[members].double()
            vals = torch.cat([boxes[members], kps[members].flatten(1)], 1).double()
            out.append((gid, float(scores[seed]), ((vals * w[:, None]).sum(0) / w.sum()).tolist()))
            seeds += 1
    return out


def test_weighted_nms_equals_a_per_image_loop() -> None:
    """Many images of random overlapping candidates at once: the same detections, in the same order, and
    the same weighted means (summed per seed in float64, in one order, whatever the device) as one image
    and one seed at a time."""
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        m = int(torch.randint(1, 120, (1,), generator=g))
        c = torch.rand(m, 2, generator=g) * 300
        wh = torch.rand(m, 2, generator=g) * 60 + 10
        boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
        kps = torch.rand(m, 6, 2, generator=g) * 300
        scores = torch.rand(m, generator=g)
        groups = torch.randint(0, 5, (m,), generator=g)
        most = 1 + trial % 7
        b, k, s, gi = weighted_nms(boxes, kps, scores, groups, 0.3, most)
        ref = _nms_reference(boxes, kps, scores, groups, 0.3, most)
        assert gi.tolist() == [r[0] for r in ref] and s.tolist() == [r[1] for r in ref]
        got = torch.cat([b, k.flatten(1)], 1).double()
        assert torch.allclose(got, torch.tensor([r[2] for r in ref], dtype=torch.float64), atol=1e-4)


# ---------------------------------------------------------------------------------- letterbox/tiles
@pytest.mark.parametrize("hw", [(90, 200), (300, 120), (64, 64), (40, 50)])
def test_letterbox_maps_back_to_source_pixels(hw: tuple[int, int]) -> None:
    h, w = hw
    img = torch.zeros(1, 3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = w // 4, h // 3, w // 4 + w // 5, h // 3 + h // 4
    img[..., y0:y1, x0:x1] = 255
    out, tf = letterbox(img, 128)
    assert out.shape == (1, 3, 128, 128) and float(out.min()) >= 0 and float(out.max()) <= 1
    m = out[0, 0]
    ys, xs = torch.meshgrid(torch.arange(128.0) + 0.5, torch.arange(128.0) + 0.5, indexing="ij")
    cen = torch.stack([(m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()]) / 128
    back = tf.to_pixels(cen[None])[0]
    assert torch.allclose(
        back, torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2]), atol=0.05 * max(h, w) / 128 + 0.01
    )
    # the content area of the letterboxed square maps onto the whole image
    full, tf2 = letterbox(torch.full((1, 3, h, w), 255, dtype=torch.uint8), 128)
    ys_in, xs_in = torch.nonzero(full[0, 0] > 0.5, as_tuple=True)
    ext = torch.tensor([[[xs_in.min(), ys_in.min()], [xs_in.max() + 1, ys_in.max() + 1]]]) / 128
    assert torch.allclose(tf2.to_pixels(ext)[0], torch.tensor([[0.0, 0.0], [w, h]]), atol=1e-3)


def test_tile_grid_cores_partition_the_image() -> None:
    starts, lo, hi = tile_grid(1600, 512, 128)
    assert starts[0] == 0 and starts[-1] == 1600 - 512
    assert all(b - a <= 512 - 128 for a, b in itertools.pairwise(starts))
    assert lo[0] == -math.inf and hi[-1] == math.inf and all(a == b for a, b in zip(hi, lo[1:], strict=False))
    for s, a, b in zip(
        starts, lo, hi, strict=True
    ):  # an object of side <= overlap centred in a core fits in the tile
        assert max(a, 64.0) - 64 >= s - 1e-6 and min(b, 1600.0 - 64) + 64 <= s + 512 + 1e-6
    assert tile_grid(400, 512, 128) == ([0], [-math.inf], [math.inf])


# --------------------------------------------------------------------- detector with a synthetic net
class _OneFaceNet:
    """Fake BlazeFace: reports one face where the input is bright (white square), score logit 5."""

    def __init__(self, kind: str) -> None:
        spec = DETECTOR_SPECS[kind]
        self.size = spec.input_size
        self.anchors = ssd_anchors(spec.input_size, spec.strides, spec.interpolated_anchor)
        self.calls = 0

    def __call__(self, x: Tensor) -> Sequence[Tensor]:
        self.calls += 1
        b = x.shape[0]
        regs = torch.zeros(b, self.anchors.shape[0], 16)
        logits = torch.full((b, self.anchors.shape[0], 1), -10.0)
        for i in range(b):
            mask = x[i, 0] > 0.5  # input in [-1, 1]
            if not mask.any():
                continue
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]]) / self.size
            kps = torch.stack(
                [box[0, :2] + (box[0, 2:] - box[0, :2]) * f for f in torch.linspace(0.2, 0.8, 6)]
            )
            a = int(torch.argmin(((self.anchors[:, :2] - (box[0, :2] + box[0, 2:]) / 2) ** 2).sum(1)))
            regs[i, a] = _encode(box, kps[None], self.anchors[a : a + 1], self.size)[0]
            logits[i, a] = 5.0
        return regs, logits


def _square_image(h: int, w: int, box: tuple[int, int, int, int]) -> Tensor:
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, box[1] : box[3], box[0] : box[2]] = 255
    return img


@pytest.mark.parametrize("kind", ["short", "full"])
def test_detector_maps_faces_back_to_original_pixels(kind: str, device: str) -> None:
    specs = [
        ((300, 500), (100, 60, 180, 140)),
        ((240, 120), (20, 100, 80, 160)),
        ((700, 900), (400, 200, 600, 400)),
    ]
    imgs = [_square_image(h, w, b).to(device) for (h, w), b in specs]
    net = _OneFaceNet(kind)
    det = FaceDetector(
        device=device, model=kind, net=lambda x: [t.to(x.device) for t in net(x.cpu())], tile=False
    )
    out = det(imgs)
    assert out.boxes.device.type == device and out.image_index.tolist() == [0, 1, 2]
    tol = [max(h, w) / DETECTOR_SPECS[kind].input_size * 1.5 for (h, w), _ in specs]
    for j, ((_, _), b) in enumerate(specs):
        got = out.boxes[j].cpu()
        if kind == "full":  # full-range boxes are mapped to the short-range convention
            c = (got[:2] + got[2:]) / 2
            c[1] -= (got[3] - got[1]) * 0.043
            half = (got[2:] - got[:2]) / 2 * 1.067
            got = torch.cat([c - half, c + half])
        assert torch.allclose(got, torch.tensor(b, dtype=torch.float32), atol=tol[j]), (j, got, b)
    assert torch.allclose(out.scores.cpu(), torch.sigmoid(torch.tensor(5.0)).expand(3))
    assert out.keypoints.shape == (3, 6, 2) and out.counts() == [1, 1, 1]
    # a (B, 3, H, W) batch gives the same as the list of its images
    batch = torch.stack([imgs[0], imgs[0].flip(-1)])
    ob = det(batch)
    ol = det(list(batch.unbind(0)))
    assert torch.allclose(ob.boxes, ol.boxes) and ob.image_index.tolist() == [0, 1]
    assert torch.allclose(ob.boxes[1, [0, 2]], 500 - ob.boxes[0, [2, 0]], atol=1e-3)


def test_detector_min_score_and_max_faces() -> None:
    net = _OneFaceNet("short")
    img = _square_image(200, 200, (50, 50, 120, 120))
    assert len(FaceDetector(model="short", net=net, min_score=0.999)([img])) == 0
    assert len(FaceDetector(model="short", net=net, max_faces=0)([img])) == 0
    assert len(FaceDetector(model="short", net=net)([img, torch.zeros_like(img)])) == 1
    with pytest.raises(ValueError, match="uint8"):
        FaceDetector(model="short", net=net)([img.float()])
    # a (B, 3, H, W) batch is validated once, not image by image: the same errors
    with pytest.raises(ValueError, match="uint8"):
        FaceDetector(model="short", net=net)(img[None].float())
    with pytest.raises(ValueError, match="empty image"):
        FaceDetector(model="short", net=net)(img[None, :, :0])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FaceDetector(model="short", net=net)(img[None, :2])
    with pytest.raises(ValueError, match="model"):
        FaceDetector(model="tiny")
    with pytest.raises(ValueError, match="auto"):
        FaceDetector(model="auto", net=net)


def test_tiles_find_a_small_face_in_a_large_image() -> None:
    nets = {"short": _OneFaceNet("short"), "full": _OneFaceNet("full")}
    img = _square_image(1500, 2000, (1300, 900, 1330, 930))  # 30 px "face" in a 2000 px image
    # the fake net sees the dot in the whole-image view too; the tile view gives the sharper box
    out = FaceDetector(model="auto", net=nets, tile_threshold=768)([img])
    assert len(out) == 1
    c = (out.boxes[0, :2] + out.boxes[0, 2:]) / 2
    assert torch.allclose(c, torch.tensor([1315.0, 915.0]), atol=6)
    assert nets["full"].calls >= 1
    det = FaceDetector(model="full", net=nets["full"], tile_threshold=768)
    side, overlap, tiles = det._tiles(1500, 2000)
    assert len(tiles) > 1 and overlap >= side // 4


@pytest.mark.parametrize("max_tiles", [3, 4, 5, 6])
@pytest.mark.parametrize(
    "hw", [(1080, 1920), (1920, 1080), (3024, 4032), (2000, 3000), (720, 1280), (900, 1000)]
)
def test_tile_grid_honours_max_tiles_with_its_overlap(hw: tuple[int, int], max_tiles: int) -> None:
    """At most ``max_tiles`` tiles along each side, the overlap counted (a side of ``long / max_tiles``
    leaving the overlap out cut 7 x 4 tiles on a 1080p frame for ``max_tiles=4``); tiles of at least
    ``tile_size``, overlapping by at least the whole-image views' smallest face (``long / 8``), and
    covering the image."""
    h, w = hw
    det = FaceDetector(model="full", net=lambda x: x, max_tiles=max_tiles)
    side, overlap, tiles = det._tiles(h, w, threshold=768)
    assert tiles and side >= min(512, h, w) and overlap >= max(h, w) / 8 - 1 and overlap >= side // 4
    xs = sorted({t[0] for t in tiles})
    ys = sorted({t[1] for t in tiles})
    assert len(tiles) == len(xs) * len(ys) and max(len(xs), len(ys)) <= max_tiles
    assert xs[0] == 0 and xs[-1] + side == w and ys[0] == 0 and ys[-1] + side == h
    steps = [b - a for a, b in itertools.pairwise(xs)] + [b - a for a, b in itertools.pairwise(ys)]
    assert all(step <= side - overlap for step in steps)
    assert tile_layout(h, w, 512, max_tiles) == (side, overlap)


def test_default_tiles_of_a_1080p_frame_and_a_phone_photo() -> None:
    """The default grid: 6 x 3 tiles of a 1920x1080 frame (about ``tile_size``: 520 px), 6 x 5 of a
    4032x3024 photo."""
    det = FaceDetector(model="full", net=lambda x: x)
    side, _, tiles = det._tiles(1080, 1920, threshold=768)
    assert (len(tiles), side) == (18, 520)
    assert len(det._tiles(3024, 4032)[2]) == 30


def test_tile_candidates_are_flagged_in_every_tile_column() -> None:
    """Candidates found on tiles are marked as such (only they may be dropped as a part of a larger
    head), the first row and column of tiles included, whose cores reach out to infinity."""
    net = _OneFaceNet("full")
    det = FaceDetector(model="full", net=net, tile_threshold=768)
    for box in [(60, 60, 90, 90), (60, 1300, 90, 1330), (1800, 60, 1830, 90), (1300, 900, 1330, 930)]:
        img = _square_image(1500, 2000, box)
        got = det._candidates("full", det._groups([img], None), whole=None, tile_threshold=768)
        assert got is not None and len(got[0]) >= 1, box
        assert bool(got[4].all()), box  # from a tile, every one


# --------------------------------------------------------------------------------- real networks
@pytest.fixture(scope="module")
def astronaut_t(astronaut: np.ndarray) -> Tensor:
    return torch.from_numpy(astronaut).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("model", ["auto", "short", "full"])
def test_astronaut_one_face(astronaut_t: Tensor, model: str) -> None:
    out = FaceDetector(model=model)([astronaut_t])
    assert len(out) == 1 and out.num_images == 1
    x0, y0, x1, y1 = out.boxes[0].tolist()
    assert 160 < x0 < 195 and 60 < y0 < 100 and 255 < x1 < 290 and 160 < y1 < 195  # her face
    r_eye, l_eye, nose = out.keypoints[0, :3].tolist()
    assert 195 < r_eye[0] < 212 and 93 < r_eye[1] < 110  # subject's right eye, on the image left
    assert 240 < l_eye[0] < 256 and 98 < l_eye[1] < 115
    assert r_eye[0] < nose[0] < l_eye[0] and nose[1] > r_eye[1]
    assert out.scores[0] > 0.8


def test_list_of_sizes_and_batch_tensor(astronaut_t: Tensor) -> None:
    det = FaceDetector(model="auto")
    small = torch.nn.functional.interpolate(
        astronaut_t[None].float(), scale_factor=0.5, mode="bilinear", antialias=True
    )
    small = small.round().clamp(0, 255).to(torch.uint8)[0]
    wide = torch.zeros(3, 512, 900, dtype=torch.uint8)
    wide[:, :, 300:812] = astronaut_t
    out = det([astronaut_t, small, wide])
    assert out.counts() == [1, 1, 1]
    b = out.boxes
    assert torch.allclose(b[1] * 2, b[0], atol=8) and torch.allclose(
        b[2] - torch.tensor([300.0, 0, 300, 0]), b[0], atol=3
    )
    ob = det(torch.stack([astronaut_t, astronaut_t.flip(-1)]))
    assert ob.counts() == [1, 1]
    assert torch.allclose(ob.boxes[0], b[0], atol=1e-3)
    assert abs((ob.boxes[1, 0] + ob.boxes[1, 2]) - (1024 - b[0, 0] - b[0, 2])) < 6  # mirrored face


def _litert_net(name: str) -> object:
    from facefleet.models import model_path

    interp_mod = pytest.importorskip("ai_edge_litert.interpreter")
    it = interp_mod.Interpreter(model_path=str(model_path(name)))
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = sorted(it.get_output_details(), key=lambda d: d["index"])

    def run(x: Tensor) -> list[Tensor]:
        res: list[list[np.ndarray]] = [[] for _ in outs]
        for xi in x.permute(0, 2, 3, 1).float().cpu().numpy():
            it.set_tensor(inp, xi[None].astype(np.float32))
            it.invoke()
            for r, d in zip(res, outs, strict=True):
                r.append(it.get_tensor(d["index"]))
        t = [torch.from_numpy(np.concatenate(r)) for r in res]
        return sorted(t, key=lambda a: -a.shape[-1])  # regressors (.., 16) first, scores (.., 1)

    return run


def test_torch_port_matches_litert_end_to_end(astronaut_t: Tensor) -> None:
    ref = FaceDetector(model="short", net=_litert_net("face_detection_short_range"))([astronaut_t])
    out = FaceDetector(model="short")([astronaut_t])
    assert len(ref) == len(out) == 1
    assert torch.allclose(out.boxes, ref.boxes, atol=0.5) and torch.allclose(
        out.keypoints, ref.keypoints, atol=0.5
    )
    assert torch.allclose(out.scores, ref.scores, atol=1e-3)


def test_tiling_policy_crowds_and_very_large_images_only() -> None:
    """1080p frames with a near face are not tiled (speed); a small, distant face in one triggers the
    tiles (crowds); images over ``tile_threshold`` (phone photos) are always tiled."""
    near = _square_image(1080, 1920, (800, 300, 1100, 600))  # 300 px face: 16 % of the long side
    far = _square_image(1080, 1920, (1500, 700, 1560, 760))  # 60 px face: 3 %
    phone = _square_image(3024, 4032, (1000, 1000, 1900, 1900))
    for img, tiled in ((near, False), (far, True), (phone, True)):
        nets = {"short": _OneFaceNet("short"), "full": _OneFaceNet("full")}
        out = FaceDetector(model="auto", net=nets)([img])
        assert len(out) == 1
        assert nets["full"].calls == (2 if tiled else 1)  # one call for whole images, one for all tiles
    nets = {"short": _OneFaceNet("short"), "full": _OneFaceNet("full")}
    FaceDetector(model="auto", net=nets, crowd_face_fraction=0.0)([far])
    assert nets["full"].calls == 1


def test_crowd_rule_tiles_distant_faces_and_groups_not_single_portraits() -> None:
    """Which 1280-px images get tiles, from their whole-image candidates: a 60 px face (5 %) yes;
    one 100 px face (8 %, several overlapping candidates of it) no; two 100 px faces side by side
    (a group photo) yes; two 300 px faces no."""
    det = FaceDetector(model="auto", net={"short": _OneFaceNet("short"), "full": _OneFaceNet("full")})

    def box(x: float, y: float, s: float) -> list[float]:
        return [x, y, x + s, y + s]

    boxes = torch.tensor(
        [
            box(100, 100, 60),  # image 0: distant face
            *(box(500, 300, 100), box(505, 302, 98), box(498, 296, 104)),  # image 1: one face, 3 candidates
            *(box(300, 300, 100), box(600, 320, 100)),  # image 2: two mid-size faces
            *(box(100, 100, 300), box(600, 100, 300)),  # image 3: two near faces
        ]
    )
    idx = torch.tensor([0, 1, 1, 1, 2, 2, 3, 3])
    crowded = det._crowded(boxes, idx, torch.full((5,), 1280.0))
    assert crowded.tolist() == [True, False, True, False, False]  # image 4: no candidate
    det.group_face_fraction = 0.0
    assert det._crowded(boxes, idx, torch.full((5,), 1280.0)).tolist() == [True, False, False, False, False]


def test_crowd_rule_and_final_selection_without_boolean_selections() -> None:
    """The crowd rule's masked reductions (no selection that waits for the device) decide as a per-image
    loop over the faces does, and the final sort and per-image limit of only the kept detections equals
    selecting them first."""
    from facefleet.detect.detections import Detections
    from facefleet.detect.detections import finish as _finish

    det = FaceDetector.__new__(FaceDetector)  # the rule needs only its two fractions
    det.crowd_face_fraction, det.group_face_fraction = 0.07, 0.12
    g = torch.Generator().manual_seed(0)
    crowded = 0
    for _ in range(300):
        n, m = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(0, 12, (1,), generator=g))
        xy, wh = torch.rand(m, 2, generator=g) * 1500, torch.rand(m, 1, generator=g) * 300 + 1
        boxes, idx = torch.cat([xy, xy + wh], 1), torch.randint(0, n, (m,), generator=g)
        got = det._crowded(boxes, idx, torch.full((n,), 1920.0)).tolist()
        for i in range(n):
            sides = [float(wh[j]) for j in range(m) if int(idx[j]) == i]
            centres = [(xy[j] + wh[j] / 2).tolist() for j in range(m) if int(idx[j]) == i]
            small = [k for k, s in enumerate(sides) if s / 1920 < 0.12]
            group = bool(small) and max(
                max(centres[k][a] for k in small) - min(centres[k][a] for k in small) for a in (0, 1)
            ) > max(sides[k] for k in small)
            assert got[i] == (any(s / 1920 < 0.07 for s in sides) or group)
            crowded += got[i]
        scores = (torch.rand(m, generator=g) * 4).round() / 4  # ties
        d = Detections(boxes, torch.rand(m, 6, 2, generator=g), scores, idx, n)
        keep = torch.rand(m, generator=g) > 0.3
        a, b = _finish(d, 2, n, keep=keep), _finish(d.select(keep), 2, n)
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.image_index, b.image_index)
    assert crowded > 50  # the rule fired often enough to be tested
