"""Background sampling of GPU (NVML) and host (CPU %, RSS of the process tree) usage.

>>> sampler = GpuSampler(interval=0.5).start()     # doctest: +SKIP
>>> ...                                              # doctest: +SKIP
>>> sampler.stop(); sampler.summary()               # doctest: +SKIP

NVML comes from ``nvidia-ml-py`` (``import pynvml``). Without it, without a driver or without a
GPU the sampler still records host samples and simply has no GPU samples; nothing raises.
Host figures use ``psutil`` when installed, else ``/proc`` (Linux); elsewhere they are omitted.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["GpuSampler", "HostProbe", "NvmlProbe"]

_MIB = 1024.0 * 1024.0


class NvmlProbe:
    """Reads utilisation, memory, power and temperature of every visible NVIDIA GPU.

    ``available`` is False (and :meth:`read` returns ``[]``) when NVML cannot be used.
    ``indices`` restricts to some physical GPU indices (NVML numbering).
    """

    def __init__(self, indices: list[int] | None = None) -> None:
        self.available = False
        self._nv: Any = None
        self._handles: list[tuple[int, Any]] = []
        self.names: dict[int, str] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception:  # no package, no driver, no GPU: no GPU samples
            return
        self._nv = pynvml
        for i in range(count):
            if indices is not None and i not in indices:
                continue
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                self.names[i] = name.decode() if isinstance(name, bytes) else str(name)
                self._handles.append((i, h))
            except Exception:
                continue
        self.available = bool(self._handles)

    def read(self) -> list[dict[str, Any]]:
        """One dict per GPU: index, name, util (%), mem_util (%), mem_used_mib, mem_total_mib,
        power_w, temp_c (a field is None when the GPU does not report it)."""
        if not self.available:
            return []
        nv = self._nv
        out: list[dict[str, Any]] = []
        for i, h in self._handles:
            rec: dict[str, Any] = {"index": i, "name": self.names.get(i, "")}
            try:
                u = nv.nvmlDeviceGetUtilizationRates(h)
                rec["util"], rec["mem_util"] = float(u.gpu), float(u.memory)
            except Exception:
                rec["util"] = rec["mem_util"] = None
            try:
                m = nv.nvmlDeviceGetMemoryInfo(h)
                rec["mem_used_mib"], rec["mem_total_mib"] = m.used / _MIB, m.total / _MIB
            except Exception:
                rec["mem_used_mib"] = rec["mem_total_mib"] = None
            try:
                rec["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception:
                rec["power_w"] = None
            try:
                rec["temp_c"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            except Exception:
                rec["temp_c"] = None
            out.append(rec)
        return out

    def close(self) -> None:
        if self._nv is not None:
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
            self._nv = None
            self.available = False


class HostProbe:
    """CPU % of the host and RSS (MiB) of a process and all its descendants."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else int(pid)
        self._psutil: Any = None
        try:
            import psutil

            self._psutil = psutil
            self._proc = psutil.Process(self.pid)
            psutil.cpu_percent(interval=None)  # prime: the next call measures since now
        except Exception:
            self._psutil = None
        self._last_cpu: tuple[int, int] | None = None
        self._first = True
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def read(self) -> dict[str, Any]:
        """{"cpu_percent": host CPU % over all cores since the last read, "rss_mib": tree RSS}."""
        return {"cpu_percent": self._cpu_percent(), "rss_mib": self._rss_mib()}

    def _cpu_percent(self) -> float | None:
        if self._first:  # nothing measured yet: the first read only primes the counters
            self._first = False
            self._last_cpu = _proc_cpu_times()
            if self._psutil is not None:
                self._psutil.cpu_percent(interval=None)
            return None
        if self._psutil is not None:
            return float(self._psutil.cpu_percent(interval=None))
        now = _proc_cpu_times()
        if now is None or self._last_cpu is None:
            return None
        busy = now[0] - self._last_cpu[0]
        total = now[1] - self._last_cpu[1]
        self._last_cpu = now
        return 100.0 * busy / total if total > 0 else 0.0

    def _rss_mib(self) -> float | None:
        if self._psutil is not None:
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except Exception:
                        continue
                return total / _MIB
            except Exception:
                return None
        pids = _proc_tree(self.pid)
        if not pids:
            return None
        total_pages = 0
        for pid in pids:
            try:
                total_pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return total_pages * self._page / _MIB


