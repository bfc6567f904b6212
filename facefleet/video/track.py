"""Faces tracked through the frames of many independent streams at once, as MediaPipe does for video.

Each stream is one run of consecutive frames (a chunk of a video) with its own :class:`TrackState`; one
:meth:`FaceTracker.step` takes the next frame of each of several streams, so that the networks see one
batch per step however short each stream is. Per stream and frame:

- the detector runs when the stream has no live track, every ``detect_every`` frames, at a scene cut (the
  mean absolute difference of a 32x32 grey thumbnail to the previous frame's exceeds ``scene_cut``; all
  tracks end) and on every frame when ``tracking`` is off;
- otherwise each track's face is meshed in the crop its previous landmarks give (MediaPipe's tracking ROI,
  :func:`facefleet.mesh.roi.roi_from_landmarks`), with ``tracked_refine`` extra passes; when the mesh loses
  a face (presence under ``min_presence``) the detector runs on that same frame instead;
- at a detection, faces take the id of the live track whose last landmark box overlaps theirs most
  (greedy IoU >= 0.3), the others new ids; tracks not found again end. Two tracks on one face (landmark
  boxes' IoU > 0.5) keep the older id.
- with ``smoothing``, a One Euro filter (:mod:`facefleet.video.smooth`) per track smooths the landmarks;
  the 68 points, pose (and gaze) are computed again from the smoothed landmarks. The next crop always
  comes from the raw landmarks (no lag fed back).

On tracked frames ``Face.bbox`` is the box the detector gave at the track's last detection, carried by the
landmarks (same place and size relative to their box), ``keypoints`` are read off the mesh (eye centres,
nose tip, mouth centre or corners, ear tragions) and ``score`` is the last detection's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facefleet.detect.detections import Detections
from facefleet.types import Face, Gaze, ImageResult, Pose
from facefleet.video.boxes import box_iou, greedy_match
from facefleet.video.smooth import OneEuroFilter, filter_many
from facefleet.video.types import FrameResult

if TYPE_CHECKING:
    from facefleet.config.sections import VideoConfig
    from facefleet.pipeline import Reconstructor

__all__ = ["FaceTracker", "TrackState"]

THUMB = 32  # side of the grey thumbnails compared for scene cuts
MATCH_IOU = 0.3  # least landmark-box IoU of a detected face and the track it continues
DUPLICATE_IOU = 0.5  # two tracks whose landmark boxes overlap more are one face
# mesh vertices: 33 and 263 make the synthetic detections' ROI exactly roi_from_landmarks'; the rest are
# finite stand-ins for BlazeFace's other keypoints
_ROI_KEYPOINTS = (33, 263, 1, 13, 234, 454)
# keypoints of tracked faces read off the mesh, as (vertices averaged) per detector keypoint
_BLAZE_POINTS = ((33, 133), (263, 362), (1,), (13, 14), (234,), (454,))
_CENTER_POINTS = ((33, 133), (263, 362), (1,), (61,), (291,))
_MESH_POINTS = {"blazeface": _BLAZE_POINTS, "centerface": _CENTER_POINTS}


@dataclass
class _Track:
    """A live track: ``landmarks`` ``(V, 3)`` float32 raw (unsmoothed) of its last frame, ``box`` ``(4,)``
    their x-y box, ``rel_box`` ``(4,)`` the detector's box at the last detection relative to the landmark
    box (corners in box widths/heights from its centre), the last detection's ``score`` and ``source``
    (index in :data:`facefleet.types.FACE_SOURCES`)."""

    id: int
    landmarks: np.ndarray
    box: np.ndarray
    rel_box: np.ndarray
    score: float
    source: int
    smoother: OneEuroFilter


@dataclass
class TrackState:
    """One stream's tracking state (from :meth:`FaceTracker.new_stream`): live tracks, frames since the
    last detection, the previous frame's thumbnail ``(THUMB * THUMB,)`` on the device, the filter clock,
    the next track id (from 0) and counts of the frames seen and detected."""

    fps: float
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 0
    since_detect: int = 0
    thumb: Tensor | None = None
    clock: float | None = None
    frames: int = 0
    detected: int = 0

    @property
    def track_ids(self) -> list[int]:
        """Ids of the live tracks."""
        return [t.id for t in self.tracks]


class FaceTracker:
    """Track faces through consecutive frames of several streams, batched on the reconstructor's device.

    >>> tracker = FaceTracker(rec, VideoConfig())                     # doctest: +SKIP
    >>> a, b = tracker.new_stream(25.0), tracker.new_stream(25.0)     # doctest: +SKIP
    >>> fa, fb = tracker.step([im_a, im_b], [a, b], [0, 0], [0.0, 0.0], ["a.mp4", "b.mp4"])  # doctest: +SKIP

    ``rec`` meshes and detects (its ``refine`` on detected frames); ``video`` gives the ``[video]`` settings
    (tracking, detect_every, scene_cut, tracked_refine, smoothing, min_cutoff, beta; default: defaults).
    """

    def __init__(self, rec: Reconstructor, video: VideoConfig | None = None) -> None:
        from facefleet.config.sections import VideoConfig

        self.rec = rec
        self.video = VideoConfig() if video is None else video
        self.topology = rec.topology

    def new_stream(self, fps: float) -> TrackState:
        """A stream with no track yet; ``fps`` spaces the filter's clock where frame times do not increase."""
        if not fps > 0:
            raise ValueError(f"FaceTracker: fps must be > 0, got {fps}")
        return TrackState(fps=float(fps))

    def step(
        self,
        frames: Sequence[Tensor] | Tensor,
        states: Sequence[TrackState],
        indices: Sequence[int],
        times: Sequence[float],
        source: str | Sequence[str],
    ) -> list[FrameResult]:
        """The next frame of each stream: ``frames`` ``(3, H, W)`` uint8 on the reconstructor's device (sizes
        may differ between streams), or one ``(B, 3, H, W)`` tensor; ``states[i]`` is the stream of
        ``frames[i]`` (each stream at most once per call), ``indices``/``times`` the frames' indices and
        presentation times (seconds), ``source`` the video path (one for all, or one per frame).
        Returns one :class:`FrameResult` per frame, ``track_ids`` aligned with ``result.faces``."""
        n = len(states)
        names = [source] * n if isinstance(source, str) else [str(s) for s in source]
        if not len(frames) == len(indices) == len(times) == len(names) == n:
            raise ValueError(
                f"FaceTracker.step: {len(frames)} frames, {n} states, {len(indices)} indices, "
                f"{len(times)} times, {len(names)} sources"
            )
        if len({id(s) for s in states}) != n:
            raise ValueError("FaceTracker.step: a stream appears twice in one step")
        if n == 0:
            return []
        v = self.video
        for st, cut in zip(states, self._scene_cuts(frames, states)):
            if cut:
                st.tracks = []
        detect = [not v.tracking or not st.tracks or st.since_detect >= v.detect_every for st in states]
        pairs: list[list[tuple[Face, _Track, bool]]] = [[] for _ in range(n)]
        images: list[ImageResult] = [ImageResult("", 0, 0)] * n  # every frame is tracked or detected
        tracked = [i for i in range(n) if not detect[i]]
        if tracked:
            sub = _subset(frames, tracked)
            done = self._mesh_tracked(sub, [states[i] for i in tracked], [names[i] for i in tracked])
            for i, r in zip(tracked, done):
                follow = _follow(states[i], r)
                if follow is None:  # the mesh lost a face: detect on this frame
                    detect[i] = True
                else:
                    pairs[i], images[i] = follow, r
        found = [i for i in range(n) if detect[i]]
        if found:
            sub = _stacked(_subset(frames, found))
            det = self.rec.detector(sub)
            done = self.rec.reconstruct_tensors(sub, [names[i] for i in found], detections=det)
            for i, r in zip(found, done):
                pairs[i], images[i] = self._match(states[i], r), r
                states[i].since_detect = 0
                states[i].detected += 1
        for st in states:
            st.since_detect += 1
            st.frames += 1
        clocks = [_tick(st, float(t)) for st, t in zip(states, times)]
        kept = [self._update(st, p) for st, p in zip(states, pairs)]
        return self._output(kept, images, clocks, indices, times)

    # -- stages --------------------------------------------------------------------------------------
    def _scene_cuts(self, frames: Sequence[Tensor] | Tensor, states: Sequence[TrackState]) -> list[bool]:
        """Whether each frame is a scene cut; stores its thumbnail in its stream (one host sync)."""
        if self.video.scene_cut <= 0:
            return [False] * len(states)
        thumbs = _thumbnails(frames)  # (B, THUMB * THUMB)
        olds = {i: st.thumb for i, st in enumerate(states) if st.thumb is not None}
        prev = list(olds)
        cuts = [False] * len(states)
        if prev:
            diff = (thumbs[prev] - torch.stack(list(olds.values()))).abs().mean(1).tolist()
            for i, d in zip(prev, diff):
                cuts[i] = d > self.video.scene_cut
        for st, t in zip(states, thumbs):
            st.thumb = t
        return cuts

    def _mesh_tracked(
        self, frames: Sequence[Tensor] | Tensor, states: list[TrackState], names: list[str]
    ) -> list[ImageResult]:
        """Mesh every live track of ``states`` (their frames at the same positions of ``frames``) in the crop
        of its previous landmarks: synthetic detections whose box is the landmarks' box and whose
        keypoints 0 and 1 are vertices 33 and 263 (the ROI is then ``roi_from_landmarks``'s)."""
        dev = self.rec.device
        tracks = [(k, t) for k, st in enumerate(states) for t in st.tracks]
        lm = torch.from_numpy(np.stack([t.landmarks for _, t in tracks])).to(dev)  # (N, V, 3)
        xy = lm[..., :2]
        det = Detections(
            boxes=torch.cat([xy.amin(1), xy.amax(1)], 1),  # (N, 4), bitwise each track's box
            keypoints=xy[:, list(_ROI_KEYPOINTS)],  # (N, 6, 2)
            scores=torch.tensor([t.score for _, t in tracks], dtype=torch.float32, device=dev),
            image_index=torch.tensor([k for k, _ in tracks], dtype=torch.long, device=dev),
            num_images=len(states),
            source=torch.tensor([t.source for _, t in tracks], dtype=torch.uint8, device=dev),
        )
        refine = self.video.tracked_refine
        return self.rec.reconstruct_tensors(_stacked(frames), names, detections=det, refine=refine)

    def _match(self, st: TrackState, r: ImageResult) -> list[tuple[Face, _Track, bool]]:
        """A detected frame's faces -> their tracks: the live track they overlap most, else a new one."""
        boxes = _boxes([f.landmarks for f in r.faces])
        olds = np.array([t.box for t in st.tracks], dtype=np.float32).reshape(-1, 4)
        owner = dict(greedy_match(box_iou(boxes, olds), MATCH_IOU))
        out = []
        for j, f in enumerate(r.faces):
            if j in owner:
                tr = st.tracks[owner[j]]
            else:  # its id (unless a duplicate), box, score and source are set by _update
                smoother = OneEuroFilter(self.video.min_cutoff, self.video.beta)
                tr = _Track(-1, f.landmarks, boxes[j], np.zeros(4, np.float32), f.score, 0, smoother)
            out.append((f, tr, True))
        return out

    def _update(
        self, st: TrackState, pairs: list[tuple[Face, _Track, bool]]
    ) -> list[tuple[Face, _Track, bool]]:
        """Drop duplicates (the older track keeps the face; new faces come after every live track, by
        score), give new faces their ids, then make the faces' tracks the stream's live tracks with this
        frame's raw landmarks (and, where detected, the detector's box, score, source)."""
        from facefleet.types import FACE_SOURCES

        keep: list[int] = []
        boxes = _boxes([f.landmarks for f, _, _ in pairs])
        iou = box_iou(boxes, boxes) if len(pairs) > 1 else None  # one face: no duplicate
        for j in sorted(range(len(pairs)), key=lambda j: (pairs[j][1].id < 0, pairs[j][1].id, j)):
            if iou is None or all(iou[j, k] <= DUPLICATE_IOU for k in keep):
                keep.append(j)
        kept = [pairs[j] for j in sorted(keep)]  # the pipeline's order (score)
        for (f, tr, detected), box in zip(kept, [boxes[j] for j in sorted(keep)]):
            tr.landmarks, tr.box = f.landmarks, box
            if tr.id < 0:
                tr.id, st.next_id = st.next_id, st.next_id + 1
            if detected:
                c, wh = (box[:2] + box[2:]) / 2, np.maximum(box[2:] - box[:2], 1e-6)
                tr.rel_box = (np.asarray(f.bbox, np.float32) - np.tile(c, 2)) / np.tile(wh, 2)
                tr.score, tr.source = f.score, FACE_SOURCES.index(f.detector)
        st.tracks = [tr for _, tr, _ in kept]
        return kept

    def _output(
        self,
        kept: list[list[tuple[Face, _Track, bool]]],
        images: list[ImageResult],
        clocks: list[float],
        indices: Sequence[int],
        times: Sequence[float],
    ) -> list[FrameResult]:
        """FrameResults: smoothed landmarks (and pose, 68 points, gaze from them) where smoothing is on,
        box and keypoints carried by the landmarks on tracked frames."""
        from facefleet.families.gaze import gaze_angles
        from facefleet.geometry import estimate_pose

        topo, v = self.topology, self.video
        flat = [(i, f, tr, det) for i, p in enumerate(kept) for f, tr, det in p]
        smooth = v.smoothing and len(flat) > 0
        # (N, V, 3) landmarks of every face of the step: smoothed (one filter pass over all tracks) or raw
        lm = (
            np.stack([f.landmarks for _, f, _, _ in flat]).astype(np.float32, copy=False)
            if flat
            else np.zeros((0, topo.n_vertices, 3), np.float32)
        )
        if smooth:
            lm = filter_many(
                [tr.smoother for _, _, tr, _ in flat],
                lm,
                np.array([clocks[i] for i, _, _, _ in flat], dtype=np.float64),
                np.array([_side(tr.box) for _, _, tr, _ in flat], dtype=np.float64),
            )
        mat, ypr, gaze = np.zeros((len(flat), 4, 4)), [[0.0] * 3] * len(flat), None
        if smooth:
            pose = estimate_pose(torch.from_numpy(lm[:, : topo.n_mesh]))
            mat = pose.matrix.numpy().astype(np.float64)
            ypr = np.stack([pose.yaw.numpy(), pose.pitch.numpy(), pose.roll.numpy()], 1).tolist()
            gaze = gaze_angles(lm, mat, topo) if topo.has_iris else None
        out = [
            FrameResult(int(k), float(t), dataclasses.replace(r, faces=[]))
            for k, t, r in zip(indices, times, images)
        ]
        tracked = [j for j, (_, _, _, det) in enumerate(flat) if not det]
        if tracked:  # boxes carried by the landmarks and keypoints read off them, all tracked faces at once
            boxes = _boxes(lm[tracked])
            kps = {name: _mesh_keypoints(lm[tracked], pts) for name, pts in _MESH_POINTS.items()}
            row = {j: r for r, j in enumerate(tracked)}
        for j, (i, f, tr, det) in enumerate(flat):
            if smooth:
                f = dataclasses.replace(
                    f, landmarks=lm[j], landmarks68=lm[j, topo.idx68, :2],
                    pose=Pose(yaw=ypr[j][0], pitch=ypr[j][1], roll=ypr[j][2], matrix=mat[j]),
                    gaze=None if gaze is None else Gaze(float(gaze[j, 0]), float(gaze[j, 1])),
                )  # fmt: skip
            if not det:
                box = boxes[row[j]]
                c, wh = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
                bbox = np.tile(c, 2) + tr.rel_box * np.tile(wh, 2)
                pts = kps["blazeface" if f.detector == "blazeface" else "centerface"][row[j]]
                side = float((bbox[2:] - bbox[:2]).max())
                f = dataclasses.replace(f, bbox=bbox, keypoints=pts, small=side < self.rec.small_face)
            out[i].result.faces.append(f)
            out[i].track_ids.append(tr.id)
        return out


