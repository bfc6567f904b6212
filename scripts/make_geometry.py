#!/usr/bin/env python
"""Derive facefleet's face geometry from the MediaPipe face-landmark model's own outputs.

Writes ``facefleet/geometry/data/face_geometry.npz``. Nothing here is copied from MediaPipe
(its wheel ships no topology, UVs or canonical shape): everything is computed from what the
468-point network predicts on a handful of real near-frontal photographs.

Usage::

    pip install av                             # PyAV, to read the two talking-head videos
    python scripts/make_geometry.py              # regenerate the npz (about 10 s on a CPU)
    python scripts/make_geometry.py --eval-aflw  # evaluation only: NME of the shipped 68-point map
                                               # and pose-sign agreement on the AFLW2000-3D subset

Inputs: ``skimage.data.astronaut()``, the frontal photos ``FRONTAL_IMAGES`` and the two videos
``VIDEOS`` of ``../shared/data`` ($FACEFLEET_SHARED_DATA), the 300W-LP sample (68-point map only).
The AFLW2000-3D subset is used by ``--eval-aflw`` only, never to build anything.

Method
------
1. **Landmarks.** The initial face box is scikit-image's LBP frontal-face cascade (largest
   detection), refined three times from the network's own landmarks as MediaPipe's tracking
   does: upright square crop, side 1.5 x the landmark extent, centred on it (all inputs are
   upright). The 468 x (x, y, z) output is mapped back to image pixels (z scaled like x, y).
2. **Canonical shape.** Each shape goes to a right-handed frame (x right, y up, z toward the
   camera: MediaPipe's z is smaller = closer, so it is negated), generalised Procrustes
   (similarity) aligns them and they are averaged. The mirror partner of every vertex comes from
   optimal assignment (Hungarian) of the shape against its x-reflection; rotating half way to the
   mirror image removes yaw and roll, and averaging with it makes the shape exactly symmetric.
   Pitch zero = the mean pitch of the frontal photos. Units: centimetre-like, face x extent 15.
3. **Triangulation.** Delaunay of the projection seen from slightly below (``TILT_DEG`` = -20
   degrees about x: a near-frontal view in which the underside of the nose does not fold), done
   on the x >= 0 half and mirrored so that the mesh is left/right symmetric.
4. **Openings, from open vs. closed eyes and mouth in the videos** (blinks, speech; each frame
   Procrustes-aligned to the canonical shape):
   - mouth: the Delaunay edge whose length varies most (5-95 % range / median) joins the upper
     and lower inner lip; the opening is the set of triangles edge-connected to it whose area
     collapses when the mouth closes (5th-percentile area < 35 % of the median);
   - eyes: in each upper half, the interior vertex whose vertical motion relative to its Delaunay
     neighbours varies most is on the upper lid (it moves in blinks); the triangle just below it
     lies in the opening, which is grown from there as the largest region of triangles whose
     outline stays convex (an eye opening is almond-shaped; the skin fold above it would make
     the outline concave). The larger of the two regions is mirrored to the other eye.
   The boundary loops of these regions are the lid and inner-lip contours (ordered).
5. **Outer boundary.** The face oval (silhouette) is the convex hull of the cylindrical unwrap of
   step 6. Triangles touching it or the Delaunay hull are removed and the ring between the oval
   and the rest is re-triangulated in the unwrap (max-min angle, half and mirror), so the outline
   is the oval loop. Edges whose triangles face down (nose base) are then flipped when the pair
   faces the camera better and stays unflipped in the view and the unwrap.
6. **UV.** Cylindrical unwrap of the tilted view around a vertical axis fitted behind the face
   (least-squares circle in x-z), u = radius x angle, v = height, normalised into [0, 1]^2 with a
   3 % margin keeping the aspect; origin top-left, v down (glTF; OBJ writers emit 1 - v). The
   script checks that no UV triangle flips (it would blend toward the planar projection if one
   did, which cannot flip).
7. **68-point map.** The network is run on the 300W-LP sample (crop from its own 68 points); the
   midline iBUG points are assigned distinct midline vertices and the left/right pairs distinct
   mirror vertex pairs, by optimal assignment of the 2D distances (both members of a pair count,
   except on the jaw, where the far side of that 44-degree profiled view lies over the cheek and
   only the visible side counts). Inner-lip points 60-67 may only take mouth-contour vertices.
8. **Weights.** Per-vertex Procrustes weights for pose: inverse residual variance over the
   aligned photos and video frames (lids, lips, jaw and the outline, which move with expression or
   are poorly localised, get small weights), zero on the lid and lip contours, mean 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "facefleet" / "geometry" / "data" / "face_geometry.npz"
SHARED = Path(os.environ.get("FACEFLEET_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = Path(os.environ.get("FACEFLEET_MODEL_DIR", Path.home() / ".cache" / "facefleet" / "models"))
FRONTAL_IMAGES = [
    "face_recognition_obama.jpg",
    "3ddfa_v2_JianzhuGuo.jpg",
    "hrn_multiview_10078.jpg",
    "deepface_img24.jpg",
    "mediapipe_sergey.png",
    "facenet_pytorch_paul_rudd_1.jpg",
    "deca_IMG_0392_inputs.jpg",
    "face_recognition_two_people.jpg",
]
LP_SAMPLE = "benchmarks/300w_lp_sample/IBUG_image_008_1_0"
AFLW_DIR = "benchmarks/aflw2000_3d_subset"
FACE_WIDTH = 15.0
VOID_RATIO = 2.2
CROP_SCALE = 1.5

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


# --------------------------------------------------------------------------------------------
# 1. landmarks from the network
# --------------------------------------------------------------------------------------------
class LandmarkNet:
    """The official LiteRT interpreter running face_landmark.tflite."""

    def __init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = MODEL / "face_landmark.tflite"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: face_landmark.tflite not found (set FACEFLEET_MODEL_DIR)")
        self.it = Interpreter(model_path=str(path))
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        outs = self.it.get_output_details()
        self.out_lm = next(o["index"] for o in outs if int(np.prod(o["shape"])) == 1404)

    def __call__(self, crop: NDArray[np.float32]) -> F64:
        """crop (192, 192, 3) float RGB in [0, 1] -> (468, 3) in crop pixels (MediaPipe z)."""
        self.it.set_tensor(self.inp, crop[None].astype(np.float32))
        self.it.invoke()
        return self.it.get_tensor(self.out_lm).reshape(468, 3).astype(np.float64)


@dataclass
class Roi:
    cx: float
    cy: float
    side: float
    angle: float  # radians, rotation of the crop's x axis in the image (y down)

    def crop_to_image(self, pts: F64) -> F64:
        """(K, 3) crop pixels (192 grid) -> image pixels; z scaled like x, y, sign kept."""
        s = self.side / 192.0
        c, si = np.cos(self.angle), np.sin(self.angle)
        u, v = (pts[:, 0] - 96.0) * s, (pts[:, 1] - 96.0) * s
        return np.stack([self.cx + c * u - si * v, self.cy + si * u + c * v, pts[:, 2] * s], axis=1)


def extract(img: Image.Image, roi: Roi) -> NDArray[np.float32]:
    """Rotated square crop -> (192, 192, 3) float32 in [0, 1] (bilinear, black outside)."""
    s = roi.side / 192.0
    c, si = np.cos(roi.angle), np.sin(roi.angle)
    # PIL maps output (x, y) to input (a x + b y + cc, d x + e y + f), pixel centres at +0.5.
    a, b, d, e = c * s, -si * s, si * s, c * s
    cc = roi.cx - a * 96.0 - b * 96.0
    f = roi.cy - d * 96.0 - e * 96.0
    out = img.transform((192, 192), Image.Transform.AFFINE, (a, b, cc, d, e, f), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32) / 255.0


def roi_from_landmarks(lm: F64, angle: float = 0.0) -> Roi:
    """MediaPipe-style tracking ROI: square of side 1.5 x the landmark extent measured along the
    crop axes rotated by ``angle`` (radians, image frame), centred on that extent. The photos and
    videos used for the build are upright (angle 0); evaluation passes the fitted head roll."""
    xy = lm[:, :2]
    c, s = np.cos(angle), np.sin(angle)
    axes = np.array([[c, s], [-s, c]])  # rows: crop x and y axes in the image
    rot = xy @ axes.T
    lo, hi = rot.min(0), rot.max(0)
    cx, cy = ((lo + hi) / 2) @ axes
    return Roi(float(cx), float(cy), float(CROP_SCALE * max(hi - lo)), angle)


def initial_roi(rgb: NDArray[np.uint8]) -> Roi:
    """Largest detection of scikit-image's LBP frontal-face cascade, as a square ROI."""
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.feature import Cascade
    from skimage.transform import rescale

    scale = min(1.0, 400.0 / max(rgb.shape[:2]))
    gray = rgb2gray(rgb)
    if scale < 1.0:
        gray = rescale(gray, scale, anti_aliasing=True)
    det = Cascade(data.lbp_frontal_face_cascade_filename())
    found = det.detect_multi_scale(
        gray, scale_factor=1.2, step_ratio=1, min_size=(40, 40), max_size=(400, 400)
    )
    if not found:
        raise RuntimeError("no face found by the LBP cascade")
    best = max(found, key=lambda d: d["width"] * d["height"])
    side = best["width"] / scale
    return Roi(
        (best["c"] + best["width"] / 2) / scale, (best["r"] + best["height"] / 2) / scale, side * 1.6, 0.0
    )


