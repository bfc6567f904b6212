"""What this host has: CPU cores, CUDA devices (name, memory, capability), driver; and which of them
a ``--devices`` setting names. The only module that asks torch or NVML about the hardware; it does so
when called, never at import, and changes nothing process-wide."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from typing import Any

from facefleet.platforms.gpu import GpuSpec, gpu_profile


@dataclass(frozen=True)
class HostInfo:
    """The hardware a device plan is made for: ``cores`` this process may use, the CUDA devices
    torch sees (in torch's numbering, after ``CUDA_VISIBLE_DEVICES``) and the bytes of memory
    available to new processes (None: unknown, no limit)."""

    cores: int
    gpus: tuple[GpuSpec, ...] = ()
    cpu_name: str = "cpu"
    memory_bytes: int | None = None


def cuda_device_count() -> int:
    """Number of CUDA devices visible to torch (respects CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return None


def probe_host(*, gpus: bool = True) -> HostInfo:
    """This host's :class:`HostInfo` (``gpus=False``: the CPU only, without importing torch)."""
    n = cuda_device_count() if gpus else 0
    return HostInfo(cpu_count(), tuple(gpu_spec(i) for i in range(n)), cpu_name(), available_memory())


def parse_devices(spec: str | None, n_gpus: int | None = None) -> list[str]:
    """'auto' (every GPU, else the CPU), 'all' (every GPU), 'cpu', '0,1' or 'cuda:0,cuda:1'
    -> ['cuda:0', 'cuda:1'] or ['cpu']; ``n_gpus`` (default: ask torch) GPUs exist."""
    s = (spec or "auto").strip().lower()
    if s == "cpu":
        return ["cpu"]
    n = cuda_device_count() if n_gpus is None else n_gpus
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


def describe_devices() -> list[dict[str, Any]]:
    """Every device of this host, for run reports: the CPU, then each CUDA device with its
    memory, capability, built-in profile and (through NVML when present) driver version."""
    host = probe_host()
    out: list[dict[str, Any]] = [{"device": "cpu", "name": host.cpu_name, "cores": host.cores}]
    driver = _nvml_driver() if host.gpus else None
    for i, spec in enumerate(host.gpus):
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
    return out


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