# -- helpers ------------------------------------------------------------------------------------------
def _follow(st: TrackState, r: ImageResult) -> list[tuple[Face, _Track, bool]] | None:
    """A tracked frame's faces -> their tracks (a face's box is bitwise its track's previous landmark
    box: the nearest is taken), or None when the mesh dropped one of the stream's tracks."""
    if len(r.faces) < len(st.tracks):
        return None
    olds = np.array([t.box for t in st.tracks], dtype=np.float32)
    out: list[tuple[Face, _Track, bool]] = []
    free = list(range(len(st.tracks)))
    for f in r.faces:
        k = min(free, key=lambda k: float(np.abs(olds[k] - np.asarray(f.bbox, np.float32)).sum()))
        free.remove(k)
        out.append((f, st.tracks[k], False))
    return out


def _subset(frames: Sequence[Tensor] | Tensor, idx: list[int]) -> Sequence[Tensor] | Tensor:
    """The frames at ``idx`` (a ``(B, 3, H, W)`` batch stays one tensor)."""
    if isinstance(frames, Tensor):
        if len(idx) == frames.shape[0]:
            return frames
        return frames[torch.tensor(idx, device=frames.device)]
    return [frames[i] for i in idx]


def _stacked(frames: Sequence[Tensor] | Tensor) -> Sequence[Tensor] | Tensor:
    """Same-size frames as one ``(B, 3, H, W)`` tensor (made once, shared by the detector and the mesh)."""
    from facefleet.detect.views import stack_images

    if isinstance(frames, Tensor) or len(frames) < 2 or len({tuple(f.shape) for f in frames}) > 1:
        return frames
    return stack_images(frames)


