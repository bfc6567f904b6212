"""Typed results of video processing: the faces of one frame, with their track ids."""

from __future__ import annotations

from dataclasses import dataclass, field

from facefleet.types import ImageResult


@dataclass
class FrameResult:
    """Everything found in one frame of a video.

    ``index``: the frame's index in the video (0-based, presentation order, as
    :mod:`facefleet.io.video` counts); ``time``: its presentation time in seconds from the stream's
    start; ``result``: the faces, exactly as for a photo (``result.source`` is the video's path,
    coordinates are pixels of the upright frame: the video's rotation applied); ``track_ids``: one id
    per face of ``result.faces``, in the same order: the same person keeps an id from frame to frame
    while tracked (ids are local to a stream of frames until :mod:`facefleet.video.stitch` makes them
    global across chunks).
    """

    index: int
    time: float
    result: ImageResult
    track_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.track_ids and len(self.track_ids) != len(self.result.faces):
            raise ValueError(
                f"frame {self.index}: {len(self.track_ids)} track ids for {len(self.result.faces)} faces"
            )
