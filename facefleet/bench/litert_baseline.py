"""The "MediaPipe runtime on CPU" baseline: the official LiteRT interpreter running the same
MediaPipe TFLite models, one interpreter pair per process over all CPU cores.

Per image, the same work as facefleet: decode (Pillow), detect (short-range BlazeFace, then the
full-range model when it finds nothing), rotate-and-crop each face to 192x192 from the full image,
run the 468-point mesh, map the points back to image pixels. Pre/post-processing is plain numpy
following MediaPipe's graph settings (SSD anchors, sigmoid scores, NMS, 1.5x ROI rotated by the
eye line).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["LiteRTFaceMesh", "run_litert_pool"]


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
    "short": ("face_detection_short_range", "face_detection_short_range.tflite", 128, [8, 16], [2, 6]),
    "full": ("face_detection_full_range", "face_detection_full_range_sparse.tflite", 192, [4], [1]),
}


def _model_file(name: str, filename: str, model_dir: str | os.PathLike[str] | None) -> Path:
    """The verified weight file facefleet itself uses (``facefleet.models.model_path``)."""
    try:
        from facefleet.models import model_path

        return Path(model_path(name, model_dir))
    except ImportError:  # pragma: no cover - models package always ships with facefleet
        base = Path(model_dir) if model_dir else Path.home() / ".cache" / "facefleet" / "models"
        path = base / filename
        if not path.is_file():
            raise FileNotFoundError(f"LiteRT baseline: model file {path} not found") from None
        return path


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float = 0.3) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        iou = inter / (area[i] + area[rest] - inter + 1e-9)
        order = rest[iou < thr]
    return keep


@dataclass
class LiteFace:
    bbox: np.ndarray  # (4,) x0 y0 x1 y1 pixels
    score: float
    keypoints: np.ndarray  # (6, 2)
    landmarks: np.ndarray  # (468, 3)
    presence: float


class LiteRTFaceMesh:
    """Detector + landmark interpreters (single-threaded each) for one process."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        min_score: float = 0.5,
        max_faces: int = 16,
        threads: int = 1,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.det: dict[str, tuple[Any, int, np.ndarray]] = {}
        for which, (name, fname, size, strides, per) in _DETECTORS.items():
            it = Interpreter(model_path=str(_model_file(name, fname, model_dir)), num_threads=threads)
            it.allocate_tensors()
            self.det[which] = (it, size, ssd_anchors(size, strides, per))
        path = _model_file("face_landmark", "face_landmark.tflite", model_dir)
        self.lm = Interpreter(model_path=str(path), num_threads=threads)
        self.lm.allocate_tensors()
        self.min_score, self.max_faces = min_score, max_faces

    def _detect(self, img: Image.Image, which: str) -> list[tuple[np.ndarray, float, np.ndarray]]:
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
        sel = np.nonzero(scores >= self.min_score)[0]
        if sel.size == 0:
            return []
        r, a = reg[sel] / size, anchors[sel]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        keep = _nms(boxes, scores[sel])[: self.max_faces]
        # letterbox coordinates -> image pixels
        scale = np.array([size / s, size / s], np.float32)
        off = np.array([px / size, py / size], np.float32)
        out_l = []
        for k in keep:
            b = boxes[k].reshape(2, 2)
            out_l.append((((b - off) * scale).ravel(), float(scores[sel][k]), (kps[k] - off) * scale))
        return out_l

    def __call__(self, img: Image.Image) -> list[LiteFace]:
        """Faces of one RGB image, highest score first."""
        dets = self._detect(img, "short") or self._detect(img, "full")
        faces = []
        inp = self.lm.get_input_details()[0]
        outs = self.lm.get_output_details()
        for box, score, kp in dets:
            # ROI: box centre, 1.5x the larger side, rotated so the eye line is horizontal
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            side = 1.5 * max(box[2] - box[0], box[3] - box[1])
            ang = math.atan2(kp[1, 1] - kp[0, 1], kp[1, 0] - kp[0, 0])  # subject's right eye -> left eye
            ca, sa = math.cos(ang), math.sin(ang)
            k = side / 192.0
            # crop pixel (u, v) -> image (x, y): centre + R(ang) @ ((u, v) - 96) * k
            coeffs = (ca * k, -sa * k, cx - 96 * k * (ca - sa), sa * k, ca * k, cy - 96 * k * (sa + ca))
            crop = img.transform((192, 192), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
            x = np.asarray(crop, dtype=np.float32)[None] / 255.0
            self.lm.set_tensor(inp["index"], x)
            self.lm.invoke()
            res = {int(np.prod(o["shape"])): self.lm.get_tensor(o["index"]).ravel() for o in outs}
            pts = res[1404].reshape(468, 3)
            presence = float(1.0 / (1.0 + np.exp(-res[1][0])))
            if presence < 0.5:
                continue
            u, v = pts[:, 0], pts[:, 1]
            xs = coeffs[0] * u + coeffs[1] * v + coeffs[2]
            ys = coeffs[3] * u + coeffs[4] * v + coeffs[5]
            lm = np.stack([xs, ys, -pts[:, 2] * k], 1)
            faces.append(LiteFace(bbox=box, score=score, keypoints=kp, landmarks=lm, presence=presence))
        return faces


# ---------------------------------------------------------------------------------------------
# process pool
# ---------------------------------------------------------------------------------------------
_MESH: LiteRTFaceMesh | None = None


def _init(model_dir: str | None) -> None:
    global _MESH
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _MESH = LiteRTFaceMesh(model_dir)


def _one(path: str) -> tuple[str, int, float, str | None]:
    """(path, faces, seconds, error) for one image: decode + detect + crop + mesh."""
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


def run_litert_pool(
    paths: list[str],
    *,
    processes: int | None = None,
    model_dir: str | None = None,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """Process ``paths`` on a pool of ``processes`` (default: all cores), one image per task.

    The pool is started and warmed (models loaded) before the clock starts. With
    ``time_budget_s`` the run stops submitting once the budget is spent (rates stay exact).
    Returns images, faces, failed, seconds, per-image latencies (s).
    """

    nproc = processes or os.cpu_count() or 1
    from facefleet.bench.corpus import mp_context

    ctx = mp_context()
    with ctx.Pool(nproc, initializer=_init, initargs=(model_dir,)) as pool:
        pool.map(_warm, range(nproc * 2), chunksize=1)
        t0 = time.perf_counter()
        lat: list[float] = []
        faces = failed = done = 0
        errors: list[str] = []
        chunk = max(1, nproc * 8)
        for a in range(0, len(paths), chunk):
            for _p, n, s, err in pool.imap_unordered(_one, paths[a : a + chunk], chunksize=1):
                done += 1
                faces += n
                lat.append(s)
                if err:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(err)
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
        seconds = time.perf_counter() - t0
    return {
        "images": done,
        "faces": faces,
        "failed": failed,
        "seconds": seconds,
        "latencies": lat,
        "processes": nproc,
        "errors": errors,
    }
