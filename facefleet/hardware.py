"""The one module that knows the hardware: device lists, GPU profiles, run configuration files.

A *profile* is what a worker needs to drive one device well: batch size, network precision,
decoder and thread count. Built-in profiles are picked from the GPU's name, memory and compute
capability; a TOML config file and CLI flags override them (CLI > config file > built-in).

Config file (all keys optional)::

    [run]
    unit_size = 256
    lease_seconds = 30
    max_attempts = 3
    stage_timings = true  # per-stage times from CUDA events (no device syncs); false: none
    executor = "local"

    [gpu]                 # every CUDA device
    batch_size = 64
    precision = "fp16"
    workers = 1           # worker processes per GPU (1 with the decoder process; see default_gpu_workers)
    decoder = "auto"      # JPEG decoder: auto (nvimgcodec when installed, else nvjpeg), nvimgcodec, nvjpeg
                          # (nvimgcodec was measured on H200s, whose hardware JPEG engines it uses; on
                          # cards without one it decodes with CUDA/CPU: compare with nvjpeg there)
    batches_in_flight = 3 # decoded batches a worker holds in device memory: the networks' one, the next,
                          # and one the decoder process decodes ahead (2 with decode_process = false)
    decode_chunk = 32     # JPEGs per GPU decoder call (its own buffers hold this many images)
    decode_threads = 2    # batches the decoder process decodes at once (each into a slot of its own;
                          # 1 with decode_process = false)
    decode_backends = "auto"  # nvImageCodec's backends, e.g. "hw,cpu": the JPEG engine, the host's cores for
                          # what it refuses; "hw:0.85,cpu": 15 % on the host's cores (auto: its own choice)
    decode_cpu_threads = 0  # nvImageCodec's host threads per decoder (0: up to 4)
    compile = true        # networks' CUDA graphs from torch.compile's fused kernels (if Triton is there)
    decode_process = true # read and decode files in a child process of each worker (false: threads)
    network_threads = 1   # threads of a worker that run the networks, each on a batch of its own and a
                          # stream of its own (2: one queues its batch's kernels while the other waits
                          # for the device); results keep the batches' order. 1: on an H200 two were no
                          # faster (the decoder process was the bound) and took 0.65 GB more

    [gpu."H100"]          # devices whose name contains "H100" (case-insensitive)
    batch_size = 128

    [cpu]
    batch_size = 8
    workers = 4           # processes; torch threads per process = cores // workers
    decode_process = false  # as for [gpu], in shared memory (default off: the networks' threads
                            # leave the GIL alone for long stretches on CPUs)

Importing this module does not import torch or initialise CUDA.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16", "bf16")
GPU_DECODERS = ("auto", "nvimgcodec", "nvjpeg")  # = facefleet.io.gpu_decode.DECODER_NAMES (no torch here)


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


@dataclass(frozen=True)
class GpuSpec:
    """What the profile table needs to know about one GPU."""

    name: str
    memory_bytes: int
    capability: tuple[int, int]


@dataclass(frozen=True)
class DeviceProfile:
    """How one worker drives one device."""

    device: str  # "cuda:N" or "cpu"
    name: str
    batch_size: int
    precision: str
    # GPU JPEG decoder: "auto" (nvImageCodec if installed, else nvJPEG), "nvimgcodec" or "nvjpeg"
    # (torchvision); other formats are decoded with Pillow. "cpu" on CPU workers.
    decoder: str
    threads: int  # torch intra-op threads of the worker process
    memory_bytes: int = 0
    # CUDA: decoded batches a worker holds in device memory (the networks' one + the next; with the
    # decoder process 3 by default: it decodes straight into them, so the third is the batch it decodes
    # ahead), and JPEGs per GPU decoder call (written straight into the batch tensor)
    batches_in_flight: int = 2
    decode_chunk: int = 32
    # CUDA, decoder process: batches decoded at once, each on a thread and stream of its own (and its
    # own nvImageCodec decoder), each into a slot of its own. Alone, nvImageCodec lost with two threads
    # on an H200 (2,556 against 3,696 img/s), but beside the networks, where its chunks wait for the
    # GPU's time slices, two batches in flight ran 0.4-4.9 % faster than one in all four pairs on two
    # H200s (2,831-3,068 against 2,819-2,929 img/s, same decoded slots, ~0.2 GB more by NVML;
    # docs/benchmarks.md, tenth session): plan_devices gives two with the decoder process
    decode_threads: int = 1
    # CUDA, nvImageCodec: its backends (parse_jpeg_backends: "auto", or e.g. "hw:0.85,cpu" for 15 % of
    # each call's files on the host's cores) and its host threads per decoder (0: up to 4)
    decode_backends: str = "auto"
    decode_cpu_threads: int = 0
    # CUDA: the networks' graphs from torch.compile's fused kernels where Triton is installed
    # (TFLiteModule.use_compile); false: eager kernels
    compile: bool = True
    # files are read and decoded in a child process of the worker, into (device) memory it shares
    # (facefleet.engine.decode_proc); false: on threads of the worker process. On by default on CUDA
    # (plan_devices), off on CPU workers (whose networks' threads leave the GIL alone for long stretches)
    decode_process: bool = False
    # threads of the worker running the networks, each on a batch of its own (on CUDA and its own
    # stream): one batch makes the host wait for the device ~10 times (data-dependent selections), and
    # while one thread waits (without the GIL) another queues its batch's kernels. On decoded batches in
    # memory an H200 ran 4,200 / 4,855 / 5,449 img/s with 1 / 2 / 3; in the engine two were no faster,
    # the decoder process beside them being the bound (docs/benchmarks.md, twelfth session): 1
    network_threads: int = 1
    capability: tuple[int, int] | None = None
    source: str = "builtin"  # where batch size/precision came from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["capability"] = list(self.capability) if self.capability else None
        return d


# Worker processes per GPU. One process drives its GPU from one Python thread: every host sync of the
# detector (the number of faces decides the shapes that follow) leaves the GPU idle while Python
# prepares the next kernels, and nvJPEG calls are serialised per process. A second process per GPU
# fills those gaps: on an H200, 1,345 -> 1,815 img/s (a third: 1,880) with CUDA graphs on
# (docs/benchmarks.md). Each process holds its own CUDA context, batches and graphs (~3 GB allocated at
# batch 128 on 1080p, more by NVML), so only cards with room for it (>= 32 GB) and hosts with >= 4 cores
# per worker get two.
#
# That was with reading and decoding on threads of the worker ([gpu] decode_process = false), whose GIL
# hand-overs were most of what a second process filled. With the decoder process (the default) one
# worker per GPU measured the same as two on an H200 (2,200 / 2,425 img/s against 2,050 / 2,444, two
# runs, 8,000 images; docs/benchmarks.md, seventh session) at half the memory (2.9 against 5.7 GB) and
# one compilation: plan_devices then asks for one.
BIG_GPU_WORKERS = 2
BIG_GPU_MIN_BYTES = 32 << 30


def default_gpu_workers(spec: GpuSpec, gpus: int = 1) -> int:
    """Worker processes per GPU when neither the CLI nor the config says (see above)."""
    if spec.memory_bytes >= BIG_GPU_MIN_BYTES and cpu_count() >= 4 * BIG_GPU_WORKERS * max(1, gpus):
        return BIG_GPU_WORKERS
    return 1


# Known GPUs: (substring of the CUDA device name, batch size). Precision follows the architecture.
# Batch sizes keep peak memory of the pipeline on 1080p input at a few GB: throughput saturates
# well before memory does, so bigger cards do not get proportionally bigger batches.
_KNOWN_GPUS: tuple[tuple[str, int], ...] = (
    ("B200", 128),
    ("B100", 128),
    ("GH200", 128),
    ("H200", 128),
    ("H100", 128),
    ("H800", 128),
    ("A100", 128),
    ("A800", 128),
    ("L40", 96),
    ("A6000", 64),
    ("A40", 64),
    ("A10", 64),
    ("L4", 48),
    ("A30", 64),
    ("V100", 64),
    ("T4", 32),
    ("RTX 4090", 64),
    ("RTX 3090", 64),
)
_GIB = 1 << 30


def gpu_profile(spec: GpuSpec) -> tuple[int, str]:
    """(batch size, precision) for a GPU.

    Precision: fp16 from Volta (sm70) on, fp32 below (Pascal and older run fp16 slowly).
    fp16 rather than bf16 on Ampere and newer: the MediaPipe networks ship fp16 weights (fp16 holds
    them exactly, bf16 rounds them to 8 mantissa bits) and landmark coordinates in 192 px crops need
    about 0.1 px resolution, which bf16's 3 significant digits do not give (even with the output heads
    in float32, bf16 landmarks were 0.43 px from float32's against fp16's 0.03, median, CPU); both run
    at the same tensor-core rate. Choose bf16 in the config file if a model ever overflows in fp16.
    """
    major, minor = spec.capability
    precision = "fp16" if (major, minor) >= (7, 0) else "fp32"
    name = spec.name.upper()
    mem_gib = spec.memory_bytes / _GIB
    batch = 0
    for key, b in _KNOWN_GPUS:
        if key.upper() in name:
            batch = b
            break
    if not batch:  # unknown card: by memory
        batch = 16 if mem_gib < 6 else 32 if mem_gib < 12 else 64 if mem_gib < 40 else 128
    # never plan more than ~1/8 of the card's memory at ~25 MB per 1080p image in flight
    cap = max(4, int(mem_gib * _GIB / 8 / (25 << 20)))
    return max(1, min(batch, cap)), precision


# -- configuration files -----------------------------------------------------------------------
def load_config(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a TOML config file (see the module docstring); ``None`` -> ``{}``."""
    if path is None:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {p} is not valid TOML: {e}") from None
    unknown = set(data) - {"run", "model", "gpu", "cpu"}
    if unknown:
        raise ValueError(
            f"config file {p}: unknown section(s) {sorted(unknown)}; expected run, model, gpu, cpu"
        )
    check_model_settings(data.get("model", {}), f"{p} [model]")
    for section in ("gpu", "cpu"):
        _check_overrides(data.get(section, {}), f"{p} [{section}]")
    for key, sub in data.get("gpu", {}).items():
        if isinstance(sub, dict):
            _check_overrides(sub, f'{p} [gpu."{key}"]')
    return data