def _proc_cpu_times() -> tuple[int, int] | None:
    """(busy jiffies, total jiffies) of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _proc_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/<pid>/stat parent links."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class GpuSampler:
    """A daemon thread that samples every ``interval`` seconds until :meth:`stop`.

    Each sample: ``{"t": seconds since start, "cpu_percent", "rss_mib", "gpus": [per-GPU dict]}``
    (see :meth:`NvmlProbe.read`); ``gpus`` is empty without NVML or GPUs. Usable as a context
    manager.
    """

    def __init__(
        self,
        interval: float = 0.5,
        *,
        gpus: list[int] | None = None,
        pid: int | None = None,
        max_samples: int = 100_000,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"GpuSampler: interval must be > 0, got {interval}")
        self.interval = float(interval)
        self.max_samples = int(max_samples)
        self._gpu_filter = gpus
        self._pid = pid
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.started_at: float | None = None  # wall-clock (time.time()) of start()
        self.gpu_names: dict[int, str] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> GpuSampler:
        if self._thread is not None:
            return self
        self._stop.clear()
        self._t0 = time.perf_counter()
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="facefleet-gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> GpuSampler:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(5.0, 4 * self.interval))
            self._thread = None
        return self

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        nvml = NvmlProbe(self._gpu_filter)
        host = HostProbe(self._pid)
        self.gpu_names = dict(nvml.names)
        try:
            while True:
                stopping = self._stop.is_set()
                rec: dict[str, Any] = {"t": round(time.perf_counter() - self._t0, 4)}
                rec.update(host.read())
                rec["gpus"] = nvml.read()
                with self._lock:
                    if len(self._samples) >= self.max_samples:  # keep memory bounded: thin out
                        self._samples = self._samples[::2]
                    self._samples.append(rec)
                if stopping:  # that was the closing sample: short runs still get an end point
                    break
                self._stop.wait(self.interval)
        finally:
            nvml.close()

    # -- results ----------------------------------------------------------------------------
    def samples(self) -> list[dict[str, Any]]:
        """A copy of the samples so far, oldest first."""
        with self._lock:
            return [dict(s) for s in self._samples]

    def summary(self) -> dict[str, Any]:
        """Aggregates: host ``cpu_percent_mean``, ``rss_mib_peak``; per GPU (keyed by index as
        a string) ``name``, ``util_mean``, ``util_max``, ``mem_used_mib_start`` (the first sample's:
        what was in use before), ``mem_used_mib_peak``, ``mem_total_mib``, ``power_w_mean``,
        ``temp_c_max``."""
        return summarize_samples(self.samples(), self.gpu_names)

    def to_dict(self) -> dict[str, Any]:
        """Samples + summary, the ``gpu_samples`` block of a run's stats."""
        return {
            "interval": self.interval,
            "started_at": self.started_at,
            "samples": self.samples(),
            "summary": self.summary(),
        }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _max(xs: list[float]) -> float | None:
    return max(xs) if xs else None


def summarize_samples(samples: list[dict[str, Any]], names: dict[int, str] | None = None) -> dict[str, Any]:
    """Summary statistics of :class:`GpuSampler` samples (see :meth:`GpuSampler.summary`)."""
    cpu = [float(s["cpu_percent"]) for s in samples if s.get("cpu_percent") is not None]
    rss = [float(s["rss_mib"]) for s in samples if s.get("rss_mib") is not None]
    per: dict[int, dict[str, list[float]]] = {}
    gname: dict[int, str] = dict(names or {})
    for s in samples:
        for g in s.get("gpus", []):
            i = int(g["index"])
            if g.get("name"):
                gname.setdefault(i, str(g["name"]))
            d = per.setdefault(i, {"util": [], "mem": [], "total": [], "power": [], "temp": []})
            for key, field in (
                ("util", "util"),
                ("mem", "mem_used_mib"),
                ("total", "mem_total_mib"),
                ("power", "power_w"),
                ("temp", "temp_c"),
            ):
                if g.get(field) is not None:
                    d[key].append(float(g[field]))
    gpus = {
        str(i): {
            "name": gname.get(i, ""),
            "util_mean": _mean(d["util"]),
            "util_max": _max(d["util"]),
            "mem_used_mib_start": d["mem"][0] if d["mem"] else None,
            "mem_used_mib_peak": _max(d["mem"]),
            "mem_total_mib": _max(d["total"]),
            "power_w_mean": _mean(d["power"]),
            "temp_c_max": _max(d["temp"]),
        }
        for i, d in sorted(per.items())
    }
    return {
        "n_samples": len(samples),
        "duration_s": float(samples[-1]["t"]) if samples else 0.0,
        "cpu_percent_mean": _mean(cpu),
        "cpu_percent_max": _max(cpu),
        "rss_mib_peak": _max(rss),
        "gpus": gpus,
    }
