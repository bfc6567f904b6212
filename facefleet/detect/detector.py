"""Batched face detection with MediaPipe's BlazeFace short- and full-range models.

Pipeline (all on the device): letterbox every view to the model's square input, one batched network
call per model, SSD decoding, score threshold, mapping back to source pixels, weighted NMS per image.

A *view* is either a whole image or (for large images) a square tile of it. ``model="auto"`` runs the
short-range model (faces close to the camera) and the full-range model (smaller, farther faces) on
every whole image and the full-range model on overlapping tiles of images whose long side exceeds
``tile_threshold`` (2048: phone photos), and of images longer than ``crowd_tile_threshold`` (768)
where the whole-image passes saw a face smaller than ``crowd_face_fraction`` (7 %) of the long side
(crowds, distant people) or several faces under ``group_face_fraction`` (12 %: group photos), so that
small faces in large photos are found without tiling every 1080p frame; all candidates of one image
are merged by the weighted NMS.

Every stage runs per group of same-size images (letterbox, tiles cut as strided views of the group's
stack, one network call per chunk of ``max_batch`` views, weighted NMS of all images at once): the number
of operations and host syncs does not grow with the number of images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from facefleet._device import host_to_device
from facefleet.detect.anchors import (
    DETECTOR_SPECS,
    DetectorSpec,
    decode_centres,
    decode_keypoints,
    sigmoid_scores,
    ssd_anchors,
)
from facefleet.detect.detections import Detections, ImageBatch, as_image_list, finish, image_count
from facefleet.detect.merge import inside_larger, keep_better
from facefleet.detect.nms import weighted_nms
from facefleet.detect.views import (
    ViewTransform,
    letterbox_params,
    letterbox_sizes,
    letterbox_tiles,
    stack_images,
)
from facefleet.models import CompileCache

__all__ = [
    "Detections",
    "FaceDetector",
    "ImageBatch",
    "as_image_list",
    "image_count",
    "tile_grid",
    "tile_layout",
]

Net = Callable[[Tensor], Sequence[Tensor]]


def tile_grid(length: int, tile: int, overlap: int) -> tuple[list[int], list[float], list[float]]:
    """Tile starts covering ``[0, length)`` with tiles of ``tile`` pixels overlapping by >= ``overlap``.

    Also returns each tile's *core* ``[lo, hi)``: the tiles' cores partition the line (interior borders
    at the middle of each overlap), so an object whose centre is in a core and whose size is at most the
    overlap lies wholly inside that tile.
    """
    if length <= tile:
        return [0], [-math.inf], [math.inf]
    n = math.ceil((length - tile) / max(1, tile - overlap)) + 1
    starts = [round(j * (length - tile) / (n - 1)) for j in range(n)]
    bounds = [(starts[j + 1] + starts[j] + tile) / 2 for j in range(n - 1)]
    return starts, [-math.inf, *bounds], [*bounds, math.inf]


def tile_layout(h: int, w: int, tile_size: int, max_tiles: int) -> tuple[int, int]:
    """(tile side, overlap) in source pixels of the full-range tiles of an ``h x w`` image: at most
    ``max_tiles`` tiles along the long side (and no more along the short one), each at least
    ``tile_size``; capped at the short side (a panorama's tiles are then more than ``max_tiles``).

    The overlap is what a tile may keep: a face larger than it must be found on the whole image, so the
    overlap is at least 24 full-range input pixels of the whole-image view (``long side / 8``) and a
    quarter of a tile. The side follows from the count: ``n`` tiles of side ``s`` overlapping by ``o``
    span ``n * s - (n - 1) * o``, so ``s = (long + (max_tiles - 1) * o) / max_tiles``; leaving the
    overlap out of it (``long / max_tiles``) would cut nearly twice as many tiles per side as intended.
    A larger ``max_tiles`` gives smaller tiles, hence smaller faces found, at more network views per
    tiled image."""
    long_side = max(h, w)
    need = math.ceil(24 * long_side / DETECTOR_SPECS["full"].input_size)
    m = max(1, int(max_tiles))
    side = min(min(h, w), max(int(tile_size), math.ceil((long_side + (m - 1) * need) / m)))
    return side, min(side // 2, max(side // 4, need))


class FaceDetector:
    """Batched BlazeFace face detector.

    >>> det = FaceDetector(device="cuda")                                  # doctest: +SKIP
    >>> out = det([img_a, img_b])          # (3, H, W) uint8 tensors on the device, any sizes
    >>> out.boxes, out.keypoints, out.scores, out.image_index              # doctest: +SKIP

    Args:
        device, dtype: where and in which precision the networks run (geometry stays float32).
        model: "short" (faces within ~2 m), "full" (up to ~5 m) or "auto" (both plus tiling, see the
            module docstring).
        min_score: detection score threshold (both models).
        max_faces: at most this many faces per image (highest scores).
        nms_iou: IoU above which candidates merge in the weighted NMS.
        model_dir: folder with the weight files (see ``facefleet.models``).
        net: networks to use instead of loading them: a callable for "short"/"full", or a mapping
            {"short": ..., "full": ...}; each takes ``(B, 3, S, S)`` in [-1, 1] and returns
            (regressors ``(B, A, 16)``, score logits ``(B, A, 1)``).
        tile: tile large images ("auto" mode and "full" mode).
        tile_size: tile side in source pixels (at least; grows so that a side has <= ``max_tiles`` tiles).
        tile_threshold: images whose long side is larger than this are tiled (default 2048: phone photos
            such as 4032x3024 are, 1080p frames are not; lower it to search smaller faces in smaller
            images, at the cost of ~8 more full-range passes per tiled image).
        max_tiles: most tiles along one side of an image (the overlap counted: :func:`tile_layout`). The
            trade-off of tiled images' speed against the smallest faces found: 6 (default) cuts 6 x 3 = 18
            tiles of 520 px on a 1920x1080 frame (about ``tile_size``: the small faces a 512 px tile finds)
            and 6 x 5 = 30 of 1092 px on a 4032x3024 photo; 5 cuts 15 and 20 tiles and finds a few
            percent fewer faces in crowds; 4 (8 and 12 tiles) about a third fewer (docs/benchmarks.md).
        crowd_tile_threshold, crowd_face_fraction: images whose long side is between
            ``crowd_tile_threshold`` and ``tile_threshold`` are tiled too when the whole-image passes
            found a face smaller than ``crowd_face_fraction`` of the long side (crowds, distant people);
            a portrait or a 1080p frame with a near face is not. ``crowd_face_fraction=0`` turns this off.
        group_face_fraction: such images are tiled too when the whole-image passes found at least two
            faces smaller than this fraction of the long side (group photos; 0 turns this off).
        max_batch: most views per network call.
        calibrate: map full-range boxes to the short-range box convention (see ``_FULL_BOX_SCALE``),
            so boxes mean the same whichever model found the face.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        model: str = "auto",
        min_score: float = 0.5,
        max_faces: int = 100,
        nms_iou: float = 0.3,
        model_dir: str | Path | None = None,
        net: Net | Mapping[str, Net] | None = None,
        *,
        tile: bool = True,
        tile_size: int = 512,
        tile_threshold: int = 2048,
        max_tiles: int = 6,
        crowd_tile_threshold: int = 768,
        crowd_face_fraction: float = 0.07,
        group_face_fraction: float = 0.12,
        max_batch: int = 256,
        calibrate: bool = True,
        compiled: bool | None = None,
        compile_cache: CompileCache | None = None,
    ) -> None:
        if model not in ("auto", "short", "full"):
            raise ValueError(f"FaceDetector: model must be 'auto', 'short' or 'full', got {model!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model
        self.min_score = float(min_score)
        self.max_faces = int(max_faces)
        self.nms_iou = float(nms_iou)
        self.model_dir = model_dir
        self.tile = bool(tile)
        self.tile_size = int(tile_size)
        self.tile_threshold = int(tile_threshold)
        self.max_tiles = int(max_tiles)
        self.crowd_tile_threshold = int(crowd_tile_threshold)
        self.crowd_face_fraction = float(crowd_face_fraction)
        self.group_face_fraction = float(group_face_fraction)
        self.max_batch = int(max_batch)
        self.calibrate = bool(calibrate)
        self.compiled = compiled  # load_model's ``compiled`` (None: its default)
        # this detector's compiled code (the letterbox cast), shared with its owner's other stages if given
        self.compile_cache: CompileCache = {} if compile_cache is None else compile_cache
        kinds = ("short", "full") if model == "auto" else (model,)
        self._nets: dict[str, Net] = {}
        if net is not None:
            if isinstance(net, Mapping):
                missing = [k for k in kinds if k not in net]
                if missing:
                    raise ValueError(f"FaceDetector: net mapping lacks {missing} needed by model={model!r}")
                self._nets = {k: net[k] for k in kinds}
            elif len(kinds) == 1:
                self._nets = {kinds[0]: net}
            else:
                raise ValueError("FaceDetector: model='auto' needs net={'short': ..., 'full': ...}")
        self._kinds = kinds
        self._shift_cache: dict[torch.device, Tensor] = {}
        self._anchors = {
            k: ssd_anchors(DETECTOR_SPECS[k].input_size, DETECTOR_SPECS[k].strides,
                           DETECTOR_SPECS[k].interpolated_anchor, self.device)
            for k in kinds
        }  # fmt: skip

    # most image elements letterboxed in one operation: bounds the memory of the float16 copy (2 bytes per
    # element: 0.5 GiB, 43 1080p frames), while each chunk costs the host ~10 operations (a smaller budget
    # means more chunks per batch, whose launches take the networks' thread's time)
    _letterbox_budget = 1 << 28

    @property
    def _compiled_casts(self) -> bool | None:
        """The letterboxes' uint8 -> float16 cast as compiled code (:func:`~facefleet.detect.views.to_half`):
        not when the networks' compilation is turned off (``compiled=False``), else its default."""
        return False if self.compiled is False else None

    # -- networks -----------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        """The detector models this detector runs: ("short", "full"), ("short",) or ("full",)."""
        return self._kinds

    def network(self, kind: str) -> Net:
        """The network for "short" or "full" (loaded on first use)."""
        if kind not in self._nets:
            from facefleet.models import load_model

            self._nets[kind] = load_model(
                DETECTOR_SPECS[kind].model_name,
                self.device,
                self.dtype,
                self.model_dir,
                compiled=self.compiled,
            )
        return self._nets[kind]

    def _run(self, kind: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(V, 3, S, S)`` in [0, 1] -> regressors ``(V, A, 16)`` and scores ``(V, A)``, float32."""
        net = self.network(kind)
        regs, logits = [], []
        for s in range(0, x.shape[0], self.max_batch):
            out = net((x[s : s + self.max_batch] * 2.0 - 1.0).to(self.dtype))
            regs.append(out[0].float())
            logits.append(out[1].float())
        return torch.cat(regs), sigmoid_scores(torch.cat(logits))

    # -- views --------------------------------------------------------------------------------
    def _tiles(
        self, h: int, w: int, threshold: int | None = None
    ) -> tuple[int, int, list[tuple[int, int, float, float, float, float]]]:
        """(tile side, overlap, [(x, y, core x0, core y0, core x1, core y1)]) for an image whose long side
        exceeds ``threshold`` (default ``tile_threshold``), or no tiles."""
        long_side = max(h, w)
        if not self.tile or long_side <= (self.tile_threshold if threshold is None else threshold):
            return 0, 0, []
        side, overlap = tile_layout(h, w, self.tile_size, self.max_tiles)
        xs, cx0, cx1 = tile_grid(w, side, overlap)
        ys, cy0, cy1 = tile_grid(h, side, overlap)
        if len(xs) * len(ys) <= 1:
            return 0, 0, []
        tiles = [(x, y, cx0[i], cy0[j], cx1[i], cy1[j]) for j, y in enumerate(ys) for i, x in enumerate(xs)]
        return side, overlap, tiles

    def _groups(self, images: list[Tensor], batch: Tensor | None) -> list[tuple[list[int], Tensor]]:
        """Same-size images stacked once: [(image indices, ``(G, 3, H, W)`` uint8)] (a batch tensor is
        one group as it is, no copy)."""
        if batch is not None:
            return [(list(range(batch.shape[0])), batch)]
        members: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            members.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
        return [
            (m, images[m[0]][None] if len(m) == 1 else stack_images([images[i] for i in m]))
            for m in members.values()
        ]

    def _whole_letterboxes(self, groups: list[tuple[list[int], Tensor]]) -> dict[str, list[list[Tensor]]]:
        """Whole-image letterboxes of every image for every model of this detector, per kind, per size
        group, per chunk of at most ``_letterbox_budget`` elements: the models' sizes share one pass
        over the frames (:func:`letterbox_sizes`)."""
        kinds = self._kinds
        sizes = [DETECTOR_SPECS[k].input_size for k in kinds]
        out: dict[str, list[list[Tensor]]] = {k: [] for k in kinds}
        for members, stack in groups:
            h, w = int(stack.shape[2]), int(stack.shape[3])
            step = max(1, self._letterbox_budget // (3 * h * w))
            chunks: dict[str, list[Tensor]] = {k: [] for k in kinds}
            for s in range(0, len(members), step):
                boxes = letterbox_sizes(stack[s : s + step], sizes, self._compiled_casts, self.compile_cache)
                for k, x in zip(kinds, boxes, strict=True):
                    chunks[k].append(x)
            for k in kinds:
                out[k].append(chunks[k])
        return out

    def _views(
        self,
        kind: str,
        groups: list[tuple[list[int], Tensor]],
        whole: list[list[Tensor]] | None,
        tile_threshold: int | None,
    ) -> tuple[Tensor, ViewTransform, Tensor, Tensor, Tensor, bool] | None:
        """Letterboxed inputs ``(V, 3, S, S)``, their transforms, image index ``(V,)``, tile cores
        ``(V, 4)`` (infinite for whole images), the largest box side kept per view ``(V,)`` and whether
        any view is a tile; None when there is no view. ``whole``: this model's whole-image letterboxes
        per size group (from :meth:`_whole_letterboxes`; None: no whole-image views); tiles of images
        longer than ``tile_threshold`` (None: no tiles).

        Per size group: the whole images, then every tile of all images of the group at once
        (:func:`letterbox_tiles`), so the number of operations depends on the number of distinct sizes,
        never on the number of images. The view table is built on the host and copied to the device
        once."""
        size = DETECTOR_SPECS[kind].input_size
        inf = math.inf
        xs: list[Tensor] = []
        rows: list[
            tuple[float, ...]
        ] = []  # per view: image, scale x/y, offset x/y, core x0/y0/x1/y1, max side
        for g, (members, stack) in enumerate(groups):
            h, w = int(stack.shape[2]), int(stack.shape[3])
            if whole is not None:
                xs.extend(whole[g])
                sx, sy, ox, oy = letterbox_params(h, w, size)
                rows += [(i, sx, sy, ox, oy, -inf, -inf, inf, inf, inf) for i in members]
            if tile_threshold is None:
                continue
            side, overlap, tiles = self._tiles(h, w, tile_threshold)
            if not tiles:
                continue
            sx, sy, ox, oy = letterbox_params(side, side, size)
            # tile-major, like the rows below
            xs.append(
                letterbox_tiles(
                    stack, [(t[0], t[1]) for t in tiles], side, size, budget=self._letterbox_budget
                )
            )
            for x0, y0, c0, c1, c2, c3 in tiles:
                rows += [(i, sx, sy, ox + x0, oy + y0, c0, c1, c2, c3, float(overlap)) for i in members]
        if not rows:
            return None
        table = host_to_device(torch.tensor(rows, dtype=torch.float64), self.device)  # one copy
        return (
            torch.cat(xs) if len(xs) > 1 else xs[0],
            ViewTransform(table[:, 1:3].float(), table[:, 3:5].float()),
            table[:, 0].long(),
            table[:, 5:9].float(),
            table[:, 9].float(),
            any(r[9] != inf for r in rows),
        )

    def _candidates(
        self,
        kind: str,
        groups: list[tuple[list[int], Tensor]],
        whole: list[list[Tensor]] | None = None,
        tile_threshold: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
        """Run one model on its views (see :meth:`_views`); candidates above ``min_score`` in source pixels:
        boxes ``(M, 4)``, keypoints ``(M, 6, 2)``, scores ``(M,)``, image index ``(M,)``,
        from-a-tile flags ``(M,)``."""
        spec: DetectorSpec = DETECTOR_SPECS[kind]
        views = self._views(kind, groups, whole, tile_threshold)
        if views is None:
            return None
        x, tf, img_idx, cores, max_side, tiles = views
        regs, scores = self._run(kind, x)
        anchors = self._anchors[kind]
        vs, vo = tf.scale[:, None], tf.offset[:, None]  # (V, 1, 2): model input -> source pixels
        # the box centre and half size of every anchor of every view, in source pixels (a few hundred
        # thousand rows: microseconds on a GPU), so that one nonzero, the one wait for the device
        # here, picks the candidates; keypoints (three quarters of the values) only for those
        c, half = decode_centres(regs, anchors, spec.input_size)  # (V, A, 2)
        c, half = c * vs + vo, half * vs
        keep = scores >= self.min_score
        if tiles:  # tile views keep only faces centred in their core and no larger than the overlap
            core = cores[:, None]
            keep &= (c >= core[..., :2]).all(-1) & (c < core[..., 2:]).all(-1)
            keep &= 2 * half.amax(-1) <= max_side[:, None]
        v, a = torch.nonzero(keep, as_tuple=True)
        del keep
        c, half = c[v, a], half[v, a]
        if kind == "full" and self.calibrate:  # to the short-range box convention
            half = half * _FULL_BOX_SCALE
            c = torch.addcmul(c, half, self._calibration_shift(c))
        kps = decode_keypoints(regs[v, a], anchors[a], spec.input_size, spec.num_keypoints) * vs[v] + vo[v]
        return torch.cat([c - half, c + half], 1), kps, scores[v, a], img_idx[v], torch.isfinite(max_side[v])

    def _calibration_shift(self, like: Tensor) -> Tensor:
        """``(2,)`` the centre shift per half box size of :data:`_FULL_BOX_DY` (cached per device)."""
        t = self._shift_cache.get(like.device)
        if t is None:
            t = self._shift_cache[like.device] = torch.tensor([0.0, 2 * _FULL_BOX_DY], device=like.device)
        return t

    # -- public ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, images: ImageBatch) -> Detections:
        """Detect faces in ``(B, 3, H, W)`` uint8 or a list of ``(3, H, W)`` uint8 tensors (any sizes)."""
        batch = images if isinstance(images, Tensor) and images.ndim == 4 else None
        if batch is not None:
            n, imgs = image_count(batch, self.device), []
        else:
            imgs = as_image_list(images, self.device)
            n = len(imgs)
        groups = self._groups(imgs, batch)
        letterboxes = self._whole_letterboxes(groups)
        cands = {}
        for k in self._kinds:
            c = self._candidates(k, groups, whole=letterboxes.pop(k))
            assert c is not None
            cands[k] = c
        if "full" in cands and self.tile:
            tiled = self._tile_candidates(groups, cands)
            if tiled is not None:
                cands["full"] = tuple(torch.cat([a, b]) for a, b in zip(cands["full"], tiled))  # type: ignore[assignment]
            whole = [c for k, c in cands.items() if k == "short"] + [cands["full"]]
            wb = torch.cat([c[0] for c in whole])
            wi = torch.cat([c[3] for c in whole])
            w_whole = ~torch.cat([c[4] for c in whole])  # only whole-image candidates count as larger
            b, kp, sc, ix, tile = cands["full"]
            keep = (~(tile & inside_larger(b, ix, wb, wi, w_whole))).nonzero().squeeze(1)
            cands["full"] = (b[keep], kp[keep], sc[keep], ix[keep], tile[keep])
        if len(self._kinds) == 1:
            det = self._nms(*cands[self._kinds[0]][:4])
        else:  # one NMS (one set of host syncs) for both models: model j's images are groups j*n..
            both = [cands[k] for k in self._kinds]
            merged = self._nms(
                torch.cat([c[0] for c in both]),
                torch.cat([c[1] for c in both]),
                torch.cat([c[2] for c in both]),
                torch.cat([c[3] + j * n for j, c in enumerate(both)]),
            )
            from_b = merged.image_index >= n
            merged.image_index = merged.image_index - n * from_b
            return finish(merged, self.max_faces, n, keep=keep_better(merged, ~from_b))
        return finish(det, self.max_faces, n)

    def _tile_candidates(
        self, groups: list[tuple[list[int], Tensor]], cands: Mapping[str, tuple[Tensor, ...]]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
        """Full-range candidates on tiles: of every image longer than ``tile_threshold``, and of images
        longer than ``crowd_tile_threshold`` where the whole-image passes found a face smaller than
        ``crowd_face_fraction`` of the long side (distant people: likely more, smaller ones). At most one
        host sync (which images qualify), and only when some image size is in the crowd range."""
        big = [(m, st) for m, st in groups if max(st.shape[2], st.shape[3]) > self.tile_threshold]
        mid = [
            (m, st)
            for m, st in groups
            if (self.crowd_face_fraction > 0 or self.group_face_fraction > 0)
            and self.crowd_tile_threshold < max(st.shape[2], st.shape[3]) <= self.tile_threshold
        ]
        if mid:
            n = sum(len(m) for m, _ in groups)
            sides = torch.zeros(n)
            for m, st in groups:
                sides[m] = float(max(st.shape[2], st.shape[3]))
            long_side = host_to_device(sides, self.device)  # an index list on the device would wait for it
            boxes = torch.cat([c[0] for c in cands.values()])
            idx = torch.cat([c[3] for c in cands.values()])
            crowd = self._crowded(boxes, idx, long_side).tolist()  # the one host sync
            for m, st in mid:
                local = [j for j, i in enumerate(m) if crowd[i]]
                if local:
                    sel = host_to_device(local, st.device)
                    big.append(([m[j] for j in local], st if len(local) == len(m) else st[sel]))
        if not big:
            return None
        thr = min(self.tile_threshold, self.crowd_tile_threshold)
        return self._candidates("full", big, tile_threshold=thr)

    def _crowded(self, boxes: Tensor, idx: Tensor, long_side: Tensor) -> Tensor:
        """Which images ``(n,)`` the whole-image candidates (``boxes`` ``(M, 4)`` of images ``idx``)
        call for tiles: a face smaller than ``crowd_face_fraction`` of the long side (distant people),
        or a group: faces under ``group_face_fraction`` whose centres spread wider than the largest of
        them (at least two faces of that size: group photos, where more, smaller faces are likely)."""
        # masked reductions over every candidate rather than selections of some: a boolean selection
        # waits for the device (7 of a 1080p batch's 21 waits were here)
        n = int(long_side.shape[0])
        side = (boxes[:, 2:] - boxes[:, :2]).amax(1)
        frac = side / long_side[idx]
        small = (frac < self.crowd_face_fraction).to(side.dtype)
        crowd = side.new_zeros(n).scatter_reduce(0, idx, small, "amax") > 0
        if self.group_face_fraction > 0:
            m = frac < self.group_face_fraction
            ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
            at, out, inf = idx[:, None].expand(-1, 2), ~m[:, None], math.inf
            lo = ctr.new_full((n, 2), inf).scatter_reduce(0, at, ctr.masked_fill(out, inf), "amin")
            hi = ctr.new_full((n, 2), -inf).scatter_reduce(0, at, ctr.masked_fill(out, -inf), "amax")
            largest = side.new_zeros(n).scatter_reduce(0, idx, side.masked_fill(~m, 0.0), "amax")
            crowd |= (largest > 0) & ((hi - lo).amax(1) > largest)
        return crowd

    def _nms(self, boxes: Tensor, kps: Tensor, scores: Tensor, idx: Tensor) -> Detections:
        return Detections(*weighted_nms(boxes, kps, scores, idx, self.nms_iou, self.max_faces))


# full-range boxes are ~6.7 % larger and ~4.3 % (of the short-range box side) higher than short-range boxes of
# the same face (median over 55 faces of the test photos): mapped to the short-range convention, which the
# face-mesh ROI (scale 1.5 of the box) was designed for
_FULL_BOX_SCALE = 1.0 / 1.067
_FULL_BOX_DY = 0.043
