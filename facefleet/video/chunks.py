"""Chunks of videos through one device: many chunks tracked side by side, frame ``t`` of each in one batch.

A worker holds up to ``streams`` chunks (units of the queue, each a :class:`FrameRange`) at once. Each
chunk is read by its own thread (PyAV decodes with the GIL released), tracked sequentially
(:class:`~facefleet.video.track.FaceTracker` keeps its state), and its drawn frames go to its own x264
encoders on an encoder thread. Every step takes the next frame of every chunk held, so the networks see
batches as large as the number of chunks while each chunk stays in frame order; a chunk that ends is
written and replaced by a newly claimed one at the next step (batches stay full).

A chunk first tracks its *lead-in*, the ``[video] overlap`` frames before its start: their rows are kept
(flagged) for stitching track ids to the previous chunk's, and never drawn or encoded. Its files
(:func:`chunk_files`) are written atomically, the segments before the rows, so a chunk whose rows exist is
whole; a crash mid-chunk leaves nothing the rerun would keep.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from facefleet.config import VideoConfig
from facefleet.io.atomic import atomic_write_bytes
from facefleet.io.video import frame_timestamps, probe_video, quarter_turns
from facefleet.sources.items import FrameRange
from facefleet.video.table import chunk_table
from facefleet.video.types import FrameResult

CHUNKS_DIR = "_chunks"
#: the drawn outputs among ``[video] formats``: each chunk encodes a segment of each
DRAWN = ("overlay", "anonymize")
_END = object()


def video_key(source: str) -> str:
    """The folder name of a video's chunk files: its file name and a hash of its path (two videos of the
    same name in different folders do not meet)."""
    digest = hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(source))[:60]
    return f"{stem}-{digest}"


def chunk_files(out_dir: str | os.PathLike[str], item: FrameRange) -> dict[str, Path]:
    """Where a chunk's files go: ``parquet`` (its rows) and one MP4 segment per drawn format."""
    d = Path(out_dir) / CHUNKS_DIR / video_key(item.source)
    base = f"{item.start:09d}"
    return {"parquet": d / f"{base}.parquet", **{f: d / f"{base}.{f}.mp4" for f in DRAWN}}


def _prefetch(frames: Iterator[Any], depth: int) -> queue_mod.Queue[Any]:
    """Items of ``frames`` read ahead on a thread into a bounded queue, then :data:`_END` (or the
    exception reading raised)."""
    q: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=depth)

    def read() -> None:
        try:
            for x in frames:
                q.put(x)
            q.put(_END)
        except BaseException as e:  # handed to the device thread, which fails the chunk
            q.put(e)

    threading.Thread(target=read, name="video-reader", daemon=True).start()
    return q


@dataclass(frozen=True)
class _Source:
    """What every chunk of one video needs from its headers: rotation (degrees), frame rate, the pts of
    every frame, and the encoder settings of its drawn segments (None: nothing drawn)."""

    rotation: float
    fps: float
    pts: tuple[int, ...]
    encoding: Any


@dataclass
class _Chunk:
    """A chunk being processed: its unit, reader, tracker state, rows and encoders."""

    uid: str
    item: FrameRange
    frames: queue_mod.Queue[Any]
    state: Any
    pts: tuple[int, ...]
    results: list[FrameResult] = field(default_factory=list)
    encode: queue_mod.Queue[Any] | None = None
    encoder_thread: threading.Thread | None = None
    encode_error: list[BaseException] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    matrix: str = "bt601"  # the Y'CbCr matrix of the source: its segments are encoded with it


