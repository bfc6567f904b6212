"""The Python API of video: the faces of every frame of one video, in order, in this process.

>>> from facefleet import Reconstructor
>>> from facefleet.video import iter_video
>>> rec = Reconstructor(device="cuda", precision="fp16")                   # doctest: +SKIP
>>> for frame in iter_video("talk.mp4", rec):                              # doctest: +SKIP
...     for face, tid in zip(frame.result.faces, frame.track_ids):
...         print(frame.index, frame.time, tid, face.pose.yaw)

One stream, one frame per step (tracking is sequential): for folders of videos or long ones on many
devices, ``facefleet video`` (:func:`facefleet.engine.video_job.run_video`) runs chunks side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from facefleet.config import VideoConfig
from facefleet.sources.items import FrameRange
from facefleet.video.types import FrameResult


def iter_video(
    path: str | os.PathLike[str],
    rec: Any = None,
    *,
    video: VideoConfig | None = None,
    start: int = 0,
    count: int | None = None,
) -> Iterator[FrameResult]:
    """:class:`FrameResult` of frames ``start .. start + count - 1`` of ``path`` (default: all), tracked
    with ``video``'s settings (``[video]``: tracking, detect_every, scene_cut, smoothing, ...) by ``rec``
    (a :class:`~facefleet.pipeline.Reconstructor`; default: one on the CPU). Frames are decoded on
    ``rec``'s device where it has NVDEC, and turned upright by the video's rotation. Raises
    :class:`~facefleet.io.video.VideoError` for a file that is not a readable video."""
    from facefleet.io.video import probe_video
    from facefleet.video.chunks import upright_frames
    from facefleet.video.track import FaceTracker

    if rec is None:
        from facefleet.pipeline import Reconstructor

        rec = Reconstructor()
    src = os.fspath(path)
    info = probe_video(src)
    n = info.frames - start if count is None else count
    if n <= 0:
        return
    tracker = FaceTracker(rec, video or VideoConfig())
    state = tracker.new_stream(float(info.fps) if info.fps else 25.0)
    for i, t, frame in upright_frames(FrameRange(src, start, n), info.rotation, rec.device):
        yield tracker.step([frame], [state], [i], [t], src)[0]