def landmarks_in_image(
    net: LandmarkNet, rgb: NDArray[np.uint8], roi: Roi, iters: int = 3, roll: bool = False
) -> F64:
    """Iteratively refined (468, 3) landmarks in image pixels: x right, y down, z = MediaPipe's
    (smaller = closer) scaled to pixels. ``roll``: rotate the crop by the head roll fitted with
    the shipped geometry (evaluation), else keep it upright (the build's upright inputs)."""
    img = Image.fromarray(rgb)
    lm = roi.crop_to_image(net(extract(img, roi)))
    for _ in range(iters):
        angle = np.radians(_fitted_roll(lm)) if roll else 0.0  # roll > 0 = clockwise
        roi = roi_from_landmarks(lm, angle)
        lm = roi.crop_to_image(net(extract(img, roi)))
    return lm


def _fitted_roll(lm: F64) -> float:
    """Head roll (degrees, facefleet convention) of image landmarks with MediaPipe z."""
    import torch

    sys.path.insert(0, str(REPO))
    from facefleet.geometry import estimate_pose

    t = torch.from_numpy(lm * np.array([1.0, 1.0, -1.0]))[None]
    return float(estimate_pose(t).roll[0])


def load_rgb(path: Path) -> NDArray[np.uint8]:
    from PIL import ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def to_right_handed(lm: F64) -> F64:
    """Image pixels (x right, y down, MediaPipe z smaller = closer) -> (x right, y up, z to camera)."""
    return np.stack([lm[:, 0], -lm[:, 1], -lm[:, 2]], axis=1)


# --------------------------------------------------------------------------------------------
# 2. canonical shape
# --------------------------------------------------------------------------------------------
def similarity(src: F64, dst: F64, w: F64 | None = None) -> tuple[float, F64, F64]:
    """Weighted Umeyama: dst ~ s R src + t. Returns (s, R (3,3), t (3,))."""
    w = np.ones(len(src)) if w is None else w
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    cov = (b * w[:, None]).T @ a
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag(d) @ vt
    s = float((sv * d).sum() / (w @ (a**2).sum(1)))
    return s, r, md - s * r @ ms


