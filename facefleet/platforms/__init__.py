"""facefleet.platforms: the one package that knows the hardware.

- :mod:`~facefleet.platforms.host`: what this host has (cores, CUDA devices) and which devices a
  ``--devices`` setting names;
- :mod:`~facefleet.platforms.gpu`: built-in GPU profiles (batch size, precision, workers per GPU);
- :mod:`~facefleet.platforms.cpu`: CPU workers x threads that cover the cores;
- :mod:`~facefleet.platforms.plan`: one :class:`DeviceProfile` per worker process of a job;
- :mod:`~facefleet.platforms.compile`: where torch.compile's artifacts live, per GPU and torch.

Nothing here switches anything process-wide (thread counts are set by the worker that owns its
process); importing it does not import torch.
"""

from facefleet.config import GPU_DECODERS, PRECISIONS, parse_jpeg_backends
from facefleet.platforms.compile import (
    cold_compile_threads,
    compile_cache_dir,
    compile_cache_warm,
    compile_env,
    load_compile_artifacts,
    mark_compile_cache_warm,
    save_compile_artifacts,
)
from facefleet.platforms.cpu import plan_cpu_workers
from facefleet.platforms.gpu import GpuSpec, default_gpu_workers, gpu_profile
from facefleet.platforms.host import (
    HostInfo,
    cpu_count,
    cpu_name,
    cuda_device_count,
    describe_devices,
    gpu_spec,
    parse_devices,
    probe_host,
)
from facefleet.platforms.plan import DeviceProfile, plan_devices, plan_job_devices, with_batch_size

__all__ = [
    "GPU_DECODERS",
    "PRECISIONS",
    "DeviceProfile",
    "GpuSpec",
    "HostInfo",
    "cold_compile_threads",
    "compile_cache_dir",
    "compile_cache_warm",
    "compile_env",
    "cpu_count",
    "cpu_name",
    "cuda_device_count",
    "default_gpu_workers",
    "describe_devices",
    "gpu_profile",
    "gpu_spec",
    "load_compile_artifacts",
    "mark_compile_cache_warm",
    "parse_devices",
    "parse_jpeg_backends",
    "plan_cpu_workers",
    "plan_devices",
    "plan_job_devices",
    "probe_host",
    "save_compile_artifacts",
    "with_batch_size",
]
