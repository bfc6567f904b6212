"""The "MediaPipe runtime on CPU" baseline: the official LiteRT interpreter running the same MediaPipe
TFLite models, one interpreter set per process, one process per CPU core.

Per image it does the work facefleet does with the same model settings (:class:`BaselineSettings`, the
names of ``[model]`` / ``--detector`` / ``--refine``): decode (Pillow, EXIF orientation), the detector
models of ``detector`` on the whole image ("auto": short- and full-range on every image, their boxes
merged by NMS; "short" or "full": that one model), then per face a rotated 192x192 crop of the full
image and the 468-point mesh, plus ``refine`` further mesh passes each on the ROI of the previous
pass's landmarks, the points mapped back to image pixels. Pre/post-processing is plain numpy following
MediaPipe's graph settings (SSD anchors, sigmoid scores, NMS, 1.5x ROI rotated by the eye line). The
one part of facefleet's work it leaves out: the full-range tiles of large or crowded images (on 1080p
frames, images with a small or several faces), so on such images it does less work than the engine.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from facefleet.detect import FaceDetector, tile_grid, tile_layout

__all__ = ["BaselineSettings", "LiteFace", "LiteRTFaceMesh", "LiteRTRun", "run_litert_pool"]

DETECTORS = ("auto", "short", "full")


@dataclass(frozen=True)
class BaselineSettings:
    """The model settings the baseline shares with facefleet (same names and defaults as its ``[model]``).

    detector: "auto" (both detector models on every image), "short" or "full".
    refine: extra mesh passes per face, each on the ROI of the previous pass's landmarks.
    min_score: detector score threshold. min_presence: faces whose mesh presence is lower are dropped.
    max_faces: at most this many faces per image (highest detector scores).
    """

    detector: str = "auto"
    refine: int = 2
    min_score: float = 0.5
    min_presence: float = 0.5
    max_faces: int = 16

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.refine < 0:
            raise ValueError(f"refine must be at least 0, got {self.refine}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The detector models run on every image."""
        return ("short", "full") if self.detector == "auto" else (self.detector,)

    def label(self) -> str:
        return f"{self.detector}, refine {self.refine}"


def ssd_anchors(size: int, strides: list[int], per_cell: list[int]) -> np.ndarray:
    """(A, 2) anchor centres in [0, 1] (MediaPipe SsdAnchorsCalculator with fixed anchor size)."""
    out = []
    for stride, k in zip(strides, per_cell, strict=True):
        n = math.ceil(size / stride)
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        c = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(c, k, axis=0))
    return np.concatenate(out).astype(np.float32)