def align_to(shape: F64, target: F64, w: F64 | None = None) -> F64:
    """``shape`` (468, 3) moved onto ``target`` by the best similarity transform."""
    s, r, t = similarity(shape, target, w)
    return s * shape @ r.T + t


def generalised_procrustes(shapes: list[F64], iters: int = 10) -> tuple[F64, F64]:
    """Align (K, 468, 3) shapes to their evolving mean. Returns (mean (468,3), aligned (K,468,3))."""
    mean = shapes[0] - shapes[0].mean(0)
    aligned = np.stack(shapes)
    for _ in range(iters):
        for k, sh in enumerate(shapes):
            s, r, t = similarity(sh, mean)
            aligned[k] = s * sh @ r.T + t
        new = aligned.mean(0)
        new -= new.mean(0)
        new *= np.sqrt((mean**2).sum() / (new**2).sum())
        mean = new
    return mean, aligned


def mirror_pairs(shape: F64) -> I64:
    """Index of each vertex's mirror partner (reflection x -> -x), by optimal assignment."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    shape = shape - shape.mean(0)
    refl = shape * np.array([-1.0, 1.0, 1.0])
    moved = refl  # the inputs are near-frontal: start from the plain reflection
    for _ in range(3):
        _, perm = linear_sum_assignment(cdist(shape, moved))  # perm[i]: j whose reflection is i
        s, r, t = similarity(refl[perm], shape)
        moved = s * refl @ r.T + t
    return perm.astype(np.int64)


def rotation_about(axis: F64, angle: float) -> F64:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()


def symmetrise(shape: F64, mirror: I64) -> F64:
    """Rotate half way to the mirror image (removes yaw and roll) and average with it."""
    from scipy.spatial.transform import Rotation

    shape = shape - shape.mean(0)
    refl = shape * np.array([-1.0, 1.0, 1.0])
    _, r, _ = similarity(refl[mirror], shape)
    half = Rotation.from_matrix(r).as_rotvec() / 2
    shape = shape @ Rotation.from_rotvec(half).as_matrix()  # = R_half^T applied to points
    refl = shape * np.array([-1.0, 1.0, 1.0])
    sym = (shape + refl[mirror]) / 2
    return sym - sym.mean(0)


def pitch_matrix(deg: float) -> F64:
    return rotation_about(np.array([1.0, 0.0, 0.0]), np.radians(deg))


def collect_shapes(net: LandmarkNet) -> tuple[list[str], list[F64]]:
    """Right-handed (468, 3) shapes of every input photo that is found."""
    from skimage import data

    names, shapes = ["skimage.data.astronaut"], []
    shapes.append(to_right_handed(landmarks_in_image(net, data.astronaut(), initial_roi(data.astronaut()))))
    for name in FRONTAL_IMAGES:
        path = SHARED / "images" / name
        if not path.is_file():
            print(f"  (skipping {path}: not found)", file=sys.stderr)
            continue
        rgb = load_rgb(path)
        shapes.append(to_right_handed(landmarks_in_image(net, rgb, initial_roi(rgb))))
        names.append(name)
    return names, shapes


def collect_video(net: LandmarkNet) -> list[F64]:
    """(frames, 468, 3) right-handed shapes per talking-head video (blinks, speech): the
    open/closed-eye and open/closed-mouth variation used to find the openings."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - generator only
        raise SystemExit("scripts/make_geometry.py needs PyAV to read the videos: pip install av") from exc
    out = []
    for name in VIDEOS:
        path = SHARED / "videos" / name
        if not path.is_file():
            print(f"  (skipping {path}: not found)", file=sys.stderr)
            continue
        roi, frames = None, []
        with av.open(str(path)) as cont:
            for frame in cont.decode(video=0):
                rgb = frame.to_ndarray(format="rgb24")
                roi = initial_roi(rgb) if roi is None else roi
                lm = landmarks_in_image(net, rgb, roi, iters=1)
                roi = roi_from_landmarks(lm)
                frames.append(to_right_handed(lm))
        out.append(np.stack(frames))
    if not out:
        raise SystemExit(f"no video found under {SHARED / 'videos'}")
    return out


# --------------------------------------------------------------------------------------------
# 3-4. topology
# --------------------------------------------------------------------------------------------
def signed_area(p: F64, tri: I64) -> F64:
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    return 0.5 * ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])


def orient_ccw(p: F64, tri: I64) -> I64:
    tri = tri.copy()
    neg = signed_area(p, tri) < 0
    tri[neg] = tri[neg][:, [0, 2, 1]]
    return tri


def symmetric_delaunay(p2: F64, mirror: I64) -> I64:
    """Delaunay of the x >= 0 half (midline included) mirrored onto the other half: a left/right
    symmetric planar triangulation (a full Delaunay breaks ties across the midline arbitrarily)."""
    from scipy.spatial import Delaunay

    half = np.where(p2[:, 0] >= -1e-9)[0]
    tri = half[Delaunay(p2[half]).simplices]
    tri = tri[np.abs(signed_area(p2, tri)) > 1e-9]  # drop flat triangles on the midline
    tri = orient_ccw(p2, tri)
    return np.concatenate([tri, mirror[tri][:, [0, 2, 1]]]).astype(np.int64)


def edges_of(tri: I64) -> I64:
    """(3F, 2) directed edges of CCW triangles."""
    return np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])