MODEL_SETTINGS = ("detector", "refine", "max_faces", "min_score", "min_presence")


def check_model_settings(d: Mapping[str, Any], where: str) -> None:
    """The pipeline settings of a run (``[model]`` / ``facefleet run --detector ...``): known keys,
    sane values, else a ValueError naming ``where``."""
    unknown = set(d) - set(MODEL_SETTINGS)
    if unknown:
        expected = ", ".join(MODEL_SETTINGS)
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; expected {expected}")
    if "detector" in d and d["detector"] not in ("auto", "short", "full"):
        raise ValueError(f"{where}: detector must be auto, short or full, got {d['detector']!r}")
    for k, low in (("refine", 0), ("max_faces", 1)):
        if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < low):
            raise ValueError(f"{where}: {k} must be an integer >= {low}, got {d[k]!r}")
    for k in ("min_score", "min_presence"):
        if k in d and (not isinstance(d[k], (int, float)) or isinstance(d[k], bool) or not 0 <= d[k] <= 1):
            raise ValueError(f"{where}: {k} must be a number in [0, 1], got {d[k]!r}")


def _check_overrides(d: Mapping[str, Any], where: str) -> None:
    if "precision" in d and d["precision"] not in PRECISIONS:
        raise ValueError(f"{where}: precision must be one of {PRECISIONS}, got {d['precision']!r}")
    if "decoder" in d and d["decoder"] not in GPU_DECODERS:
        raise ValueError(f"{where}: decoder must be one of {GPU_DECODERS}, got {d['decoder']!r}")
    for k in (
        "batch_size", "workers", "threads", "batches_in_flight", "decode_chunk", "decode_threads",
        "network_threads",
    ):  # fmt: skip
        if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 1):
            raise ValueError(f"{where}: {k} must be a positive integer, got {d[k]!r}")
    if "decode_backends" in d:
        if not isinstance(d["decode_backends"], str):
            raise ValueError(f"{where}: decode_backends must be a string, got {d['decode_backends']!r}")
        try:
            parse_jpeg_backends(d["decode_backends"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    k = "decode_cpu_threads"
    if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0):
        raise ValueError(f"{where}: {k} must be an integer >= 0, got {d[k]!r}")
    for k in ("compile", "decode_process"):
        if k in d and not isinstance(d[k], bool):
            raise ValueError(f"{where}: {k} must be true or false, got {d[k]!r}")


def _gpu_overrides(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    gpu = config.get("gpu", {})
    out = {k: v for k, v in gpu.items() if not isinstance(v, dict)}
    for key, sub in gpu.items():
        if isinstance(sub, dict) and key.upper() in name.upper():
            out.update(sub)
    return out


# -- devices -----------------------------------------------------------------------------------
def cuda_device_count() -> int:
    """Number of CUDA devices visible to torch (respects CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def parse_devices(spec: str | None) -> list[str]:
    """'auto' (every GPU, else the CPU), 'all' (every GPU), 'cpu', '0,1' or 'cuda:0,cuda:1'
    -> ['cuda:0', 'cuda:1'] or ['cpu']."""
    s = (spec or "auto").strip().lower()
    n = cuda_device_count()
    if s == "cpu":
        return ["cpu"]
    if s in ("auto", "all", "cuda", "gpu"):
        if n == 0:
            if s == "auto":
                return ["cpu"]
            raise ValueError(
                f"--devices {spec}: no CUDA device is available on this machine (use --devices cpu)"
            )
        return [f"cuda:{i}" for i in range(n)]
    out: list[str] = []
    for part in s.split(","):
        part = part.strip().removeprefix("cuda:")
        if not part.isdigit():
            raise ValueError(f"--devices {spec!r}: expected all, cpu, auto or GPU indices like 0,1")
        i = int(part)
        if i >= n:
            raise ValueError(f"--devices {spec!r}: GPU {i} does not exist ({n} CUDA device(s) visible)")
        if f"cuda:{i}" not in out:
            out.append(f"cuda:{i}")
    return out


def gpu_spec(index: int) -> GpuSpec:
    """Name, memory and compute capability of CUDA device ``index`` (as torch numbers them)."""
    import torch

    p = torch.cuda.get_device_properties(index)
    return GpuSpec(
        name=str(p.name), memory_bytes=int(p.total_memory), capability=(int(p.major), int(p.minor))
    )


def cpu_count() -> int:
    """CPU cores this process may use (affinity and cgroup-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def default_cpu_workers(cores: int | None = None) -> int:
    """CPU mode: one process per ~4 cores (each runs 4 torch threads), at least one."""
    c = cores or cpu_count()
    return max(1, c // 4)


def plan_devices(
    devices: str | None = "auto",
    *,
    config: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    cpu_workers: int | None = None,
    gpu_workers: int | None = None,
) -> list[DeviceProfile]:
    """One profile per worker process to start: ``gpu_workers`` per GPU (config ``[gpu] workers``,
    default :func:`default_gpu_workers`), or ``cpu_workers`` CPU processes.

    Precedence: explicit arguments (CLI) > config file > built-in profile.
    """
    config = config or {}
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    profiles: list[DeviceProfile] = []
    devs = parse_devices(devices)
    gpus = [d for d in devs if d != "cpu"]
    for dev in devs:
        if dev == "cpu":
            cpu_cfg = dict(config.get("cpu", {}))
            cores = cpu_count()
            n = cpu_workers or cpu_cfg.get("workers") or default_cpu_workers(cores)
            threads = int(cpu_cfg.get("threads") or max(1, cores // n))
            bs = batch_size or cpu_cfg.get("batch_size") or 8
            prec = precision or cpu_cfg.get("precision") or "fp32"
            if prec == "fp16":
                raise ValueError("fp16 is not supported on the CPU: use fp32 or bf16")
            src = "cli" if (batch_size or precision) else "config" if cpu_cfg else "builtin"
            _check_overrides(cpu_cfg, "[cpu]")
            base = DeviceProfile(
                "cpu", _cpu_name(), int(bs), str(prec), "cpu", threads, source=src,
                decode_process=bool(cpu_cfg.get("decode_process", False)),
                network_threads=int(cpu_cfg.get("network_threads", 1)),
            )  # fmt: skip
            profiles.extend(base for _ in range(int(n)))
            continue
        idx = int(dev.split(":")[1])
        spec = gpu_spec(idx)
        bs0, prec0 = gpu_profile(spec)
        over = _gpu_overrides(config, spec.name)
        src = "builtin"
        if over:
            src = "config"
        bs = over.get("batch_size", bs0)
        prec = over.get("precision", prec0)
        if batch_size or precision:
            src = "cli"
        decode_process = bool(over.get("decode_process", True))
        # with the decoder process one worker per GPU runs as fast as two (default_gpu_workers' note)
        default = 1 if decode_process else default_gpu_workers(spec, len(gpus))
        per_gpu = int(gpu_workers or over.get("workers") or default)
        _check_overrides(over, "[gpu]")  # also a config given as a mapping rather than a file
        decoder = str(over.get("decoder", "auto"))
        if per_gpu < 1:
            raise ValueError(f"workers per GPU must be at least 1, got {per_gpu}")
        profiles.extend(
            DeviceProfile(
                dev,
                spec.name,
                int(batch_size or bs),
                str(precision or prec),
                decoder,
                int(over.get("threads", 4)),
                memory_bytes=spec.memory_bytes,
                **{k: int(over[k]) for k in ("decode_chunk", "decode_cpu_threads") if k in over},
                decode_threads=int(over.get("decode_threads", 2 if decode_process else 1)),
                batches_in_flight=int(over.get("batches_in_flight", 3 if decode_process else 2)),
                decode_backends=str(over.get("decode_backends", "auto")),
                compile=bool(over.get("compile", True)),
                decode_process=decode_process,
                network_threads=int(over.get("network_threads", 1)),
                capability=spec.capability,
                source=src,
            )
            for _ in range(per_gpu)
        )
    return profiles


def with_batch_size(p: DeviceProfile, batch_size: int) -> DeviceProfile:
    return replace(p, batch_size=int(batch_size))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def describe_devices() -> list[dict[str, Any]]:
    """Every device of this host, for run reports: the CPU, then each CUDA device with its
    memory, capability, built-in profile and (through NVML when present) driver version."""
    out: list[dict[str, Any]] = [{"device": "cpu", "name": _cpu_name(), "cores": cpu_count()}]
    n = cuda_device_count()
    nvml: Any = None
    driver = None
    if n:
        try:
            import pynvml

            pynvml.nvmlInit()
            nvml = pynvml
            driver = pynvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        except Exception:
            nvml = None
    for i in range(n):
        spec = gpu_spec(i)
        bs, prec = gpu_profile(spec)
        out.append(
            {
                "device": f"cuda:{i}",
                "name": spec.name,
                "memory_bytes": spec.memory_bytes,
                "capability": list(spec.capability),
                "batch_size": bs,
                "precision": prec,
                "driver": driver,
            }
        )
    if nvml is not None:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return out