def _thumbnails(frames: Sequence[Tensor] | Tensor) -> Tensor:
    """Grey thumbnails ``(B, THUMB * THUMB)`` float32 in [0, 1] of ``(3, H, W)`` uint8 frames, on their
    device: frames subsampled to about 4 pixels per thumbnail pixel, then area-averaged, per size."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(tuple(f.shape), []).append(i)
    out = torch.empty(len(frames), THUMB * THUMB, device=frames[0].device)
    grey = torch.tensor([0.299, 0.587, 0.114], device=out.device).view(1, 3, 1, 1) / 255.0
    for shape, idx in groups.items():
        s = max(1, min(shape[1:]) // (4 * THUMB))
        small = torch.stack([frames[i][:, ::s, ::s] for i in idx]).float()  # (G, 3, h, w)
        g = F.adaptive_avg_pool2d((small * grey).sum(1, keepdim=True), THUMB)
        out[torch.tensor(idx, device=out.device)] = g.flatten(1)
    return out


def _tick(st: TrackState, t: float) -> float:
    """The filter clock of a stream's next frame: its time, or one frame period on when times do not
    increase (duplicated or missing timestamps)."""
    st.clock = t if st.clock is None or t > st.clock else st.clock + 1.0 / st.fps
    return st.clock


def _boxes(landmarks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``(N, 4)`` float32 x-y boxes of ``N`` faces' ``(V, 3)`` landmarks (a list, or one ``(N, V, 3)``)."""
    if len(landmarks) == 0:
        return np.zeros((0, 4), np.float32)
    xy = np.asarray(landmarks if isinstance(landmarks, np.ndarray) else np.stack(landmarks), np.float32)
    xy = xy[..., :2]
    return np.concatenate([xy.min(1), xy.max(1)], 1)


def _mesh_keypoints(landmarks: np.ndarray, points: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``(N, K, 2)`` float32 keypoints read off ``(N, V, 3)`` landmarks: per keypoint the mean of its
    vertices (``points``, :data:`_BLAZE_POINTS` or :data:`_CENTER_POINTS`)."""
    return np.stack([landmarks[:, list(p), :2].mean(1) for p in points], 1).astype(np.float32)


def _side(box: np.ndarray) -> float:
    """A face's size in pixels: the long side of its landmark box (the One Euro filter's speed scale)."""
    return max(float((box[2:] - box[:2]).max()), 1.0)
