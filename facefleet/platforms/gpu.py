"""Built-in GPU profiles: a batch size and a network precision from a GPU's name, memory and compute
capability, and how many worker processes a GPU gets. Pure functions of a :class:`GpuSpec`: nothing
here asks the driver (see :mod:`facefleet.platforms.host`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    """What the profile table needs to know about one GPU."""

    name: str
    memory_bytes: int
    capability: tuple[int, int]


# Known GPUs: (substring of the CUDA device name, batch size). Precision follows the architecture.
# Batch sizes keep peak memory of the pipeline on 1080p input at a few GB: throughput saturates
# well before memory does, so bigger cards do not get proportionally bigger batches.
KNOWN_GPUS: tuple[tuple[str, int], ...] = (
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
_IMAGE_BYTES = 25 << 20  # device memory per 1080p image in flight (decoded frame, crops, activations)


def gpu_profile(spec: GpuSpec) -> tuple[int, str]:
    """(batch size, precision) for a GPU.

    Precision: fp16 from Volta (sm70) on, fp32 below (Pascal and older run fp16 slowly).
    fp16 rather than bf16 on Ampere and newer: the MediaPipe networks ship fp16 weights (fp16 holds
    them exactly, bf16 rounds them to 8 mantissa bits) and landmark coordinates in 192 px crops need
    about 0.1 px resolution, which bf16's 3 significant digits do not give; both run at the same
    tensor-core rate. Choose bf16 in the config file if a model ever overflows in fp16.

    Batch: from :data:`KNOWN_GPUS` by name, else by memory; never more than ~1/8 of the card's
    memory at ~25 MB per 1080p image in flight.
    """
    precision = "fp16" if spec.capability >= (7, 0) else "fp32"
    name = spec.name.upper()
    mem_gib = spec.memory_bytes / _GIB
    batch = next((b for key, b in KNOWN_GPUS if key.upper() in name), 0)
    if not batch:  # unknown card: by memory
        batch = 16 if mem_gib < 6 else 32 if mem_gib < 12 else 64 if mem_gib < 40 else 128
    cap = max(4, int(spec.memory_bytes / 8 / _IMAGE_BYTES))
    return max(1, min(batch, cap)), precision


# Worker processes per GPU when the worker reads and decodes on its own threads (decode_process off).
# One process drives its GPU from one Python thread: every host sync of the detector leaves the GPU
# idle while Python prepares the next kernels, and nvJPEG calls are serialised per process, so a
# second process per GPU fills those gaps. Each process holds its own CUDA context, batches and
# compiled graphs (~3 GB at batch 128 on 1080p), so only cards with room for it and hosts with >= 4
# cores per worker get two. With the decoder process (the default) one worker per GPU runs as fast as
# two at half the memory and one compilation: the planner asks for one then.
BIG_GPU_WORKERS = 2
BIG_GPU_MIN_BYTES = 32 << 30


def default_gpu_workers(spec: GpuSpec, gpus: int, cores: int) -> int:
    """Worker processes per GPU without the decoder process, when neither flags nor file say."""
    if spec.memory_bytes >= BIG_GPU_MIN_BYTES and cores >= 4 * BIG_GPU_WORKERS * max(1, gpus):
        return BIG_GPU_WORKERS
    return 1
