"""A reproducible test video for the video benchmark: real faces, camera moves, hard cuts, AAC audio.

:func:`make_test_video` writes an H.264 MP4 (``yuv420p``, BT.709 limited range, tagged as such) of
``recipe.frames`` frames at ``recipe.fps`` and ``recipe.bitrate`` (default 1080p, 30 fps, 8 Mb/s, x264
``veryfast`` on every core), with an AAC track.
It is a sequence of *shots* separated by hard cuts every ``shot_seconds`` (2 to 5 s by default):

- a *photo shot* shows one of the shared photos with faces (``../shared/data/images``, by its
  ``INDEX.tsv``: at least one face, not a ``noface_`` file), scaled to cover the frame and moved by a
  slow pan, zoom and a slight roll (an affine warp eased from a start to an end pose);
- a *clip shot* plays one of the shared videos (``../shared/data/videos``, talking heads and a stage
  performance) from a seeded start, upscaled to cover the frame, with the same kind of slow move.

Every frame gets film grain (a seeded luma noise field, re-positioned each frame). The audio is the
shared clips' soundtracks, resampled to 48 kHz stereo and looped (``audio="clips"``), or a tone whose
pitch changes at each cut (``audio="tone"``).

Everything derives from the recipe (:class:`VideoRecipe`) and the source files, to the byte for the
frames given to the encoder (``content_sha256``); x264's output bytes were seen to vary now and then
between runs with the same frames, by a small difference of pixels. The file is cached as
``<out>/<name>-<key>.mp4`` with a ``.json`` sidecar (recipe, key, cuts, shots, sha256), ``key`` a hash
of the recipe, the source files (names and sizes) and the PyAV/FFmpeg versions; a second call with the
same recipe returns the cached file. Without the shared data :class:`SharedDataMissing` is raised.

>>> v = make_test_video("/tmp/vbench", VideoRecipe(frames=1800))  # doctest: +SKIP
>>> v.path, v.cuts[:3]                                            # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facefleet.models.fetch import sha256_file

__all__ = [
    "SharedDataMissing",
    "TestVideo",
    "VideoRecipe",
    "face_photos",
    "make_test_video",
    "plan_shots",
    "shared_videos",
]

_VERSION = 2  # bump when the renderer changes what a recipe makes
_GRAIN_TILES = 3


class SharedDataMissing(RuntimeError):
    """The shared photos/videos (``../shared/data`` or ``$FACEFLEET_SHARED_DATA``) are absent."""


@dataclass(frozen=True)
class VideoRecipe:
    """What the test video is made of; equal recipes (and sources) give the same file."""

    frames: int = 9000
    width: int = 1920
    height: int = 1080
    fps: int = 30
    bitrate: int = 8_000_000  # the VBV cap (maxrate; bufsize twice it) over constant-quality ``crf``
    crf: int = 20
    shot_seconds: tuple[float, float] = (2.0, 5.0)
    clip_share: float = 0.35  # fraction of shots that play a shared video rather than a photo
    zoom: tuple[float, float] = (1.02, 1.25)
    roll_degrees: float = 1.5
    grain: float = 3.0  # luma noise sigma, in 8-bit levels
    audio: str = "clips"  # "clips", "tone" or "none"
    preset: str = "veryfast"
    gop_seconds: float = 4.0
    # x264 threads (0: x264's choice, every core). One thread is not reproducible to the byte either (see
    # the module docstring) and made the 1,800-frame video in 113 s on an H200 host
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.fps < 1:
            raise ValueError("a test video needs frames >= 1 and fps >= 1")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even (yuv420p), got {self.width}x{self.height}")
        if self.audio not in ("clips", "tone", "none"):
            raise ValueError(f"audio must be clips, tone or none, got {self.audio!r}")
        lo, hi = self.shot_seconds
        if not 0 < lo <= hi:
            raise ValueError(f"shot_seconds must be 0 < lo <= hi, got {self.shot_seconds}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shot_seconds"] = list(self.shot_seconds)
        d["zoom"] = list(self.zoom)
        return d


@dataclass(frozen=True)
class TestVideo:
    """A made (or cached) test video: ``cuts`` are the first frames of shots 2, 3, ... ."""

    __test__ = False  # not a pytest class

    path: Path
    recipe: VideoRecipe
    key: str
    cuts: list[int]
    shots: list[dict[str, Any]]
    sha256: str
    seconds: float = 0.0
    content_sha256: str = ""
    cached: bool = False
    sources: dict[str, list[str]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return self.recipe.frames


def _data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    from facefleet.bench.corpus import shared_data_dir

    d = Path(data_dir) if data_dir is not None else shared_data_dir()
    if d is None or not (d / "images").is_dir():
        where = data_dir if data_dir is not None else "../shared/data (or $FACEFLEET_SHARED_DATA)"
        raise SharedDataMissing(f"the shared test data is absent ({where}): no test video can be made")
    return d


def face_photos(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The shared photos with at least one face (by ``images/INDEX.tsv``), sorted by name."""
    d = _data_dir(data_dir) / "images"
    out: list[Path] = []
    index = d / "INDEX.tsv"
    if index.is_file():
        with open(index, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                name, faces = row.get("file", ""), (row.get("faces") or "0").strip()
                if name.startswith("noface_") or faces.startswith("0"):
                    continue
                if (d / name).is_file():
                    out.append(d / name)
    else:  # no index: every photo that is not a negative
        out = [
            p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "noface" not in p.name
        ]
    return sorted(out, key=lambda p: p.name)


def shared_videos(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The shared video clips (``videos/*.mp4``), sorted by name; [] when there are none."""
    d = _data_dir(data_dir) / "videos"
    return sorted(d.glob("*.mp4")) if d.is_dir() else []


def _clip_meta(clips: list[Path]) -> list[dict[str, Any]]:
    from facefleet.io.video import probe_video

    out = []
    for c in clips:
        info = probe_video(c)
        out.append({"path": str(c), "frames": info.frames, "fps": float(info.fps) or 25.0})
    return out


def plan_shots(recipe: VideoRecipe, n_photos: int, clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shots of ``recipe``: ``start, frames, kind ("photo"|"clip"), source (index), clip_start,
    pose0, pose1`` (zoom, centre x/y in [0, 1] of the free range, roll degrees). Deterministic. The
    window keeps to the source's upper part (y in 0.1-0.45 of the free range): a 16:9 window over a
    portrait photo cut the faces away lower down."""
    rng = np.random.default_rng([recipe.seed, 7])
    shots: list[dict[str, Any]] = []
    start = 0
    lo, hi = (max(1, round(s * recipe.fps)) for s in recipe.shot_seconds)
    prev: tuple[str, int] | None = None
    while start < recipe.frames:
        length = int(rng.integers(lo, hi + 1))
        length = min(length, recipe.frames - start)
        use_clip = bool(clips) and (n_photos == 0 or rng.random() < recipe.clip_share)
        for _ in range(8):  # never the same source twice in a row: a cut must show
            kind = "clip" if use_clip else "photo"
            src = int(rng.integers(0, len(clips) if use_clip else n_photos))
            if (kind, src) != prev or (len(clips) if use_clip else n_photos) == 1:
                break
        clip_start = 0
        if kind == "clip":
            c = clips[src]
            need = math.ceil(length * c["fps"] / recipe.fps) + 1
            clip_start = int(rng.integers(0, max(1, c["frames"] - need + 1)))

        def pose() -> list[float]:
            return [
                float(rng.uniform(*recipe.zoom)),
                float(rng.uniform(0.3, 0.7)),
                float(rng.uniform(0.1, 0.45)),  # the upper part: where a portrait's face is
                float(rng.uniform(-recipe.roll_degrees, recipe.roll_degrees)),
            ]

        shots.append(
            {
                "start": start,
                "frames": length,
                "kind": kind,
                "source": src,
                "clip_start": clip_start,
                "pose0": pose(),
                "pose1": pose(),
            }
        )
        prev = (kind, src)
        start += length
    return shots


# ---- rendering (in worker processes) ---------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(recipe: VideoRecipe, photos: list[str], clips: list[dict[str, Any]]) -> None:
    from PIL import Image, ImageOps

    ims = []
    for p in photos:
        with Image.open(p) as im:
            ims.append(ImageOps.exif_transpose(im).convert("RGB"))
    grain_rng = np.random.default_rng([recipe.seed, 11])
    h, w = recipe.height, recipe.width
    tiles = [
        np.clip(grain_rng.normal(0.0, recipe.grain, (h + 32, w + 32)), -127, 127).astype(np.int16)
        for _ in range(_GRAIN_TILES)
    ]
    _STATE.update(recipe=recipe, photos=ims, clips=clips, grain=tiles)


def _ease(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def _warp(img: Any, pose: list[float], size: tuple[int, int]) -> np.ndarray:
    """``img`` (PIL RGB) scaled to cover ``size`` times the pose's zoom, centred by its pose, rolled."""
    from PIL import Image

    w, h = size
    sw, sh = img.size
    zoom, fx, fy, roll = pose
    s = max(w / sw, h / sh) * zoom  # output pixels per source pixel
    ww, wh = w / s, h / s  # the window in source pixels
    cx = ww / 2 + fx * max(0.0, sw - ww)
    cy = wh / 2 + fy * max(0.0, sh - wh)
    a = math.radians(roll)
    ca, sa = math.cos(a) / s, math.sin(a) / s
    # source = centre + R(roll) (out - out_centre) / s
    coeffs = (ca, -sa, cx - ca * w / 2 + sa * h / 2, sa, ca, cy - sa * w / 2 - ca * h / 2)
    out = img.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def _clip_frames(clip: dict[str, Any], first: int, count: int) -> list[np.ndarray]:
    from facefleet.io.video import read_frames
    from facefleet.sources.items import FrameRange

    count = max(1, min(count, clip["frames"] - first))
    return [rgb for _, _, rgb in read_frames(FrameRange(clip["path"], first, count))]


def _render(task: tuple[int, int, int]) -> list[bytes]:
    """Frames ``[a, b)`` of shot ``k`` (frame offsets in the shot) as yuv420p bytes (BT.709, limited)."""
    import av
    from PIL import Image

    k, a, b = task
    r: VideoRecipe = _STATE["recipe"]
    shot = _STATE["shots"][k]
    size = (r.width, r.height)
    src_frames: list[np.ndarray] = []
    clip_first = 0
    if shot["kind"] == "clip":
        clip = _STATE["clips"][shot["source"]]
        step = clip["fps"] / r.fps
        clip_first = shot["clip_start"] + int(a * step)
        last = shot["clip_start"] + int((b - 1) * step)
        src_frames = _clip_frames(clip, clip_first, last - clip_first + 1)
    out: list[bytes] = []
    for j in range(a, b):
        t = _ease(j / max(1, shot["frames"] - 1))
        pose = [p0 + (p1 - p0) * t for p0, p1 in zip(shot["pose0"], shot["pose1"])]
        if shot["kind"] == "clip":
            ci = shot["clip_start"] + int(j * clip["fps"] / r.fps) - clip_first
            img = Image.fromarray(src_frames[min(ci, len(src_frames) - 1)])
        else:
            img = _STATE["photos"][shot["source"]]
        rgb = _warp(img, pose, size)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        yuv = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG").to_ndarray()
        g = np.random.default_rng([r.seed, 13, shot["start"] + j])
        tile = _STATE["grain"][int(g.integers(0, _GRAIN_TILES))]
        oy, ox = (int(v) for v in g.integers(0, 32, 2))
        luma = yuv[: r.height].astype(np.int16) + tile[oy : oy + r.height, ox : ox + r.width]
        yuv[: r.height] = np.clip(luma, 16, 235).astype(np.uint8)
        out.append(yuv.tobytes())
    return out


def _init_with_shots(
    recipe: VideoRecipe, photos: list[str], clips: list[dict[str, Any]], shots: list[dict[str, Any]]
) -> None:
    _init_worker(recipe, photos, clips)
    _STATE["shots"] = shots


def _tasks(shots: list[dict[str, Any]], per_task: int = 30) -> list[tuple[int, int, int]]:
    return [
        (k, a, min(a + per_task, s["frames"]))
        for k, s in enumerate(shots)
        for a in range(0, s["frames"], per_task)
    ]


def _rendered(
    recipe: VideoRecipe,
    photos: list[str],
    clips: list[dict[str, Any]],
    shots: list[dict[str, Any]],
    processes: int,
) -> Iterator[bytes]:
    tasks = _tasks(shots)
    # always in worker processes: the encoder's output depended on what else ran in its process
    ctx = mp.get_context("spawn")
    with ctx.Pool(
        max(1, processes), initializer=_init_with_shots, initargs=(recipe, photos, clips, shots)
    ) as pool:
        for frames in pool.imap(_render, tasks, chunksize=1):
            yield from frames


# ---- audio ------------------------------------------------------------------------------------------

_RATE = 48000


def _audio_samples(
    recipe: VideoRecipe, clips: list[dict[str, Any]], shots: list[dict[str, Any]]
) -> np.ndarray:
    """(2, N) float32 at 48 kHz for the whole video."""
    n = round(recipe.frames / recipe.fps * _RATE)
    if recipe.audio == "tone" or (recipe.audio == "clips" and not clips):
        out = np.zeros((2, n), np.float32)
        for k, s in enumerate(shots):
            a = round(s["start"] / recipe.fps * _RATE)
            b = round((s["start"] + s["frames"]) / recipe.fps * _RATE)
            f = 220.0 * 2 ** ((k % 12) / 12)  # a semitone up per shot
            t = np.arange(b - a) / _RATE
            out[:, a:b] = 0.2 * np.sin(2 * np.pi * f * t)
        return out
    import av

    parts = []
    for c in clips:
        with av.open(c["path"]) as con:
            if not con.streams.audio:
                continue
            res = av.AudioResampler(format="fltp", layout="stereo", rate=_RATE)
            for fr in con.decode(con.streams.audio[0]):
                for o in res.resample(fr):
                    parts.append(o.to_ndarray())
            for o in res.resample(None):
                parts.append(o.to_ndarray())
    if not parts:
        return np.zeros((2, n), np.float32)
    pcm = np.concatenate(parts, axis=1).astype(np.float32)
    reps = -(-n // pcm.shape[1])
    return np.ascontiguousarray(np.tile(pcm, (1, reps))[:, :n])


# ---- the file ------------------------------------------------------------------------------------


def recipe_key(recipe: VideoRecipe, photos: list[Path], clips: list[Path]) -> str:
    """The cache key: a hash of the recipe, the sources (names, sizes) and PyAV's and FFmpeg's versions."""
    import av

    doc = {
        "v": _VERSION,
        "recipe": recipe.to_json(),
        "photos": [[p.name, p.stat().st_size] for p in photos],
        "clips": [[p.name, p.stat().st_size] for p in clips],
        "av": av.__version__,
        "libav": {k: list(v) for k, v in sorted(av.library_versions.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def make_test_video(
    out_dir: str | os.PathLike[str],
    recipe: VideoRecipe | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    processes: int | None = None,
    force: bool = False,
    log: Any = None,
) -> TestVideo:
    """The test video of ``recipe`` under ``out_dir`` (made, or found in the cache). ``processes``:
    rendering processes (default: the cores, at most 16)."""

    recipe = recipe or VideoRecipe()
    photos = face_photos(data_dir)
    clip_paths = shared_videos(data_dir) if recipe.clip_share > 0 else []
    if not photos and not clip_paths:
        raise SharedDataMissing("the shared data holds no photo with a face and no video")
    key = recipe_key(recipe, photos, clip_paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"testvideo-{recipe.width}x{recipe.height}-{recipe.frames}f-{key}"
    path, meta_path = out / f"{stem}.mp4", out / f"{stem}.json"
    sources = {"photos": [p.name for p in photos], "clips": [p.name for p in clip_paths]}
    if not force and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("bytes") == path.stat().st_size:
            return TestVideo(
                path,
                recipe,
                key,
                meta["cuts"],
                meta["shots"],
                meta["sha256"],
                meta["seconds"],
                meta.get("content_sha256", ""),
                True,
                sources,
            )
    clips = _clip_meta(clip_paths)
    shots = plan_shots(recipe, len(photos), clips)
    t0 = time.perf_counter()
    procs = processes if processes is not None else min(16, os.cpu_count() or 1)
    tmp = out / f".{stem}.{os.getpid()}.mp4"
    # x264 gave other bytes for the same frames after a first encode in the same process, so each
    # file is encoded in a fresh one; even so its bytes varied now and then between runs (seen with
    # a VBV cap at 320x180, 2026-12-05): the rendered frames (content_sha256) are what is reproducible
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        fut = ex.submit(
            _write, str(tmp), recipe, [str(p) for p in photos], clips, shots, procs, log is not None
        )
        content, lines = fut.result()
    for line in lines:
        if log is not None:
            log(line)
    os.replace(tmp, path)
    seconds = time.perf_counter() - t0
    cuts = [s["start"] for s in shots[1:]]
    sha = sha256_file(path)
    meta = {
        "key": key,
        "recipe": recipe.to_json(),
        "cuts": cuts,
        "shots": shots,
        "sources": sources,
        "sha256": sha,
        "content_sha256": content,
        "bytes": path.stat().st_size,
        "video_bitrate": round(path.stat().st_size * 8 * recipe.fps / recipe.frames),
        "seconds": seconds,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return TestVideo(path, recipe, key, cuts, shots, sha, seconds, content, False, sources)


def _write(
    path: str,
    recipe: VideoRecipe,
    photos: list[str],
    clips: list[dict[str, Any]],
    shots: list[dict[str, Any]],
    procs: int,
    progress: bool,
) -> tuple[str, list[str]]:
    """Render and encode the video into ``path`` (in a fresh process); returns the sha256 of the
    rendered frames (yuv420p, in order) and progress lines."""
    import av

    lines: list[str] = []
    content = hashlib.sha256()
    t0 = time.perf_counter()
    audio = _audio_samples(recipe, clips, shots) if recipe.audio != "none" else None
    with av.open(path, "w", format="mp4") as con:
        vs = con.add_stream("libx264", rate=recipe.fps)
        cc = vs.codec_context
        cc.width, cc.height, cc.pix_fmt = recipe.width, recipe.height, "yuv420p"
        cc.gop_size = max(1, round(recipe.gop_seconds * recipe.fps))
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 1, 1, 1  # BT.709, limited
        cc.options = {
            "preset": recipe.preset,
            "threads": str(recipe.threads),
            "crf": str(recipe.crf),
            "maxrate": str(int(recipe.bitrate)),
            "bufsize": str(int(recipe.bitrate * 2)),
        }
        as_ = None
        if audio is not None:
            as_ = con.add_stream("aac", rate=_RATE, layout="stereo")
            as_.codec_context.bit_rate = 128_000
        sent = 0  # audio samples encoded
        n_yuv = recipe.width * recipe.height * 3 // 2
        for i, raw in enumerate(_rendered(recipe, photos, clips, shots, procs)):
            content.update(raw)
            arr = np.frombuffer(raw, np.uint8, n_yuv).reshape(recipe.height * 3 // 2, recipe.width)
            frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
            frame.colorspace, frame.color_range = 1, 1
            frame.pts = i
            for p in vs.encode(frame):
                con.mux(p)
            if as_ is not None and audio is not None:
                until = min(audio.shape[1], round((i + 1) / recipe.fps * _RATE))
                sent = _feed_audio(con, as_, audio, sent, until)
            if progress and (i + 1) % 600 == 0:
                lines.append(
                    f"  test video: {i + 1}/{recipe.frames} frames ({time.perf_counter() - t0:.0f} s)"
                )
        for p in vs.encode():
            con.mux(p)
        if as_ is not None and audio is not None:
            _feed_audio(con, as_, audio, sent, audio.shape[1])
            for p in as_.encode():
                con.mux(p)
    return content.hexdigest(), lines


def _feed_audio(con: Any, stream: Any, pcm: np.ndarray, sent: int, until: int, block: int = 1024) -> int:
    import av

    while sent + block <= until or (until == pcm.shape[1] and sent < until):
        chunk = np.ascontiguousarray(pcm[:, sent : min(sent + block, until)])
        af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        af.sample_rate = _RATE
        af.pts = sent
        for p in stream.encode(af):
            con.mux(p)
        sent += chunk.shape[1]
    return sent
