"""One row of ``facefleet bench`` per baseline: the engine (``facefleet run``), the per-image loop and
the LiteRT baseline, each timed and measured the same way (rates, latencies, memory, CPU time), with
the model settings every row shares."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from facefleet.bench.rates import (
    batch_points,
    cpu_seconds,
    nvml_added_mib,
    percentile,
    sampler_peaks,
    steady_rate,
)
from facefleet.monitor.gpu import GpuSampler

__all__ = [
    "cuda_count",
    "engine_config",
    "error_row",
    "litert_settings",
    "machine_info",
    "make_row",
    "repeat_corpus",
    "run_engine",
    "run_litert",
    "run_loop",
]


def cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return info


def make_row(
    name: str,
    device: str,
    images: int,
    faces: int,
    seconds: float,
    *,
    p50: float | None = None,
    p99: float | None = None,
    gpu_mib: float | None = None,
    rss_mib: float | None = None,
    failed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "device": device,
        "images": images,
        "faces": faces,
        "failed": failed,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else None,
        "faces_per_s": faces / seconds if seconds > 0 else None,
        "batch_p50_s": p50,
        "batch_p99_s": p99,
        "peak_gpu_mib": gpu_mib,
        "peak_rss_mib": rss_mib,
        **extra,
    }


def error_row(name: str, device: str, e: BaseException) -> dict[str, Any]:
    return {"name": name, "device": device, "error": f"{type(e).__name__}: {e}"}


def repeat_corpus(root: Path, files: list[Path], out: Path, k: int) -> Path:
    """``out/r1 .. out/rK``, each mirroring ``files`` (under ``root``) as symlinks to them: the engine
    lists k times the images, each a path of its own (its own manifest row), the same bytes."""
    if out.exists():
        shutil.rmtree(out)
    for r in range(1, k + 1):
        for f in files:
            dst = out / f"r{r}" / os.path.relpath(f, root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f.resolve())
    return out


def engine_config(
    path: str | None, decoder: str | None, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The engine's config: the file's (``--config``), with the decoder and ``model`` settings put over it."""
    from facefleet.config import load_config

    cfg = load_config(path) if path else {}
    if decoder:
        cfg.setdefault("gpu", {})["decoder"] = decoder
    if model:
        cfg["model"] = {**cfg.get("model", {}), **model}
    return cfg


def litert_settings(model: dict[str, Any]) -> Any:
    """The LiteRT baseline's :class:`~facefleet.bench.litert_baseline.BaselineSettings` for ``model``."""
    from dataclasses import fields

    from facefleet.bench.litert_baseline import BaselineSettings

    names = {f.name for f in fields(BaselineSettings)}
    return BaselineSettings(**{k: v for k, v in model.items() if k in names})