class ChunkRunner:
    """Processes the chunks a worker claims (see the module docstring).

    ``rec``: the worker's :class:`~facefleet.pipeline.Reconstructor`; ``video``: the ``[video]``
    settings; ``out_dir``: where chunk files go; ``streams``: chunks held and batched together."""

    def __init__(self, rec: Any, video: VideoConfig, out_dir: str, *, streams: int = 16) -> None:
        from facefleet.video.track import FaceTracker

        self.rec = rec
        self.video = video
        self.out_dir = out_dir
        self.streams = max(1, int(streams))
        self.tracker = FaceTracker(rec, video)
        self.drawn = [f for f in DRAWN if f in video.formats]
        self._sources: dict[str, _Source] = {}  # what every chunk of a video needs, read once per video

    def run(
        self,
        claim: Callable[[], tuple[str, FrameRange] | None],
        done: Callable[[str, FrameRange, dict[str, Any]], None],
        failed: Callable[[str, FrameRange, BaseException], None],
        stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[], None] | None = None,
    ) -> None:
        """Until ``claim`` has nothing and every chunk held is finished: claim chunks up to
        ``streams``, step them, and report each finished chunk to ``done`` (its files written) or to
        ``failed`` (its error: a bad frame fails its chunk, not the others). ``stop``: claim no more;
        ``on_step``: called before each step (a profiler's window)."""
        active: list[_Chunk] = []
        # finished chunks' encoders are closed and their rows written on these threads, so the device
        # loop goes on with the other chunks; done/failed are called on this thread (the queue's)
        finishing: list[tuple[_Chunk, Future[dict[str, Any]]]] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="video-finish") as pool:
            while True:
                while len(active) < self.streams and not stop():
                    got = claim()
                    if got is None:
                        break
                    try:
                        active.append(self._open(*got))
                    except Exception as e:
                        failed(got[0], got[1], e)
                finishing = _report(finishing, done, failed, wait=not active)
                if not active:
                    return
                if on_step is not None:
                    on_step()
                ended: list[_Chunk] = []
                active = self._step(active, ended.append, failed)
                finishing += [(ch, pool.submit(self._finish, ch)) for ch in ended]

    # -- one chunk ---------------------------------------------------------------------------------
    def _source(self, path: str) -> _Source:
        """The video's rotation, rate, frame pts and encoder settings (its headers read once)."""
        src = self._sources.get(path)
        if src is None:
            from facefleet.video.encode import source_video

            info = probe_video(path)
            src = self._sources[path] = _Source(
                info.rotation,
                float(info.fps) if info.fps else 25.0,
                frame_timestamps(path)[0],
                source_video(path) if self.drawn else None,
            )
        return src

    def _open(self, uid: str, item: FrameRange) -> _Chunk:
        src = self._source(item.source)
        first = max(0, item.start - self.video.overlap)  # the lead-in
        span = FrameRange(item.source, first, item.stop - first)
        frames = _prefetch(upright_frames(span, src.rotation, self.rec.device), depth=4)
        ch = _Chunk(uid, item, frames, self.tracker.new_stream(src.fps), src.pts)
        if src.encoding is not None:
            ch.matrix = src.encoding.matrix
            ch.encode = queue_mod.Queue(maxsize=8)
            ch.encoder_thread = threading.Thread(
                target=self._encode_loop, args=(ch, src.encoding), name="video-encoder", daemon=True
            )
            ch.encoder_thread.start()
        return ch

    def _encode_loop(self, ch: _Chunk, src: Any) -> None:
        """The chunk's encoders (x264, one thread each): (format, yuv planes, pts, CUDA event or None) from
        its queue until :data:`_END`; the planes are read once the event (their copy to the host) is done."""
        from facefleet.video.encode import SegmentEncoder

        files = chunk_files(self.out_dir, ch.item)
        encoders: dict[str, Any] = {}
        try:
            while True:
                got = ch.encode.get() if ch.encode is not None else _END
                if got is _END:
                    break
                fmt, yuv, pts, ready = got  # type: ignore[misc]
                if ready is not None:  # the planes' copy from the device has landed
                    ready.synchronize()
                enc = encoders.get(fmt)
                if enc is None:
                    enc = encoders[fmt] = SegmentEncoder.for_source(files[fmt], src, self.video)
                enc.write(yuv, pts)
            for enc in encoders.values():
                enc.close()
        except BaseException as e:
            ch.encode_error.append(e)
            for enc in encoders.values():
                with contextlib.suppress(Exception):
                    enc.abort()
            if ch.encode is not None:  # unblock the device thread's puts
                with contextlib.suppress(queue_mod.Empty):
                    while True:
                        ch.encode.get_nowait()

    def _finish(self, ch: _Chunk) -> dict[str, Any]:
        """Close the chunk's encoders and write its rows; returns its stats."""
        if ch.encode is not None and ch.encoder_thread is not None:
            ch.encode.put(_END)
            ch.encoder_thread.join()
        if ch.encode_error:
            raise ch.encode_error[0]
        n_vertices = self.rec.topology.n_vertices
        table = chunk_table(ch.item.source, ch.results, ch.item.start, n_vertices)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        atomic_write_bytes(chunk_files(self.out_dir, ch.item)["parquet"], buf.getbuffer())
        own = [r for r in ch.results if r.index >= ch.item.start]
        return {
            "frames": len(own),
            "faces": sum(len(r.result.faces) for r in own),
            "lead_in": len(ch.results) - len(own),
            "seconds": time.perf_counter() - ch.t0,
            "video": ch.item.source,
            "start": ch.item.start,
        }

    # -- one step of every chunk held ----------------------------------------------------------------
    def _step(
        self,
        active: list[_Chunk],
        ended: Callable[[_Chunk], None],
        failed: Callable[[str, FrameRange, BaseException], None],
    ) -> list[_Chunk]:
        """The next frame of every chunk in one batch; chunks whose frames ended go to ``ended`` (to be
        finished); returns the chunks still going."""
        live: list[_Chunk] = []
        batch: list[tuple[_Chunk, int, float, torch.Tensor]] = []
        for ch in active:
            got = ch.frames.get()
            if got is _END:
                ended(ch)
                continue
            if isinstance(got, BaseException):
                self._abandon(ch)
                failed(ch.uid, ch.item, got)
                continue
            i, t, img = got
            batch.append((ch, i, t, img))
            live.append(ch)
        if not batch:
            return live
        chunks = [b[0] for b in batch]
        results = self.tracker.step(
            [b[3] for b in batch],
            [c.state for c in chunks],
            [b[1] for b in batch],
            [b[2] for b in batch],
            [c.item.source for c in chunks],
        )
        for ch, r in zip(chunks, results):
            ch.results.append(r)
        if self.drawn:
            self._draw(batch, results)
        return live

    def _draw(self, batch: list[tuple[_Chunk, int, float, torch.Tensor]], results: list[FrameResult]) -> None:
        """Draw each drawn format on the frames past their chunk's lead-in, colour-convert on the
        device, and queue the planes for the chunks' encoders (frames of one size at a time)."""
        from facefleet.video.overlay import draw_overlay
        from facefleet.video.render import anonymize, face_masks, rgb_to_yuv420p

        keep = [k for k, (ch, i, _, _) in enumerate(batch) if i >= ch.item.start]
        groups: dict[tuple[int, int, str], list[int]] = {}
        for k in keep:
            h, w = batch[k][3].shape[1:]
            groups.setdefault((int(h), int(w), batch[k][0].matrix), []).append(k)
        topo = self.rec.topology
        v = self.video
        for (h, w, matrix), ks in groups.items():
            frames = torch.stack([batch[k][3] for k in ks])
            rs = [results[k] for k in ks]
            for fmt in self.drawn:
                if fmt == "anonymize":
                    masks, scale = face_masks(rs, (h, w), topo, v.margin, frames.device, with_scale=True)
                    drawn = anonymize(frames, masks, v.anonymize, scale=scale)
                else:
                    drawn = draw_overlay(frames, rs, topo)
                planes, ready = _to_host(rgb_to_yuv420p(drawn, matrix))
                for j, k in enumerate(ks):
                    ch, i = batch[k][0], batch[k][1]
                    if ch.encode is not None and not ch.encode_error:
                        ch.encode.put((fmt, planes[j], ch.pts[i], ready))

    def _abandon(self, ch: _Chunk) -> None:
        """Stop a failed chunk's encoders (their temporary files are removed)."""
        if ch.encode is not None and ch.encoder_thread is not None:
            ch.encode_error.append(RuntimeError("chunk abandoned"))
            with contextlib.suppress(queue_mod.Full):
                ch.encode.put_nowait(_END)