def boundary_loops(tri: I64) -> list[list[int]]:
    """Ordered boundary loops (directed as the triangles traverse them)."""
    directed = {(int(a), int(b)) for a, b in edges_of(tri)}
    nxt: dict[int, int] = {}
    for a, b in directed:
        if (b, a) not in directed:
            if a in nxt:
                raise ValueError(f"vertex {a} is non-manifold (two outgoing boundary edges)")
            nxt[a] = b
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        while nxt[loop[-1]] != start:
            loop.append(nxt[loop[-1]])
            if loop[-1] in seen:
                raise ValueError("boundary is not a set of simple loops")
            seen.add(loop[-1])
        loops.append(loop)
    return loops


def triangle_adjacency(tri: I64) -> dict[frozenset[int], list[int]]:
    adj: dict[frozenset[int], list[int]] = {}
    for k, t in enumerate(tri.tolist()):
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            adj.setdefault(frozenset((a, b)), []).append(k)
    return adj


def _loop_convex(p2: F64, loop: list[int], tol_deg: float) -> bool:
    q = p2[loop]
    d0 = q - np.roll(q, 1, 0)
    d1 = np.roll(q, -1, 0) - q
    turn = np.degrees(np.arctan2(d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0], (d0 * d1).sum(1)))
    return bool((turn > -tol_deg).all())


def grow_convex(p2: F64, tri: I64, seed: int, tol_deg: float = 5.0) -> set[int]:
    """Largest region of triangles grown from ``seed`` whose outline stays a convex polygon."""
    adj = triangle_adjacency(tri)
    region = {seed}
    changed = True
    while changed:
        changed = False
        for k in sorted(region):
            t = tri[k].tolist()
            for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
                for j in adj[frozenset((a, b))]:
                    if j in region:
                        continue
                    try:
                        loops = boundary_loops(tri[sorted(region | {j})])
                    except ValueError:
                        continue
                    if len(loops) == 1 and _loop_convex(p2, loops[0], tol_deg):
                        region.add(j)
                        changed = True
    return region


def relative_motion(video: list[F64], can: F64, tri: I64) -> tuple[F64, dict[tuple[int, int], float]]:
    """Per-vertex std of vertical motion relative to the Delaunay neighbours (lids during blinks)
    and per-edge relative length spread (5-95 % range / median) over the aligned video frames."""
    frames, disp = [], []
    for clip in video:
        al = np.stack([align_to(f, can) for f in clip])
        frames.append(al)
        disp.append(al - np.median(al, 0))
    al_all, d = np.concatenate(frames), np.concatenate(disp)[..., 1]
    e = edges_of(tri)
    nb_sum = np.zeros((len(d), len(can)))
    deg = np.zeros(len(can))
    for a, b in np.concatenate([e, e[:, ::-1]]):
        nb_sum[:, a] += d[:, b]
        deg[a] += 1
    rel = (d - nb_sum / np.maximum(deg, 1)).std(0)
    und = np.unique(np.sort(e, 1), axis=0)
    length = np.linalg.norm(al_all[:, und[:, 0]] - al_all[:, und[:, 1]], axis=-1)
    spread = (np.percentile(length, 95, 0) - np.percentile(length, 5, 0)) / np.median(length, 0)
    return rel, {(int(a), int(b)): float(s) for (a, b), s in zip(und, spread, strict=True)}


def peel_outer(p2: F64, tri: I64, max_edge_ratio: float = 2.5, min_angle_deg: float = 3.0) -> I64:
    """Concave hull: repeatedly drop outer-boundary triangles that have one boundary edge that is
    long (> max_edge_ratio x median edge) or that are slivers (smallest angle < min_angle_deg),
    and whose third vertex is interior (so the mesh stays edge-manifold). ``p2`` may be the 3D
    shape (lengths and angles measured in 3D) or a 2D projection."""
    e = np.unique(np.sort(edges_of(tri), 1), axis=0)
    med = float(np.median(np.linalg.norm(p2[e[:, 0]] - p2[e[:, 1]], axis=1)))
    keep = np.ones(len(tri), bool)
    while True:
        cur = tri[keep]
        outer = max(boundary_loops(cur), key=len)
        on_b = set(outer)
        bedges = {(outer[i], outer[(i + 1) % len(outer)]) for i in range(len(outer))}
        removed = False
        for k in np.where(keep)[0]:
            t = tri[k].tolist()
            own = [(t[i], t[(i + 1) % 3]) for i in range(3) if (t[i], t[(i + 1) % 3]) in bedges]
            if len(own) != 1:
                continue
            a, b = own[0]
            c = next(v for v in t if v not in (a, b))
            if c in on_b:
                continue
            q = p2[t]
            ang = [
                np.degrees(
                    np.arccos(
                        np.clip(
                            np.dot(q[(i + 1) % 3] - q[i], q[(i + 2) % 3] - q[i])
                            / np.linalg.norm(q[(i + 1) % 3] - q[i])
                            / np.linalg.norm(q[(i + 2) % 3] - q[i]),
                            -1,
                            1,
                        )
                    )
                )
                for i in range(3)
            ]
            if np.linalg.norm(p2[a] - p2[b]) > max_edge_ratio * med or min(ang) < min_angle_deg:
                keep[k] = False
                removed = True
                break
        if not removed:
            return tri[keep]


def cylinder_coords(view: F64) -> tuple[F64, float, float]:
    """(468, 3) tilted view -> ((468, 2) cylindrical unwrap (u = radius x angle about a vertical
    axis on x = 0 behind the face, fitted as a least-squares circle in x-z; v = height), radius,
    axis z). Vertices further back (the face oval at the ears) land further out than in the plain
    projection, so the convex hull of this unwrap is the face silhouette."""
    x, z = view[:, 0], view[:, 2]
    # x^2 + z^2 = 2 zc z + (r^2 - zc^2)
    a = np.stack([2 * z, np.ones_like(z)], 1)
    zc, c0 = np.linalg.lstsq(a, x**2 + z**2, rcond=None)[0]
    radius = float(np.sqrt(c0 + zc**2))
    return np.stack([radius * np.arctan2(x, z - zc), view[:, 1]], 1), radius, float(zc)


