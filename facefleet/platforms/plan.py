"""Device planning: one :class:`DeviceProfile` per worker process to start, from a job's config and
the host's hardware (:class:`~facefleet.platforms.host.HostInfo`). Pure given the host: tests pass a
made-up host rather than patching torch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from facefleet.config import ConfigError, CpuConfig, GpuConfig, JobConfig, apply_mapping, resolve
from facefleet.platforms.cpu import plan_cpu_workers
from facefleet.platforms.gpu import default_gpu_workers, gpu_profile
from facefleet.platforms.host import HostInfo, parse_devices, probe_host


@dataclass(frozen=True)
class DeviceProfile:
    """How one worker process drives one device (the resolved :class:`~facefleet.config.GpuConfig`
    or :class:`~facefleet.config.CpuConfig` of its device: see their fields' help)."""

    device: str  # "cuda:N" or "cpu"
    name: str
    batch_size: int
    precision: str
    decoder: str  # GPU JPEG decoder (auto, nvimgcodec, nvjpeg); "cpu" on CPU workers
    threads: int  # torch intra-op threads of the worker process
    memory_bytes: int = 0
    batches_in_flight: int = 2
    decode_chunk: int = 32
    decode_threads: int = 1
    decode_backends: str = "auto"
    decode_cpu_threads: int = 0
    compile: bool = True
    decode_process: bool = False
    eager_start: bool = False  # GPU workers: eager networks until the compiled ones are built
    network_threads: int = 1
    capability: tuple[int, int] | None = None
    source: str = "builtin"  # where batch size/precision came from: builtin, config or cli
    runtime: str = "torch"  # network runtime of CPU workers (auto, torch, litert); GPU workers: torch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["capability"] = list(self.capability) if self.capability else None
        return d


def plan_job_devices(
    cfg: JobConfig, host: HostInfo | None = None, *, cli: bool = False
) -> list[DeviceProfile]:
    """The worker processes of a job: ``cfg.gpu`` (per GPU, with its ``[gpu."NAME"]`` tables) workers
    on each GPU of ``cfg.devices``, or ``cfg.cpu`` workers on the CPU. ``cli``: the batch size and
    precision were given as flags (recorded as the profiles' ``source``)."""
    if host is None:
        host = probe_host(gpus=cfg.devices.strip().lower() != "cpu")
    devs = parse_devices(cfg.devices, len(host.gpus))
    gpus = [d for d in devs if d != "cpu"]
    profiles: list[DeviceProfile] = []
    if "cpu" in devs:
        profiles += _cpu_profiles(cfg.cpu, host, cli)
    for dev in gpus:
        profiles += _gpu_profiles(cfg.gpu, dev, host, len(gpus), cli)
    return profiles


def _cpu_profiles(c: CpuConfig, host: HostInfo, cli: bool) -> list[DeviceProfile]:
    if c.precision == "fp16":
        raise ConfigError("cpu.precision: fp16 is not supported on the CPU: use fp32 or bf16")
    workers, threads = plan_cpu_workers(host.cores, c.workers, c.threads, host.memory_bytes)
    src = "cli" if cli else "builtin" if c == CpuConfig() else "config"
    p = DeviceProfile(
        "cpu", host.cpu_name, c.batch_size, c.precision, "cpu", threads, source=src,
        decode_process=c.decode_process, network_threads=c.network_threads, runtime=c.runtime,
    )  # fmt: skip
    return [p] * workers


def _gpu_profiles(g0: GpuConfig, dev: str, host: HostInfo, n_gpus: int, cli: bool) -> list[DeviceProfile]:
    spec = host.gpus[int(dev.split(":")[1])]
    g = g0.for_gpu(spec.name)
    bs, prec = gpu_profile(spec)
    src = (
        "cli"
        if cli
        else "config"
        if (g != replace(GpuConfig(), by_name=()) or g0.set_for_gpu(spec.name))
        else "builtin"
    )
    per_gpu = g.workers or (1 if g.decode_process else default_gpu_workers(spec, n_gpus, host.cores))
    p = DeviceProfile(
        dev,
        spec.name,
        g.batch_size or bs,
        g.precision or prec,
        g.decoder,
        g.threads,
        memory_bytes=spec.memory_bytes,
        # the decoder process decodes straight into the slots: the third is the batch decoded ahead
        batches_in_flight=g.batches_in_flight or (3 if g.decode_process else 2),
        decode_chunk=g.decode_chunk,
        # beside the networks, two batches decoded at once keep the JPEG engine busier than one
        decode_threads=g.decode_threads or (2 if g.decode_process else 1),
        decode_backends=g.decode_backends,
        decode_cpu_threads=g.decode_cpu_threads,
        compile=g.compile,
        decode_process=g.decode_process,
        network_threads=g.network_threads,
        eager_start=g.eager_start,
        capability=spec.capability,
        source=src,
    )
    return [p] * per_gpu


def plan_devices(
    devices: str | None = "auto",
    *,
    config: JobConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    cpu_workers: int | None = None,
    gpu_workers: int | None = None,
    host: HostInfo | None = None,
) -> list[DeviceProfile]:
    """:func:`plan_job_devices` for callers holding loose settings: ``config`` (a JobConfig, a
    TOML-shaped mapping or a file) with ``devices`` (unless "auto": then the config's) and the
    explicit arguments (flags) over it.
    Raises ConfigError (a ValueError) naming the key of a bad setting."""
    cfg = resolve(config)
    # "auto" is also the engine's default argument: a config that names devices decides then
    flags: dict[str, Any] = {} if devices in (None, "auto") else {"devices": devices}
    for key, value in (("batch_size", batch_size), ("precision", precision)):
        if value is not None:
            flags.setdefault("gpu", {})[key] = value
            flags.setdefault("cpu", {})[key] = value
    if cpu_workers is not None:
        flags.setdefault("cpu", {})["workers"] = cpu_workers
    if gpu_workers is not None:
        flags.setdefault("gpu", {})["workers"] = gpu_workers
    cfg = apply_mapping(cfg, flags, "arguments", gpu_beats_tables=True)
    return plan_job_devices(cfg, host, cli=batch_size is not None or precision is not None)


def with_batch_size(p: DeviceProfile, batch_size: int) -> DeviceProfile:
    """``p`` with another batch size."""
    return replace(p, batch_size=int(batch_size))


def worker_names(profiles: tuple[DeviceProfile, ...] | list[DeviceProfile]) -> list[str]:
    """One name per worker: cpu0, cpu1, ...; gpuN for the (first) worker of GPU N, gpuN.K for its
    K-th further worker when a GPU runs several."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(profiles):
        if p.device == "cpu":
            names.append(f"cpu{i}")
            continue
        k = seen.get(p.device, 0)
        seen[p.device] = k + 1
        base = p.device.replace("cuda:", "gpu")
        names.append(base if k == 0 else f"{base}.{k}")
    return names