def run_engine(
    corpus: Path,
    out: Path,
    *,
    devices: str,
    formats: tuple[str, ...],
    batch_size: int | None,
    unit_size: int | None,
    workers: int | None,
    name: str,
    gpu_workers: int | None = None,
    decoder: str | None = None,
    config: str | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``facefleet.engine.run`` over the corpus; the row reads the run's stats.json."""
    from facefleet.engine import run

    if out.exists():
        shutil.rmtree(out)
    cpu0 = cpu_seconds()
    with GpuSampler(0.25) as sampler:
        t0 = time.perf_counter()
        run(
            str(corpus),
            str(out),
            devices=devices,
            formats=formats,
            batch_size=batch_size,
            unit_size=unit_size,
            workers=workers,
            gpu_workers=gpu_workers,
            config=engine_config(config, decoder, model),
            force=True,
            quiet=True,
        )
        seconds = time.perf_counter() - t0
    cpu_s = cpu_seconds() - cpu0
    stats: dict[str, Any] = {}
    if (out / "stats.json").is_file():
        stats = json.loads((out / "stats.json").read_text())
    totals = stats.get("totals", {})
    from facefleet.monitor.report import derive

    d = derive(stats) if stats else {"batch_latency": {}}
    lat = d["batch_latency"]
    summary = sampler.summary()
    gpu_peak, rss = sampler_peaks(summary)
    worker_peak = stats.get("gpu_memory_peak_mib") or {}
    if isinstance(worker_peak, dict) and worker_peak:
        gpu_peak = max(float(v) for v in worker_peak.values())  # torch max_memory_allocated of workers
    images = int(totals.get("images", 0))
    # engine wall time includes listing and start-up; the stats' own wall time is reported too
    return make_row(
        name,
        devices,
        images,
        int(totals.get("faces", 0)),
        seconds,
        p50=lat.get("p50"),
        p99=lat.get("p99"),
        gpu_mib=gpu_peak,
        rss_mib=rss,
        failed=int(totals.get("failed", 0)),
        steady_images_per_s=steady_rate(
            batch_points(stats.get("batch_done")) or stats.get("throughput") or [],
            workers=int((stats.get("config") or {}).get("workers") or 0) or None,
        ),
        formats=list(formats) or ["parquet"],
        engine_wall_s=d.get("wall_seconds"),
        gpu_util=summary["gpus"],
        nvml_gpu_mib=nvml_added_mib(summary),
        # seconds per stage summed over units (stages overlap; wait_* are the device thread's waits)
        stages={k: round(float(v), 3) for k, v in (stats.get("stages") or {}).items()},
        batch_stages_p50_ms=d.get("batch_stages_ms", {}),
        bound=d.get("bound"),
        model=None if model is None else f"{model.get('detector', 'auto')}, refine {model.get('refine', 2)}",
        cpu_ms_per_image=1e3 * cpu_s / images if images else None,
    )


def run_loop(
    files: list[Path], out: Path, *, device: str, budget_s: float, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The tutorial loop: per image open, decode (Pillow), Reconstructor([img]), write JSON.
    ``model``: the pipeline settings the engine runs with (a config file's ``[model]``), so that
    both do the same work per image."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from facefleet.pipeline import Reconstructor

    out.mkdir(parents=True, exist_ok=True)
    rec = Reconstructor(device=device, **(model or {}))
    rec.warmup()  # on CUDA: cuDNN plans, CUDA graphs and torch.compile code, outside the timed loop
    with Image.open(files[0]) as im:  # warm-up: first call loads/compiles kernels
        rec([np.asarray(im.convert("RGB"))])
    if rec.device.type == "cuda":
        torch.cuda.synchronize(rec.device)
        torch.cuda.reset_peak_memory_stats(rec.device)
    lat: list[float] = []
    faces = failed = 0
    cpu0 = cpu_seconds()
    with GpuSampler(0.25) as sampler:
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            t1 = time.perf_counter()
            try:
                with Image.open(f) as im:
                    arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
                res = rec([arr], sources=[str(f)])[0]
            except Exception as e:
                failed += 1
                res = None
                err = str(e)
            doc = res.to_dict() if res is not None else {"source": str(f), "faces": [], "error": err}
            faces += len(doc["faces"])
            with open(out / f"{i:07d}.json", "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            lat.append(time.perf_counter() - t1)
            if time.perf_counter() - t0 > budget_s:
                break
        seconds = time.perf_counter() - t0
    gpu_peak, rss = sampler_peaks(sampler.summary())
    if rec.device.type == "cuda":
        gpu_peak = torch.cuda.max_memory_allocated(rec.device) / 2**20
    return make_row(
        "loop (1 image at a time)",
        str(rec.device),
        len(lat),
        faces,
        seconds,
        p50=percentile(lat, 50),
        p99=percentile(lat, 99),
        gpu_mib=gpu_peak,
        rss_mib=rss,
        failed=failed,
        cpu_ms_per_image=1e3 * (cpu_seconds() - cpu0) / len(lat) if lat else None,
        model=None if model is None else f"{model.get('detector', 'auto')}, refine {model.get('refine', 2)}",
    )


def run_litert(
    files: list[Path], *, processes: int | None, budget_s: float, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """MediaPipe's models in the official LiteRT interpreter, one process per core, doing the engine's
    work for the ``model`` settings (:mod:`facefleet.bench.litert_baseline`)."""
    from facefleet.bench.litert_baseline import run_litert_pool

    settings = litert_settings(model or {})
    cpu0 = cpu_seconds()
    with GpuSampler(0.25) as sampler:
        r = run_litert_pool(
            [str(f) for f in files], processes=processes, time_budget_s=budget_s, settings=settings
        )
    _, rss = sampler_peaks(sampler.summary())
    return make_row(
        f"LiteRT CPU x{r.processes}",
        "cpu",
        r.images,
        r.faces,
        r.seconds,
        p50=percentile(list(r.latencies), 50),
        p99=percentile(list(r.latencies), 99),
        rss_mib=rss,
        failed=r.failed,
        errors=list(r.errors),
        model=settings.label(),
        cpu_ms_per_image=1e3 * (cpu_seconds() - cpu0) / r.images if r.images else None,
    )
