"""The per-device batch pipeline: images -> faces -> landmarks of a model family -> pose, 68 points, texture.

``Reconstructor`` is the single source of truth for what a face result is (DESIGN.md). Every
stage keeps tensors on its device; only the small per-face results cross to the host, in one
transfer per batch.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facefleet._device import host_to_device, resolve_device, resolve_precision
from facefleet.families import DEFAULT_FAMILY, FamilySpec, get_family
from facefleet.io.arrays import as_rgb_uint8, check_tensor
from facefleet.types import FACE_SOURCES, Face, Gaze, ImageResult, Pose

if TYPE_CHECKING:
    from facefleet.detect.detections import Detections

ImageInput = "str | Path | np.ndarray | torch.Tensor"

_KP = 6 * 2  # detector keypoints per face, (x, y) each


@dataclass(frozen=True)
class _Columns:
    """Columns of the per-face table copied to the host once per batch (see reconstruct_tensors): the
    landmarks (V * 3), box (4), keypoints, then score, presence, keep, image index, source (the detector
    family: :data:`facefleet.types.FACE_SOURCES`) and small."""

    lm: int

    @property
    def box(self) -> int:
        return self.lm

    @property
    def score(self) -> int:
        return self.lm + 4 + _KP

    @property
    def presence(self) -> int:
        return self.score + 1

    @property
    def keep(self) -> int:
        return self.score + 2

    @property
    def idx(self) -> int:
        return self.score + 3

    @property
    def source(self) -> int:
        return self.score + 4

    @property
    def small(self) -> int:
        return self.score + 5


def resolve_runtime(
    runtime: str, device: torch.device, dtype: torch.dtype, family: str | FamilySpec = DEFAULT_FAMILY
) -> str:
    """ "auto" -> "litert" on the CPU in fp32 when ai-edge-litert is importable and can run the family's
    weights (no custom operators), else "torch"."""
    if runtime not in ("auto", "torch", "litert"):
        raise ValueError(f"unknown runtime {runtime!r}: use auto, torch or litert")
    fam = get_family(family)
    if runtime == "litert" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError("the LiteRT runtime runs on the CPU in fp32 only")
    if runtime == "litert" and not fam.litert:
        raise ValueError(f"the LiteRT runtime cannot run model family {fam.name!r} (custom operators)")
    if runtime != "auto":
        return runtime
    if device.type != "cpu" or dtype != torch.float32 or not fam.litert:
        return "torch"
    import importlib.util

    return "litert" if importlib.util.find_spec("ai_edge_litert") is not None else "torch"


class Reconstructor:
    """Photo(s) -> per-face textured 3D mesh, landmarks and head pose, batched on one device.

    >>> rec = Reconstructor(device="cuda", precision="fp16")       # doctest: +SKIP
    >>> results = rec(["a.jpg", "b.png"], texture=True)            # doctest: +SKIP
    >>> results[0].faces[0].pose.yaw                               # doctest: +SKIP

    Args:
        device: "cpu", "cuda", "cuda:N" or "auto".
        precision: network precision, "fp32" (default), "fp16" (CUDA) or "bf16". Geometry
            (pose, mapping back to pixels) always runs in fp32.
        model_dir: a folder holding the MediaPipe weights (or the mediapipe wheel) for
            air-gapped machines; default: the cache, fetched on first use.
        detector: the detector mode (:mod:`facefleet.detect.modes`): "blazeface" (MediaPipe's BlazeFace,
            its model from ``blazeface``), "centerface" (crowds, small faces) or "combined" (both merged);
            the legacy "auto", "short" and "full" mean "blazeface" with that model.
        blazeface: BlazeFace's model in the blazeface and combined modes: "auto" (short-range model,
            full-range model and tiling where the image is large or crowded), "short" or "full".
        centerface_score: CenterFace's heatmap threshold (centerface and combined modes).
        centerface_max_side: CenterFace runs on images scaled down to this long side (0: full size).
        small_face: faces whose box side is under this many pixels are *small*
            (:attr:`facefleet.types.Face.small`): the mesh is not reliable at their size (68-point NME on the
            AFLW2000-3D subset scaled down: 4.76 % at 48 px, 5.23 % at 32, 5.93 % at 24, 2 of 8 faces lost
            at 16; 4.54 % full size); in the centerface and combined modes they are kept whatever the mesh's
            presence score, so that anonymisation covers them.
        max_faces: at most this many faces per image (highest scores kept).
        min_score: detector score threshold.
        min_presence: faces whose mesh network face-presence probability is lower are dropped.
        refine: extra mesh passes, each on the ROI of the previous pass's landmarks (default 2; 0 is
            ~1.3x faster on CPUs, at 5.04 % instead of 4.54 % 68-point NME on the AFLW2000-3D subset;
            docs/benchmarks.md, "Speed and accuracy settings").
        texture_size: side of the square UV texture in texels.
        runtime: "torch" (the PyTorch port; always on GPUs), "litert" (the official LiteRT
            interpreter, CPU only) or "auto": on the CPU LiteRT when ``ai-edge-litert`` is
            installed, since it measured 2-4x faster than the torch port there
            (``python -m facefleet.bench.runtimes``), else torch.
        threads: threads of the LiteRT interpreters (default: theirs). The torch networks use the
            process's torch threads: the caller sets those (``torch.set_num_threads``), this constructor
            switches nothing process-wide.
        family: the model family, a name of :func:`facefleet.families.list_families`: "mediapipe468"
            (default, 468 landmarks) or "mediapipe478" (the attention mesh: refined eyes and lips, iris
            points, and each face's ``gaze``). Landmarks are ``(V, 3)`` with V from its topology.
        compiled: on CUDA, run the networks' CUDA graphs from ``torch.compile``'s fused kernels (default:
            when Triton is installed; :func:`facefleet.models.compile_available`).
        max_tiles: most detector tiles along an image's long side (``[model] max_tiles``; see
            :class:`facefleet.detect.FaceDetector`).

    The ``[model]`` settings (:class:`facefleet.config.ModelConfig`) are parameters of the same
    names: ``Reconstructor(device=..., **model.arguments())``.
    """

    def __init__(
        self,
        device: str | torch.device | None = "cpu",
        precision: str | torch.dtype = "fp32",
        *,
        model_dir: str | Path | None = None,
        detector: str = "blazeface",
        blazeface: str = "auto",
        centerface_score: float = 0.5,
        centerface_max_side: int = 0,
        small_face: int = 32,
        max_faces: int = 16,
        min_score: float = 0.5,
        min_presence: float = 0.5,
        texture_size: int = 512,
        runtime: str = "auto",
        threads: int | None = None,
        refine: int = 2,
        compiled: bool | None = None,
        family: str | FamilySpec = DEFAULT_FAMILY,
        max_tiles: int = 6,
    ) -> None:
        from facefleet.detect.modes import build_detector, resolve_detector
        from facefleet.geometry import load_geometry
        from facefleet.mesh import MeshPredictor

        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.texture_size = int(texture_size)
        self.max_faces = int(max_faces)
        self.geometry = load_geometry()
        self.family = get_family(family)
        self.topology = self.family.topology
        self._cols = _Columns(self.topology.n_vertices * 3)
        self.runtime = resolve_runtime(runtime, self.device, self.dtype, self.family)
        self.detector_mode, blaze_model = resolve_detector(detector, blazeface)
        self.small_face = float(small_face)
        det_net: Any = None
        mesh_net: Any = None
        if self.runtime == "litert":
            from facefleet.models.litert_runner import LiteRTModel

            kinds = {"auto": ("short", "full"), "short": ("short",), "full": ("full",)}[blaze_model]
            names = {"short": "face_detection_short_range", "full": "face_detection_full_range"}
            det_nets = {k: LiteRTModel(names[k], num_threads=threads, model_dir=model_dir) for k in kinds}
            det_net = det_nets if blaze_model == "auto" else det_nets[kinds[0]]
            mesh_net = LiteRTModel(self.family.weights[-1], num_threads=threads, model_dir=model_dir)
        # the stages' torch.compile code, and any compiler failure, belong to this reconstructor only
        self.compile_cache: dict[str, Any] = {}
        self.detector = build_detector(
            self.detector_mode,
            blazeface=blaze_model,
            centerface_score=centerface_score,
            centerface_max_side=centerface_max_side,
            runtime=runtime,
            device=self.device,
            dtype=self.dtype,
            min_score=min_score,
            max_faces=max_faces,
            max_tiles=max_tiles,
            model_dir=model_dir,
            blazeface_net=det_net,
            compiled=compiled,
            compile_cache=self.compile_cache,
            alternates=True,  # both views of a face both detectors found are meshed: _better_views
        )
        self.mesher = MeshPredictor(
            device=self.device,
            dtype=self.dtype,
            model_dir=model_dir,
            min_presence=min_presence,
            net=mesh_net,
            refine=refine,
            compiled=compiled,
            family=self.family,
            compile_cache=self.compile_cache,
        )
        self._sampler: Any = None

    # -- public API -------------------------------------------------------------------------
    def warmup(self) -> None:
        """Prepare the networks for their fixed batch sizes now rather than on the first batches (on
        CUDA this builds the cuDNN plans: seconds per network); nothing to do for other runtimes."""
        for net in self.networks():
            warm = getattr(net, "warmup", None)
            if callable(warm):
                warm()
        if self.device.type == "cuda":
            from facefleet.detect.views import warm_up_letterbox
            from facefleet.mesh.sampling import warm_up_gather

            # crops (as the mesh stage makes them) and textures
            crops = (self.mesher.padding_mode, self.dtype)
            warm_up_gather(self.device, compiled=self.mesher.compiled, grid=crops, cache=self.compile_cache)
            warm_up_letterbox(self.device, compiled=self.detector._compiled_casts, cache=self.compile_cache)
            torch.cuda.synchronize(self.device)

    def networks(self) -> list[Any]:
        """The torch (or LiteRT) networks this reconstructor runs: the detector's, then the mesh's
        (loaded on first use)."""
        return [self.detector.network(k) for k in self.detector.kinds] + [self.mesher.network]

    def use_cuda_graphs(self, enable: bool) -> Reconstructor:
        """Turn the networks' CUDA graphs on or off (``TFLiteModule.use_cuda_graphs``; off: every call
        runs eager operators). An eager reconstructor (``compiled=False`` and graphs off) is ready as
        soon as its weights are loaded: the engine runs one while another one compiles."""
        for net in self.networks():
            use = getattr(net, "use_cuda_graphs", None)
            if callable(use):
                use(enable)
        return self

    def precompile(self) -> None:
        """Build the ``torch.compile`` code of the networks' fixed batch sizes and of the compiled
        stages (crop gather, letterbox), without capturing CUDA graphs, on the calling thread's current
        stream. The captures that :meth:`warmup` makes afterwards find the compiled code in torch's
        caches, so they take little time. Safe on a background thread while *another* Reconstructor
        runs batches on the same device: nothing here captures a graph or touches that one's modules.
        Nothing to do off CUDA or when the networks are not compiled."""
        if self.device.type != "cuda":
            return
        for net in self.networks():
            # TFLiteModule compiles a fixed-shape body at its first CUDA-graph capture (in inference
            # mode, as TFLiteModule.warmup runs); the same compilation made here on dummy input is what
            # that capture then finds in torch's cache
            body = getattr(net, "_compiled_body", None)
            if body is None or not (getattr(net, "compiled", False) and getattr(net, "cuda_graphs", False)):
                continue
            probe = net._dtype_probe
            with torch.inference_mode():
                for n in net.batch_sizes:
                    body(torch.zeros((n, *net.input_shape), dtype=probe.dtype, device=probe.device))
        from facefleet.detect.views import warm_up_letterbox
        from facefleet.mesh.sampling import warm_up_gather

        crops = (self.mesher.padding_mode, self.dtype)
        warm_up_gather(self.device, compiled=self.mesher.compiled, grid=crops, cache=self.compile_cache)
        warm_up_letterbox(self.device, compiled=self.detector._compiled_casts, cache=self.compile_cache)
        torch.cuda.current_stream(self.device).synchronize()

    def __call__(
        self,
        images: Sequence[Any],
        *,
        sources: Sequence[str] | None = None,
        texture: bool = False,
    ) -> list[ImageResult]:
        """Reconstruct every face of a batch of images.

        images: file paths, (H, W, 3) uint8 RGB arrays, or (3, H, W) uint8 tensors.
        Unreadable files give an ``ImageResult`` with ``error`` set; the others are processed.
        Returns one result per input, in order.
        """
        from facefleet.io.decode import ImageDecodeError, read_image

        if isinstance(images, (str, Path, np.ndarray, torch.Tensor)) and not (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        ):
            images = [images]
        n = len(images)
        if sources is not None and len(sources) != n:
            raise ValueError(f"got {n} images but {len(sources)} sources")
        names = [
            str(sources[i])
            if sources is not None
            else (str(im) if isinstance(im, (str, Path)) else f"image_{i}")
            for i, im in enumerate(images)
        ]
        results: list[ImageResult | None] = [None] * n
        tensors: list[torch.Tensor] = []
        ok_idx: list[int] = []
        for i, im in enumerate(images):
            try:
                if isinstance(im, (str, Path)):
                    arr = read_image(im)
                    t = torch.from_numpy(arr).permute(2, 0, 1)
                elif isinstance(im, np.ndarray):
                    with warnings.catch_warnings():  # read-only arrays (np.asarray of a PIL image): only
                        # read here (copied to the device, or made contiguous, below)
                        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                        t = torch.from_numpy(as_rgb_uint8(im, names[i])).permute(2, 0, 1)
                elif isinstance(im, torch.Tensor):
                    t = check_tensor(im, names[i])
                else:
                    raise TypeError(f"{names[i]}: unsupported image type {type(im).__name__}")
            except (ImageDecodeError, ValueError, TypeError) as e:
                results[i] = ImageResult(source=names[i], width=0, height=0, error=str(e))
                continue
            tensors.append(t.to(self.device, non_blocking=True).contiguous())
            ok_idx.append(i)
        if tensors:
            done = self.reconstruct_tensors(tensors, [names[i] for i in ok_idx], texture=texture)
            for i, r in zip(ok_idx, done):
                results[i] = r
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def reconstruct_tensors(
        self,
        images: Sequence[torch.Tensor] | torch.Tensor,
        sources: Sequence[str],
        *,
        texture: bool = False,
        timings: dict[str, float] | None = None,
        texture_out: np.ndarray | None = None,
        detections: Detections | None = None,
        refine: int | None = None,
    ) -> list[ImageResult]:
        """Core batch entry point: ``images`` are (3, H, W) uint8 tensors on ``self.device``, or one
        ``(B, 3, H, W)`` uint8 tensor of same-size images (no copy is made of it then).

        ``detections`` (on ``self.device``, indexing ``images``): mesh these faces instead of running the
        detector (video tracking: faces found from the previous frame's landmarks); ``refine``: the mesh's
        extra passes for this call (default: the constructor's).

        ``texture_out``: a flat uint8 host array the textures are copied into, as many as it holds (those
        faces' ``texture`` are views of it; the others get host memory of their own), e.g. shared memory
        that writer processes read (:mod:`facefleet.engine.texture_ring`).

        When ``timings`` is given, seconds spent per stage ('detect', 'mesh', 'transfer', 'texture')
        are added to it (device time between stage boundaries on CUDA, measured with events, no extra
        synchronisation; wall time on the CPU), and 'geometry' (head poses and the 68-point landmarks,
        computed on the host from the transferred landmarks: wall time).
        """
        from facefleet.families.gaze import gaze_angles
        from facefleet.geometry import estimate_pose

        cols = self._cols

        if len(images) != len(sources):
            raise ValueError(f"got {len(images)} images but {len(sources)} sources")
        if len(images) == 0:
            return []
        events: list[tuple[str, Any, Any, dict[str, float]]] = []  # this call's (threads may share self)
        if isinstance(images, torch.Tensor) and images.ndim == 4:  # no view per image
            sizes = [(int(images.shape[-1]), int(images.shape[-2]))] * int(images.shape[0])
        else:
            sizes = [(int(t.shape[-1]), int(t.shape[-2])) for t in images]
        if (
            not isinstance(images, torch.Tensor)
            and len(images) > 1
            and len(set(sizes)) == 1
            and len({(t.device, t.dtype, t.ndim) for t in images}) == 1  # else the stages say what is wrong
        ):
            from facefleet.detect.views import stack_images

            images = stack_images(images)  # one copy; the detector and the mesh stage then share it
        with self._stage("detect", timings, events):
            det = self.detector(images) if detections is None else detections
        with self._stage("mesh", timings, events):
            mesh = self.mesher(images, det, refine=refine)
        with self._stage("transfer", timings, events):
            # every per-face value in one float32 table: one asynchronous copy (into pinned memory on
            # CUDA) and one wait
            n = len(det)
            side = (det.boxes[:, 2:] - det.boxes[:, :2]).float().amax(1)
            small = side < self.small_face
            # small faces are kept whatever the mesh's presence where CenterFace runs (anonymisation covers
            # them); the blazeface mode keeps today's faces
            rescue = small if self.detector_mode != "blazeface" else torch.zeros_like(small)
            table = torch.cat(
                [
                    mesh.landmarks.float().reshape(n, cols.lm),
                    det.boxes.float(),
                    det.keypoints.reshape(n, _KP).float(),
                    torch.stack(
                        [
                            det.scores.float(),
                            mesh.presence.float(),
                            (mesh.keep | rescue).float(),
                            det.image_index.float(),  # exact: batches are far below 2**24 images
                            det.sources().float(),
                            small.float(),
                        ],
                        1,
                    ),
                ],
                1,
            ).to("cpu", non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            kept = np.flatnonzero(table.numpy()[:, cols.keep] > 0.5)
            if self.detector_mode == "combined":
                kept = kept[_better_views(table.numpy()[kept], cols, self.topology.n_mesh)]
            host = table.numpy()[kept]  # a copy: pinned blocks are for reuse
        topo = self.topology
        lm_host = host[:, : cols.lm].reshape(-1, topo.n_vertices, 3)
        t_geo = time.perf_counter()
        # head poses on the host, of the kept faces, from the landmarks as transferred: on CUDA the
        # batched 3x3 SVD synchronises the device (and ran cuSOLVER kernels) mid-batch; here ~1 ms
        pose = estimate_pose(torch.from_numpy(np.ascontiguousarray(lm_host[:, : topo.n_mesh])))
        mat = pose.matrix.numpy().astype(np.float64)
        yaw, pitch, roll = (t.tolist() for t in (pose.yaw, pose.pitch, pose.roll))
        lm68 = lm_host[:, topo.idx68, :2]
        gaze = gaze_angles(lm_host, mat, topo) if topo.has_iris else None
        if timings is not None:
            timings["geometry"] = timings.get("geometry", 0.0) + time.perf_counter() - t_geo
        img_idx = host[:, cols.idx].astype(np.int64)
        scores = host[:, cols.score]
        tex_host: list[np.ndarray] | None = None
        with self._stage("texture", timings, events):
            if texture and len(host) > 0:
                keep = host_to_device(kept, self.device)
                mesh_lm = mesh.landmarks[keep, : topo.n_mesh].float()  # the textured mesh's vertices
                tex = self.sampler(images, mesh_lm, mesh.image_index[keep])
                rgba = tex.permute(0, 2, 3, 1)  # (m, T, T, 4)
                per = int(rgba[0].numel())
                fit = 0 if texture_out is None else min(len(rgba), texture_out.size // per)
                parts = []
                if fit and texture_out is not None:  # from the device into the caller's buffer
                    parts.append(texture_out[: fit * per].reshape(fit, *rgba.shape[1:]))
                    torch.from_numpy(parts[0]).copy_(rgba[:fit])
                if fit < len(rgba):
                    parts.append(rgba[fit:].contiguous().cpu().numpy())
                tex_host = [t for part in parts for t in part]
        _collect_events(events)
        results = [ImageResult(source=str(s), width=w, height=h) for s, (w, h) in zip(sources, sizes)]
        boxes = host[:, cols.box : cols.box + 4]
        kps = host[:, cols.box + 4 : cols.box + 4 + _KP].reshape(-1, _KP // 2, 2)
        source = host[:, cols.source].astype(np.int64)
        small_h = host[:, cols.small] > 0.5
        # highest score first within each image
        for j in np.lexsort((-scores, img_idx)):
            results[int(img_idx[j])].faces.append(
                Face(
                    bbox=boxes[j],
                    score=float(scores[j]),
                    keypoints=kps[j] if source[j] == 0 else kps[j, :5],  # CenterFace's 5 points
                    landmarks=lm_host[j],
                    landmarks68=lm68[j],
                    pose=Pose(yaw=yaw[j], pitch=pitch[j], roll=roll[j], matrix=mat[j]),
                    presence=float(host[j, cols.presence]),
                    texture=None if tex_host is None else tex_host[j],
                    gaze=None if gaze is None else Gaze(float(gaze[j, 0]), float(gaze[j, 1])),
                    detector=FACE_SOURCES[source[j]],
                    small=bool(small_h[j]),
                )
            )
        return results

    @property
    def sampler(self) -> Any:
        if self._sampler is None:
            from facefleet.texture import TextureSampler

            self._sampler = TextureSampler(
                size=self.texture_size,
                device=self.device,
                compiled=self.mesher.compiled,
                compile_cache=self.compile_cache,
            )
        return self._sampler

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float] | None, events: list[Any]) -> Any:
        """Time a stage into ``timings``: on CUDA with a pair of events appended to ``events`` (read back
        once the batch's results reached the host, see :func:`_collect_events`: no synchronisation
        between stages, so the host keeps queueing work), elsewhere with the wall clock."""
        if timings is None:
            yield
            return
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            events.append((name, start, end, timings))
            return
        t0 = time.perf_counter()
        yield
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def _better_views(rows: np.ndarray, cols: _Columns, n_mesh: int, iou: float = 0.5) -> np.ndarray:
    """Which of the kept faces' ``rows`` (the per-face table) to keep where two are views of one face (the
    combined detector gives BlazeFace's and CenterFace's of a face both found): of meshes of one image
    whose landmark boxes overlap by more than ``iou``, the one with the higher presence (ties: the first,
    BlazeFace's). A boolean mask ``(N,)``."""
    n = len(rows)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    from facefleet.detect.nms import box_iou

    xy = torch.from_numpy(np.ascontiguousarray(rows[:, : cols.lm])).view(n, -1, 3)[:, :n_mesh, :2]
    boxes = torch.cat([xy.amin(1), xy.amax(1)], 1)
    img = rows[:, cols.idx]
    over = box_iou(boxes, boxes).numpy() > iou
    over &= img[:, None] == img[None]
    others = ~np.eye(n, dtype=bool)
    for i in np.argsort(-rows[:, cols.presence], kind="stable"):
        if keep[i]:
            keep[over[i] & others[i]] = False
    return keep


def _collect_events(events: list[tuple[str, Any, Any, dict[str, float]]]) -> None:
    """Add the CUDA-event stage times of a finished batch to their ``timings`` dicts."""
    for name, start, end, timings in events:
        end.synchronize()
        timings[name] = timings.get(name, 0.0) + start.elapsed_time(end) / 1e3
