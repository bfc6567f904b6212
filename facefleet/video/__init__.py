"""Video: faces tracked through frames, smoothing, overlays and anonymisation, encoding and muxing
with the original audio, chunk stitching (see :mod:`facefleet.io.video` for frame-exact reading)."""

from facefleet.video.api import iter_video
from facefleet.video.types import FrameResult

__all__ = ["FrameResult", "iter_video"]