def _segments_cross(p: F64, q: F64, r: F64, s: F64) -> bool:
    """Proper intersection of the 2D segments p-q and r-s (shared end points do not count)."""

    def cr(o: F64, a: F64, b: F64) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    return cr(p, q, r) * cr(p, q, s) < 0 and cr(r, s, p) * cr(r, s, q) < 0


def _min_angle(q: F64) -> float:
    """Smallest angle (degrees) of the triangle with corners ``q`` (3, 2 or 3)."""
    out = 180.0
    for i in range(3):
        u, w = q[(i + 1) % 3] - q[i], q[(i + 2) % 3] - q[i]
        cos = float(np.dot(u, w) / (np.linalg.norm(u) * np.linalg.norm(w) + 1e-12))
        out = min(out, float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))))
    return out


def triangulate_polygon(poly: list[int], p2: F64, p3: F64) -> I64:
    """Triangulation of the simple CCW polygon ``poly`` (vertex ids, planar in ``p2``) without new
    vertices, maximising the smallest angle (the worse of the planar and the 3D ``p3`` angle) by
    dynamic programming over diagonals. Returns (len(poly) - 2, 3) CCW triangles."""
    m = len(poly)
    q = p2[poly]
    edges = [(i, (i + 1) % m) for i in range(m)]

    def ok(i: int, j: int) -> bool:  # i-j is a polygon edge or a diagonal inside the polygon
        if (j - i) % m in (1, m - 1):
            return True
        if any(_segments_cross(q[i], q[j], q[a], q[b]) for a, b in edges if len({a, b, i, j}) == 4):
            return False
        mid = (q[i] + q[j]) / 2  # inside test of the midpoint (even-odd rule)
        inside = False
        for a, b in edges:
            ya, yb = q[a, 1], q[b, 1]
            if (ya > mid[1]) != (yb > mid[1]):
                xc = q[a, 0] + (mid[1] - ya) / (yb - ya) * (q[b, 0] - q[a, 0])
                inside ^= bool(xc > mid[0])
        return inside

    valid = np.array([[ok(i, j) if i != j else False for j in range(m)] for i in range(m)])
    best = np.full((m, m), -np.inf)
    split = np.full((m, m), -1, np.int64)
    for i in range(m - 1):
        best[i, i + 1] = np.inf
    for gap in range(2, m):
        for i in range(m - gap):
            j = i + gap
            if not valid[i, j]:
                continue
            for k in range(i + 1, j):
                if not (valid[i, k] and valid[k, j]):
                    continue
                t = [poly[i], poly[k], poly[j]]
                if signed_area(p2, np.array([t]))[0] <= 1e-9:
                    continue
                score = min(best[i, k], best[k, j], _min_angle(p2[t]), _min_angle(p3[t]))
                if score > best[i, j]:
                    best[i, j], split[i, j] = score, k
    if split[0, m - 1] < 0:
        raise RuntimeError("outer band: polygon cannot be triangulated")
    out, stack = [], [(0, m - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        k = int(split[i, j])
        out.append([poly[i], poly[k], poly[j]])
        stack += [(i, k), (k, j)]
    return np.array(out, np.int64)


def face_oval_outline(can: F64, view: F64, tri: I64, mirror: I64) -> I64:
    """Replace the outer band of the view triangulation by one that ends on the face oval.

    The face oval (silhouette) is the convex hull of the cylindrical unwrap. Triangles touching the
    oval or the current outer boundary are removed; the ring between the oval and the remaining
    mesh is split on the midline and each half is triangulated in the unwrap (max-min angle), the
    other half mirrored, so that the outline is exactly the oval loop and the mesh stays symmetric."""
    from scipy.spatial import ConvexHull

    cyl = cylinder_coords(view)[0]
    oval = [int(v) for v in ConvexHull(cyl).vertices]  # CCW
    outer = max(boundary_loops(tri), key=len)
    band = set(oval) | set(outer)
    drop = np.array([bool(set(t) & band) for t in tri.tolist()])
    lost = set(range(len(can))) - set(tri[~drop].ravel().tolist()) - set(oval)
    drop &= ~np.array([bool(set(t) & lost) and not set(t) & set(oval) for t in tri.tolist()])
    core = tri[~drop]  # every vertex not on the oval stays in the core
    inner = max(boundary_loops(core), key=len)  # CCW, as traversed by the core
    midline = mirror == np.arange(len(mirror))

    def rotate_to(loop: list[int], v: int) -> list[int]:
        i = loop.index(v)
        return loop[i:] + loop[:i]

    def ends(loop: list[int]) -> tuple[int, int]:
        mids = [v for v in loop if midline[v]]
        return max(mids, key=lambda v: cyl[v, 1]), min(mids, key=lambda v: cyl[v, 1])

    o_top, o_bot = ends(oval)
    i_top, i_bot = ends(inner)
    # x < 0 half: the oval runs CCW from its top down the x < 0 side to the chin; the core's
    # loop runs back up from its bottom to its top on the same side (reversed traversal).
    o = rotate_to(oval, o_top)
    o_half = o[: o.index(o_bot) + 1]
    inn = rotate_to(inner, i_top)
    i_half = inn[: inn.index(i_bot) + 1][::-1]  # bottom -> top on the side the oval half covers
    if cyl[o_half[1:-1], 0].mean() * cyl[i_half[1:-1], 0].mean() <= 0:
        i_half = rotate_to(inner, i_bot)[: rotate_to(inner, i_bot).index(i_top) + 1]
    poly = o_half + i_half
    half = triangulate_polygon(poly, cyl, can)
    other = mirror[half][:, [0, 2, 1]]
    return np.concatenate([core, half, other])


def unfold(can: F64, planes: list[F64], tri: I64, mirror: I64, min_nz: float = 0.2) -> I64:
    """Flip interior edges whose triangles face away from a frontal camera (unit normal z <
    ``min_nz``, e.g. the nose base folding onto the upper lip) when the flipped pair faces it
    better and stays counter-clockwise in every planar layout of ``planes``. Edges on x > 0 are
    flipped together with their mirror images, keeping the mesh symmetric."""
    tri = tri.copy()

    def nz(t: I64) -> F64:
        n = np.cross(can[t[:, 1]] - can[t[:, 0]], can[t[:, 2]] - can[t[:, 0]])
        return n[:, 2] / np.linalg.norm(n, axis=1)

    for _ in range(20):
        flipped = False
        adj = triangle_adjacency(tri)
        bad = np.where(nz(tri) < min_nz)[0]
        for k in bad:
            t = tri[k].tolist()
            for i in range(3):
                a, b, c = t[i], t[(i + 1) % 3], t[(i + 2) % 3]
                pair = adj[frozenset((a, b))]
                if len(pair) != 2 or min(can[[a, b, c], 0]) <= 1e-6:
                    continue
                j = pair[0] if pair[1] == k else pair[1]
                d = next(v for v in tri[j].tolist() if v not in (a, b))
                if can[d, 0] <= 1e-6:
                    continue
                new = np.array([[c, a, d], [d, b, c]])
                if any((signed_area(p, new) <= 1e-9).any() for p in planes):
                    continue
                if nz(new).min() <= nz(tri[[k, j]]).min() + 1e-3:
                    continue
                tri[k], tri[j] = new
                key = {tuple(sorted(x)): m for m, x in enumerate(tri.tolist())}
                mk = key[tuple(sorted(mirror[[a, b, c]].tolist()))]
                mj = key[tuple(sorted(mirror[[a, b, d]].tolist()))]
                tri[mk], tri[mj] = mirror[new][:, [0, 2, 1]]
                flipped = True
                break
            if flipped:
                break
        if not flipped:
            return tri
    return tri


def region_from_seed(tri: I64, seed: int, accept: NDArray[np.bool_]) -> set[int]:
    """Edge-connected triangles reachable from ``seed`` through triangles with ``accept``."""
    adj = triangle_adjacency(tri)
    region, stack = {seed}, [seed]
    while stack:
        t = tri[stack.pop()].tolist()
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            for j in adj[frozenset((a, b))]:
                if j not in region and accept[j]:
                    region.add(j)
                    stack.append(j)
    return region


@dataclass
class Topology:
    triangles: I64
    eye_right: I64  # subject's right eye (image left, x < 0) lid contour, ordered loop
    eye_left: I64
    mouth: I64  # inner-lip contour, ordered loop


def find_openings(can: F64, p2: F64, tri: I64, mirror: I64, video: list[F64]) -> Topology:
    """Remove the eye and mouth openings (see the module docstring, step 4)."""
    rel, spread = relative_motion(video, can, tri)
    loops0: list[list[int]] = boundary_loops(tri)
    outline: list[int] = max(loops0, key=len)
    hull = set(outline)
    inner = np.array([i not in hull for i in range(len(can))])
    upper = can[:, 1] > np.median(can[:, 1])
    # Eyes: the vertex of each upper half that moves most relative to its neighbours is on the
    # upper lid (blinks); the triangle just below it is in the opening; grow a convex region.
    eyes: list[set[int]] = []
    for side in (1.0, -1.0):
        cand = np.where(inner & upper & (np.sign(can[:, 0]) == side))[0]
        lid = int(cand[np.argmax(rel[cand])])
        incident = [k for k in range(len(tri)) if lid in tri[k]]
        seed = min(incident, key=lambda k: float(p2[tri[k]].mean(0)[1]))
        eyes.append(grow_convex(p2, tri, seed))
    # The triangulation is mirror-symmetric: keep the larger convex region and mirror it.
    best = max(eyes, key=len)
    tri_key = {tuple(sorted(t)): k for k, t in enumerate(tri.tolist())}
    mirrored = {tri_key[tuple(sorted(mirror[tri[k]].tolist()))] for k in best}
    # Mouth: triangles that collapse (5th-percentile area < 35 % of the median) when the mouth
    # closes, edge-connected to the most length-varying edge (upper/lower inner-lip midpoints).
    frames = np.concatenate([np.stack([align_to(f, can) for f in clip]) for clip in video])
    area = 0.5 * np.linalg.norm(
        np.cross(frames[:, tri[:, 1]] - frames[:, tri[:, 0]], frames[:, tri[:, 2]] - frames[:, tri[:, 0]]),
        axis=-1,
    )
    collapse = np.percentile(area, 5, 0) / np.median(area, 0) < 0.35
    edge = max(spread, key=lambda k: spread[k])
    mouth_seed = triangle_adjacency(tri)[frozenset(edge)][0]
    mouth = region_from_seed(tri, mouth_seed, collapse)
    drop = best | mirrored | mouth
    out = tri[[k for k in range(len(tri)) if k not in drop]]
    loops = {}
    for name, reg in (("a", best), ("b", mirrored), ("m", mouth)):
        (loop,) = boundary_loops(tri[sorted(reg)])
        loops[name] = np.array(loop[::-1], np.int64)  # as traversed by the remaining mesh
    a_right = can[loops["a"], 0].mean() < 0
    return Topology(
        out, loops["a"] if a_right else loops["b"], loops["b"] if a_right else loops["a"], loops["m"]
    )


# --------------------------------------------------------------------------------------------
# 5. UV layout
# --------------------------------------------------------------------------------------------
def uv_layout(shape: F64, tri: I64, margin: float = 0.03) -> F64:
    """Cylindrical unwrap (u = radius x angle about a vertical axis behind the face, v = -y),
    blended toward the planar projection until no UV triangle flips; aspect kept, fitted into
    [margin, 1 - margin]^2; origin top-left, v down."""
    x, z = shape[:, 0], shape[:, 2]
    # least-squares circle through the (x, z) footprint, centre on the symmetry plane x = 0:
    # x^2 + z^2 = 2 zc z + (r^2 - zc^2)
    a = np.stack([2 * z, np.ones_like(z)], 1)
    zc, c0 = np.linalg.lstsq(a, x**2 + z**2, rcond=None)[0]
    radius = float(np.sqrt(c0 + zc**2))
    cyl = np.stack([radius * np.arctan2(x, z - zc), shape[:, 1]], 1)
    for t in np.linspace(1.0, 0.0, 21):
        flat = t * cyl + (1 - t) * shape[:, :2]
        if (signed_area(flat, tri) > 1e-9).all():
            break
    else:  # pragma: no cover - t = 0 is the planar projection, CCW by construction
        raise RuntimeError("no flip-free UV layout found")
    lo, hi = flat.min(0), flat.max(0)
    scale = (1 - 2 * margin) / float((hi - lo).max())
    uv = (flat - (lo + hi) / 2) * scale + 0.5
    uv[:, 1] = 1.0 - uv[:, 1]  # v down from the top
    print(f"  UV: cylindrical weight {t:.2f}, radius {radius:.2f}, axis z = {zc:.2f}")
    return uv


# --------------------------------------------------------------------------------------------
# 6. 68-point map
# --------------------------------------------------------------------------------------------
IBUG_MIRROR = {
    **{i: 16 - i for i in range(17)},
    **{17 + i: 26 - i for i in range(10)},
    27: 27,
    28: 28,
    29: 29,
    30: 30,
    31: 35,
    32: 34,
    33: 33,
    34: 32,
    35: 31,
    36: 45,
    37: 44,
    38: 43,
    39: 42,
    40: 47,
    41: 46,
    42: 39,
    43: 38,
    44: 37,
    45: 36,
    46: 41,
    47: 40,
    48: 54,
    49: 53,
    50: 52,
    51: 51,
    52: 50,
    53: 49,
    54: 48,
    55: 59,
    56: 58,
    57: 57,
    58: 56,
    59: 55,
    60: 64,
    61: 63,
    62: 62,
    63: 61,
    64: 60,
    65: 67,
    66: 66,
    67: 65,
}


# the subject's-right member of every iBUG left/right pair (x < 0 in the canonical frame)
IBUG_RIGHT = [*range(8), *range(17, 22), 31, 32, *range(36, 42), 48, 49, 50, 58, 59, 60, 61, 67]


def load_mat_points(path: Path) -> F64:
    """(68, 2) points of a 300W-LP / AFLW2000-3D .mat (pt3d_68 when present, else pt2d)."""
    from scipy.io import loadmat

    m = loadmat(str(path))
    pts = m["pt3d_68"][:2] if "pt3d_68" in m else m["pt2d"]
    return np.asarray(pts, np.float64).T


def roi_from_points(pts: F64) -> Roi:
    lo, hi = pts.min(0), pts.max(0)
    c = (lo + hi) / 2
    return Roi(float(c[0]), float(c[1]), float(1.6 * (hi - lo).max()), 0.0)


def landmark_map(net: LandmarkNet, can: F64, mirror: I64, mouth: I64) -> I64:
    """iBUG-68 -> vertex index from the 300W-LP sample (module docstring, step 6)."""
    path = SHARED / LP_SAMPLE
    gt = load_mat_points(path.with_suffix(".mat"))
    rgb = load_rgb(path.with_suffix(".jpg"))
    lm = landmarks_in_image(net, rgb, roi_from_points(gt))  # crop from the sample's own points
    dist = np.linalg.norm(gt[:, None, :] - lm[None, :, :2], axis=-1)  # (68, 468)
    # Which jaw half is visible: the one spanning more image width from the nose tip.
    right_span = abs(gt[30, 0] - gt[0:8, 0]).max()
    left_span = abs(gt[30, 0] - gt[9:17, 0]).max()
    visible_jaw = set(range(0, 8)) if right_span > left_span else set(range(9, 17))
    from scipy.optimize import linear_sum_assignment

    n = len(mirror)
    midline = mirror == np.arange(n)
    on_mouth = np.zeros(n, bool)
    on_mouth[mouth] = True
    big = 1e6
    out = np.full(68, -1, np.int64)
    # Midline points -> distinct midline vertices; left/right pairs -> distinct vertex pairs
    # (v for the subject's-right member, mirror[v] for the other), each by optimal assignment.
    mids = [p for p in range(68) if IBUG_MIRROR[p] == p]
    pairs = [(p, IBUG_MIRROR[p]) for p in IBUG_RIGHT]
    cost_mid = np.where(midline[None], dist[mids], big)
    right_side = (~midline) & (can[:, 0] < 0)
    cost_pair = np.empty((len(pairs), n))
    for k, (r, left) in enumerate(pairs):
        # jaw: the far side of the profiled sample lies over the cheek; use the visible side only
        jaw = dist[r] if r in visible_jaw else dist[left, mirror]
        c = jaw if r <= 16 else dist[r] + dist[left, mirror]
        cost_pair[k] = np.where(right_side, c, big)
    for units, cost in ((mids, cost_mid), (pairs, cost_pair)):
        inner = np.array([(u if isinstance(u, int) else u[0]) >= 60 for u in units])
        cost = cost + np.where(inner[:, None] & ~on_mouth[None], big, 0.0)
        rows, cols = linear_sum_assignment(cost)
        for r_i, v in zip(rows, cols, strict=True):
            u = units[r_i]
            if isinstance(u, int):
                out[u] = v
            else:
                out[u[0]], out[u[1]] = v, mirror[v]
    return out


# --------------------------------------------------------------------------------------------
# 7. weights
# --------------------------------------------------------------------------------------------
def procrustes_weights(can: F64, samples: list[F64], zero: I64) -> F64:
    """Inverse residual variance of each vertex over the aligned samples, 0 on ``zero``, mean 1."""
    w = np.ones(len(can))
    w[zero] = 0.0
    for _ in range(3):
        res = []
        for f in samples:
            s, r, t = similarity(f, can, w)
            res.append(((s * f @ r.T + t - can) ** 2).sum(1))
        var = np.mean(res, 0)
        w = 1.0 / (var + np.median(var))
        w[zero] = 0.0
        w /= w.mean()
    return w


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
VIDEOS = ["liveportrait_d12.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"]
TILT_DEG = -20.0


def build() -> dict[str, NDArray[np.generic]]:
    net = LandmarkNet()
    names, shapes = collect_shapes(net)
    print(f"  {len(shapes)} photos: {', '.join(names)}")
    mean, _ = generalised_procrustes(shapes)
    mirror = mirror_pairs(mean)
    can = symmetrise(mean, mirror)
    can *= FACE_WIDTH / float(np.ptp(can[:, 0]))
    video = collect_video(net)
    print(f"  {sum(len(v) for v in video)} video frames")
    # Triangulate the projection seen from slightly below (TILT_DEG about x), which keeps the
    # underside of the nose from folding; the mesh is still a height field over that view.
    view = can @ pitch_matrix(TILT_DEG).T
    tri = symmetric_delaunay(view[:, :2], mirror)
    topo = find_openings(can, view[:, :2], tri, mirror, video)
    tri = face_oval_outline(can, view, topo.triangles, mirror)
    tri = unfold(can, [view[:, :2], cylinder_coords(view)[0]], tri, mirror)
    loops = boundary_loops(tri)
    print(f"  {len(tri)} triangles, boundary loops {sorted(len(lp) for lp in loops)}")
    uv = uv_layout(view, tri)
    lm68 = landmark_map(net, can, mirror, topo.mouth)
    zero = np.concatenate([topo.eye_right, topo.eye_left, topo.mouth])
    frames = [f for clip in video for f in clip[::4]]
    weights = procrustes_weights(can, shapes + frames, zero)
    return {
        "canonical": can.astype(np.float32),
        "triangles": tri.astype(np.int32),
        "uv": uv.astype(np.float32),
        "landmarks68": lm68.astype(np.int32),
        "weights": weights.astype(np.float32),
        "mirror": mirror.astype(np.int32),
        "eye_right": topo.eye_right.astype(np.int32),
        "eye_left": topo.eye_left.astype(np.int32),
        "mouth": topo.mouth.astype(np.int32),
        "tilt_deg": np.float32(TILT_DEG),
        "sources": np.array(names + VIDEOS),
    }


def eval_aflw() -> None:
    """Evaluation only: NME of the shipped 68-point map and pose-sign agreement on AFLW2000-3D."""
    sys.path.insert(0, str(REPO))
    import torch
    from scipy.io import loadmat

    from facefleet.geometry import estimate_pose, load_geometry, to_landmarks68

    geo = load_geometry()
    net = LandmarkNet()
    d = SHARED / AFLW_DIR
    rows = [ln.split("\t") for ln in (d / "index.tsv").read_text().splitlines()[1:] if ln.strip()]
    bins: dict[str, list[float]] = {}
    agree = {"yaw": 0, "pitch": 0, "roll": 0}
    print(f"{'image':16s} {'bin':9s} {'NME%':>6s}   yaw/pitch/roll est vs GT (deg)")
    for r in rows:
        gt = load_mat_points((d / r[0]).with_suffix(".mat"))
        lm = landmarks_in_image(net, load_rgb(d / r[0]), roi_from_points(gt), roll=False)
        lm_img = lm * np.array([1.0, 1.0, -1.0])  # facefleet contract: z larger = closer
        t = torch.from_numpy(lm_img[None]).float()
        pred = to_landmarks68(t)[0].numpy()
        lo, hi = gt.min(0), gt.max(0)
        nme = float(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(np.prod(hi - lo)) * 100)
        bins.setdefault(r[4], []).append(nme)
        pose = estimate_pose(t)
        pp = np.degrees(loadmat(str((d / r[0]).with_suffix(".mat")))["Pose_Para"][0, :3])
        est = {"yaw": float(pose.yaw[0]), "pitch": float(pose.pitch[0]), "roll": float(pose.roll[0])}
        ref = {"pitch": pp[0], "yaw": pp[1], "roll": pp[2]}
        for k in agree:
            agree[k] += int(np.sign(est[k]) == np.sign(ref[k]) or abs(ref[k]) < 3)
        print(
            f"{r[0]:16s} {r[4]:9s} {nme:6.2f}   "
            + "  ".join(f"{est[k]:6.1f}/{ref[k]:6.1f}" for k in ("yaw", "pitch", "roll"))
        )
    means = {k: float(np.mean(v)) for k, v in bins.items()}
    print(
        "bin means:",
        {k: round(v, 2) for k, v in means.items()},
        f"mean of bin means {np.mean(list(means.values())):.2f} %",
    )
    print(f"pose sign agreement (|GT| < 3 deg counts as agreeing) over {len(rows)} images: {agree}")
    del geo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-aflw", action="store_true", help="only evaluate the shipped data")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.eval_aflw:
        eval_aflw()
        return
    data = build()
    if args.out.is_file():  # the 68-point map is refitted by scripts/fit_landmarks68.py: keep it
        with np.load(args.out) as old:
            data["landmarks68"] = old["landmarks68"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)  # type: ignore[arg-type]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