# short range: layers with strides 8,16,16,16 -> 16x16x2 + 8x8x6 = 896; full range: 48x48x1 = 2304
_DETECTORS = {
    "short": ("face_detection_short_range", 128, [8, 16], [2, 6]),
    "full": ("face_detection_full_range", 192, [4], [1]),
}
_MESH_SIZE = 192
_ROI_SCALE = 1.5
_RIGHT_EYE, _LEFT_EYE = 33, 263  # mesh vertices: the ROI's rotation of a refinement pass


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float = 0.3) -> list[int]:
    """Indices kept by greedy NMS (IoU above ``thr`` suppressed), highest score first."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = inter / (area[i] + area[rest] - inter + 1e-9)
        order = rest[iou < thr]
    return keep


@dataclass(frozen=True)
class LiteFace:
    """One face: ``bbox`` (4,) x0 y0 x1 y1 pixels, ``keypoints`` (6, 2), ``landmarks`` (468, 3) pixels."""

    bbox: np.ndarray
    score: float
    keypoints: np.ndarray
    landmarks: np.ndarray
    presence: float


class LiteRTFaceMesh:
    """The detector and mesh interpreters of one process (single-threaded each: one process per core)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        settings: BaselineSettings | None = None,
        *,
        threads: int = 1,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from facefleet.models import model_path

        self.settings = settings or BaselineSettings()
        self.det: dict[str, tuple[Any, int, np.ndarray]] = {}
        for which in self.settings.kinds:
            name, size, strides, per = _DETECTORS[which]
            it = Interpreter(model_path=str(model_path(name, model_dir)), num_threads=threads)
            it.allocate_tensors()
            self.det[which] = (it, size, ssd_anchors(size, strides, per))
        self.lm = Interpreter(model_path=str(model_path("face_landmark", model_dir)), num_threads=threads)
        self.lm.allocate_tensors()
        # the tiling rule and grid of facefleet's detector (its thresholds; no network is loaded)
        self._tiling = FaceDetector(device="cpu", model=self.settings.detector)

    def _detect(self, img: Image.Image, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One detector model on the letterboxed whole image: boxes (K, 4), scores (K,), keypoints
        (K, 6, 2) in image pixels, of the candidates above ``min_score`` after NMS."""
        it, size, anchors = self.det[which]
        w, h = img.size
        s = size / max(w, h)
        rw, rh = max(1, round(w * s)), max(1, round(h * s))
        px, py = (size - rw) // 2, (size - rh) // 2
        canvas = np.zeros((size, size, 3), np.float32)
        small = np.asarray(img.resize((rw, rh), Image.Resampling.BILINEAR), dtype=np.float32)
        canvas[py : py + rh, px : px + rw] = small / 127.5 - 1.0
        inp, out = it.get_input_details()[0], it.get_output_details()
        it.set_tensor(inp["index"], canvas[None])
        it.invoke()
        outs = {tuple(o["shape"])[-1]: it.get_tensor(o["index"])[0] for o in out}
        reg, cls = outs[16], outs[1][:, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(cls.astype(np.float64), -100, 100)))
        sel = np.nonzero(scores >= self.settings.min_score)[0]
        if sel.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0), np.zeros((0, 6, 2), np.float32)
        r, a = reg[sel] / size, anchors[sel]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        keep = _nms(boxes, scores[sel])
        # letterbox coordinates -> image pixels
        scale, off = size / s, np.array([px / size, py / size], np.float32)
        boxes = ((boxes[keep].reshape(-1, 2, 2) - off) * scale).reshape(-1, 4)
        return boxes, scores[sel][keep], (kps[keep] - off) * scale

    def _mesh(
        self, img: Image.Image, cx: float, cy: float, side: float, angle: float
    ) -> tuple[np.ndarray, float]:
        """One mesh pass on the square ROI (centre, side, rotation): landmarks (468, 3) in image pixels
        (z larger = closer) and the face-presence probability."""
        ca, sa = math.cos(angle), math.sin(angle)
        k = side / _MESH_SIZE
        c = _MESH_SIZE / 2
        # crop pixel (u, v) -> image (x, y): centre + R(angle) @ ((u, v) - c) * k
        coeffs = (ca * k, -sa * k, cx - c * k * (ca - sa), sa * k, ca * k, cy - c * k * (sa + ca))
        crop = img.transform(
            (_MESH_SIZE, _MESH_SIZE), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR
        )
        inp = self.lm.get_input_details()[0]
        self.lm.set_tensor(inp["index"], np.asarray(crop, dtype=np.float32)[None] / 255.0)
        self.lm.invoke()
        res = {
            int(np.prod(o["shape"])): self.lm.get_tensor(o["index"]).ravel()
            for o in self.lm.get_output_details()
        }
        pts = res[1404].reshape(468, 3)
        presence = float(1.0 / (1.0 + np.exp(-res[1][0])))
        u, v = pts[:, 0], pts[:, 1]
        xs = coeffs[0] * u + coeffs[1] * v + coeffs[2]
        ys = coeffs[3] * u + coeffs[4] * v + coeffs[5]
        return np.stack([xs, ys, -pts[:, 2] * k], 1), presence

    def _tile_candidates(
        self, img: Image.Image, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full-range candidates on overlapping square tiles, by facefleet's rule and grid
        (:class:`facefleet.detect.FaceDetector`'s defaults): images longer than ``tile_threshold``, and
        images longer than ``crowd_tile_threshold`` whose whole-image faces ``boxes`` include one under
        ``crowd_face_fraction`` of the long side or several under ``group_face_fraction`` spread wider
        than the largest of them. Each tile keeps the faces centred in its core and no larger than the
        overlap, and none inside a whole-image face twice its size (a part of a big head)."""
        t = self._tiling
        w, h = img.size
        long_side = max(w, h)
        empty = (np.zeros((0, 4), np.float32), np.zeros(0), np.zeros((0, 6, 2), np.float32))
        if long_side <= t.crowd_tile_threshold:
            return empty
        if long_side <= t.tile_threshold:
            side_of = (boxes[:, 2:] - boxes[:, :2]).max(1) / long_side
            small = boxes[side_of < t.group_face_fraction]
            ctr = (small[:, :2] + small[:, 2:]) / 2
            group = len(small) > 1 and float((ctr.max(0) - ctr.min(0)).max()) > float(
                (small[:, 2:] - small[:, :2]).max()
            )
            if not (bool((side_of < t.crowd_face_fraction).any()) or group):
                return empty
        side, overlap = tile_layout(h, w, t.tile_size, t.max_tiles)
        xs, cx0, cx1 = tile_grid(w, side, overlap)
        ys, cy0, cy1 = tile_grid(h, side, overlap)
        if len(xs) * len(ys) <= 1:
            return empty
        parts = []
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                b, s, k = self._detect(img.crop((x, y, x + side, y + side)), "full")
                b, k = b + np.array([x, y, x, y], np.float32), k + np.array([x, y], np.float32)
                c = (b[:, :2] + b[:, 2:]) / 2
                ok = (c[:, 0] >= cx0[i]) & (c[:, 0] < cx1[i]) & (c[:, 1] >= cy0[j]) & (c[:, 1] < cy1[j])
                ok &= (b[:, 2:] - b[:, :2]).max(1) <= overlap
                parts.append((b[ok], s[ok], k[ok]))
        tb = np.concatenate([p[0] for p in parts])
        ts = np.concatenate([p[1] for p in parts])
        tk = np.concatenate([p[2] for p in parts])
        if len(boxes) and len(tb):  # tile views of part of a big head are not faces of their own
            c = (tb[:, :2] + tb[:, 2:]) / 2
            wc, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * 0.75
            inside = ((c[:, None] >= wc[None] - half[None]) & (c[:, None] <= wc[None] + half[None])).all(-1)
            larger = (boxes[:, 2:] - boxes[:, :2]).max(1)[None] >= 2 * (tb[:, 2:] - tb[:, :2]).max(1)[:, None]
            ok = ~(inside & larger).any(1)
            tb, ts, tk = tb[ok], ts[ok], tk[ok]
        return tb, ts, tk

    def detect(self, img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every face of one image: boxes (K, 4), scores (K,), keypoints (K, 6, 2) in image pixels,
        highest score first, at most ``max_faces``."""
        found = [self._detect(img, k) for k in self.settings.kinds]
        if "full" in self.settings.kinds:
            found.append(self._tile_candidates(img, np.concatenate([f[0] for f in found])))
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        kps = np.concatenate([f[2] for f in found])
        keep = (_nms(boxes, scores) if len(found) > 1 else list(range(len(scores))))[
            : self.settings.max_faces
        ]
        return boxes[keep], scores[keep], kps[keep]

    def __call__(self, img: Image.Image) -> list[LiteFace]:
        """Faces of one RGB image, highest detector score first."""
        faces = []
        for box, score, kp in zip(*self.detect(img), strict=True):
            # ROI: box centre, 1.5x the larger side, rotated so the eye line is horizontal
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            side = _ROI_SCALE * max(box[2] - box[0], box[3] - box[1])
            angle = math.atan2(kp[1, 1] - kp[0, 1], kp[1, 0] - kp[0, 0])  # subject's right eye -> left eye
            lm, presence = self._mesh(img, cx, cy, side, angle)
            for _ in range(self.settings.refine):  # ROI from the landmarks, as MediaPipe's tracking does
                lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
                (cx, cy), side = (lo + hi) / 2, _ROI_SCALE * float((hi - lo).max())
                eye = lm[_LEFT_EYE, :2] - lm[_RIGHT_EYE, :2]
                lm, presence = self._mesh(img, float(cx), float(cy), side, math.atan2(eye[1], eye[0]))
            if presence >= self.settings.min_presence:
                faces.append(LiteFace(box, float(score), kp, lm, presence))
        return faces


# ---------------------------------------------------------------------------------------------
# process pool
# ---------------------------------------------------------------------------------------------
_MESH: LiteRTFaceMesh | None = None


def _init(model_dir: str | None, settings: BaselineSettings) -> None:
    global _MESH
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _MESH = LiteRTFaceMesh(model_dir, settings)


def _one(path: str) -> tuple[str, int, float, str | None]:
    """(path, faces, seconds, error) for one image: decode + detect + crops + mesh passes."""
    assert _MESH is not None
    t0 = time.perf_counter()
    try:
        with Image.open(path) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
        n = len(_MESH(img))
        err = None
    except Exception as e:  # a bad file is a result, not a crash
        n, err = 0, f"{type(e).__name__}: {e}"
    return path, n, time.perf_counter() - t0, err


def _warm(_: int) -> int:
    return os.getpid()


@dataclass(frozen=True)
class LiteRTRun:
    """What :func:`run_litert_pool` measured: images done, faces found, failed images, wall seconds after
    the warm-up, per-image latencies (s), the process count, up to five error messages."""

    images: int
    faces: int
    failed: int
    seconds: float
    latencies: tuple[float, ...]
    processes: int
    errors: tuple[str, ...]
    settings: BaselineSettings


def run_litert_pool(
    paths: list[str],
    *,
    processes: int | None = None,
    model_dir: str | None = None,
    time_budget_s: float | None = None,
    settings: BaselineSettings | None = None,
) -> LiteRTRun:
    """Process ``paths`` on a pool of ``processes`` (default: all cores), one image per task.

    The pool is started and warmed (models loaded) before the clock starts. With ``time_budget_s`` the
    run stops submitting once the budget is spent (rates stay exact: images done / time taken).
    """
    from facefleet.bench.corpus import mp_context

    settings = settings or BaselineSettings()
    nproc = processes or os.cpu_count() or 1
    with mp_context().Pool(nproc, initializer=_init, initargs=(model_dir, settings)) as pool:
        pool.map(_warm, range(nproc * 2), chunksize=1)
        t0 = time.perf_counter()
        lat: list[float] = []
        faces = failed = 0
        errors: list[str] = []
        chunk = max(1, nproc * 8)
        for a in range(0, len(paths), chunk):
            for _p, n, s, err in pool.imap_unordered(_one, paths[a : a + chunk], chunksize=1):
                faces += n
                lat.append(s)
                if err:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(err)
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
        seconds = time.perf_counter() - t0
    return LiteRTRun(len(lat), faces, failed, seconds, tuple(lat), nproc, tuple(errors), settings)