def _to_host(planes: torch.Tensor) -> tuple[Any, Any]:
    """``(B, ...)`` uint8 planes -> (a numpy array of them on the host, a CUDA event that completes once
    they are there, or None). From a CUDA device the copy goes into pinned memory asynchronously, so the
    device thread does not wait for the drawing kernels; the encoder threads wait for the event."""
    if planes.device.type != "cuda":
        return planes.numpy(), None
    host = torch.empty(planes.shape, dtype=planes.dtype, pin_memory=True)
    host.copy_(planes, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(planes.device))
    return host.numpy(), ready


def _report(
    finishing: list[tuple[_Chunk, Future[dict[str, Any]]]],
    done: Callable[[str, FrameRange, dict[str, Any]], None],
    failed: Callable[[str, FrameRange, BaseException], None],
    *,
    wait: bool,
) -> list[tuple[_Chunk, Future[dict[str, Any]]]]:
    """Report the finished chunks of ``finishing`` (every one when ``wait``) to ``done`` or ``failed``;
    returns those still being finished."""
    left = []
    for ch, fut in finishing:
        if not (wait or fut.done()):
            left.append((ch, fut))
            continue
        try:
            done(ch.uid, ch.item, fut.result())
        except Exception as e:
            failed(ch.uid, ch.item, e)
    return left


def upright_frames(item: FrameRange, rotation: float, device: torch.device) -> Iterator[Any]:
    """``(index, seconds, (3, H, W) uint8 on device)`` of ``item``, as a player shows them: decoded by
    NVDEC on CUDA devices that have it (:func:`facefleet.io.nvdec.frame_reader`), else on the CPU, and
    turned by the video's rotation (multiples of 90 degrees)."""
    from facefleet.io.nvdec import frame_reader

    k = quarter_turns(rotation)
    for i, t, x in frame_reader(item, device):
        yield i, t, torch.rot90(x, k, dims=(1, 2)).contiguous() if k else x


def drop_chunk_files(out_dir: str, item: FrameRange) -> None:
    """Remove a chunk's files (a failed chunk leaves none that finishing its video would take)."""
    for p in chunk_files(out_dir, item).values():
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


__all__ = ["CHUNKS_DIR", "ChunkRunner", "chunk_files", "drop_chunk_files", "video_key"]
