"""``facefleet bench``: facefleet vs the per-image loop vs LiteRT on all CPU cores, on one corpus.

Rows (each optional, ``--baselines``):

- ``engine``: ``facefleet.engine.run`` on the GPU(s) (CPU when there is none), Parquet output
  (plus extra ``--formats`` sets, one row each), and a scaling table over ``--gpus-scaling``;
- ``loop``: the same ``Reconstructor`` one image at a time, as most tutorials do (open the file,
  decode with Pillow, reconstruct, write a JSON file);
- ``litert``: the official LiteRT interpreter with the same models, one process per CPU core.

``--simulate-workers 1,2,4,8`` adds the CPU scheduler simulation (``facefleet.bench.simulate``).
Prints aligned tables and writes everything to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from facefleet.bench.simulate import format_sim_table, format_table, simulate_workers
from facefleet.monitor.gpu import GpuSampler

__all__ = ["bench_cli", "build_parser", "run_bench"]

_BASELINES = ("engine", "loop", "litert")


def build_parser(prog: str = "facefleet bench") -> argparse.ArgumentParser:
    from facefleet.config import flag_type

    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark facefleet against the per-image loop and LiteRT on all CPU cores, on one "
        "generated (or given) corpus, every row with the same model settings.",
    )
    p.add_argument(
        "--baselines",
        default="engine,loop,litert",
        help="comma list of engine,loop,litert (default: all); 'none' for only --simulate-workers",
    )
    p.add_argument(
        "--images", type=int, default=None, help="corpus size (default 2000 with GPUs, 300 on the CPU)"
    )
    p.add_argument(
        "--corpus-kind",
        choices=("auto", "photos", "synthetic"),
        default="auto",
        help="photos: 1080p crops of the real photos of ../shared/data/images ($FACEFLEET_SHARED_DATA), 0 "
        "to many faces per image; synthetic: real faces pasted on real backgrounds, --faces per image; "
        "auto (default): photos where that folder is present, else synthetic",
    )
    p.add_argument("--resolution", default="1920x1080", help="WxH of generated images (default 1920x1080)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--faces", default="1", help="synthetic corpus: faces per image, N or MIN-MAX (default 1)")
    p.add_argument(
        "--detector",
        choices=("auto", "short", "full"),
        default=None,
        help="model setting of every row, the engine's, the loop's and LiteRT's alike (default: --config's "
        "[model], else auto)",
    )
    p.add_argument(
        "--refine",
        type=flag_type("model.refine"),
        default=None,
        help="extra mesh passes of every row (default: [model], else 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", type=Path, help="use this existing folder of images instead of generating one")
    p.add_argument(
        "--work-dir", type=Path, help="where the corpus and outputs go (default: a temp dir, removed)"
    )
    p.add_argument("--devices", default="auto", help="engine devices: auto, cpu or 0,1 (default auto)")
    p.add_argument("--workers", type=flag_type("cpu.workers"), help="engine CPU workers (CPU mode)")
    p.add_argument(
        "--gpu-workers",
        default="",
        help="engine worker processes per GPU (default: the GPU profile); a comma list, e.g. 1,2,3, "
        "gives one engine row per value",
    )
    p.add_argument("--config", default=None, help="engine config file (TOML, as for facefleet run)")
    p.add_argument(
        "--decoders",
        default="",
        help="GPU JPEG decoder of the engine: auto, nvimgcodec, nvjpeg (default: auto); a comma list "
        "gives one engine row per value",
    )
    p.add_argument(
        "--batch-size",
        type=flag_type("gpu.batch_size", "cpu.batch_size"),
        help="engine batch size (default: the GPU profile)",
    )
    p.add_argument(
        "--unit-size",
        type=flag_type("run.unit_size"),
        default=None,
        help="engine unit size (default: the engine's)",
    )
    p.add_argument(
        "--formats",
        action="append",
        default=None,
        help="engine output formats, one engine row per use: 'parquet' (default) or e.g. "
        "'obj,png'; repeat to compare",
    )
    p.add_argument("--gpus-scaling", default="", help="e.g. 1,2,4,8: engine on the first k GPUs each")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="the engine runs over the corpus K times (K trees of symlinks to its files, each file read "
        "and decoded as usual): runs long enough for many GPUs without generating K times the images",
    )
    p.add_argument("--loop-images", type=int, default=300, help="at most this many images for the loop")
    p.add_argument("--litert-images", type=int, default=2000, help="at most this many images for LiteRT")
    p.add_argument("--litert-processes", type=int, help="LiteRT processes (default: all cores)")
    p.add_argument(
        "--baseline-seconds",
        type=float,
        default=60.0,
        help="time budget per slow baseline (loop, litert); rates stay exact",
    )
    p.add_argument("--simulate-workers", default="", help="e.g. 1,2,4,8: CPU simulation of the scheduler")
    p.add_argument("--sim-rate", type=float, default=3000.0, help="simulated images/s per worker")
    p.add_argument("--sim-seconds", type=float, default=5.0, help="ideal length of each simulation")
    p.add_argument("--sim-unit-size", type=int, default=256)
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    return p


def _parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.replace(" ", "").split(",") if x]


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _machine() -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
def _row(
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


def _cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and by its children that have ended and
    been waited for (the engine's workers, the LiteRT pool): differences of it are a call's CPU cost, a
    figure that other jobs on a shared machine disturb far less than its rate."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _error_row(name: str, device: str, e: BaseException) -> dict[str, Any]:
    return {"name": name, "device": device, "error": f"{type(e).__name__}: {e}"}


def _sampler_peaks(summ: dict[str, Any]) -> tuple[float | None, float | None]:
    """Peak GPU memory used (NVML, busiest GPU) and host RSS from a :meth:`GpuSampler.summary`."""
    gpu = [g["mem_used_mib_peak"] for g in summ["gpus"].values() if g.get("mem_used_mib_peak") is not None]
    return (max(gpu) if gpu else None), summ.get("rss_mib_peak")


def nvml_added_mib(summary: dict[str, Any]) -> float | None:
    """Device memory a run added on its busiest GPU by NVML's count (peak "used" minus the first
    sample's, taken before the workers started), from a :meth:`GpuSampler.summary`: what nvidia-smi
    shows the run's processes holding (CUDA contexts, caching allocators' free blocks, graph pools,
    workspaces), against the ``peak_gpu_mib`` the workers allocate. None without NVML."""
    added = [
        float(g["mem_used_mib_peak"]) - float(g["mem_used_mib_start"])
        for g in summary.get("gpus", {}).values()
        if g.get("mem_used_mib_peak") is not None and g.get("mem_used_mib_start") is not None
    ]
    return max(added) if added else None


def _find_stats(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _batch_points(done: Any) -> list[dict[str, Any]]:
    """The engine's batch completions ``[[t, images, worker], ...]`` as cumulative samples for
    :func:`steady_rate`: one per batch (the coordinator's own samples are a second apart, coarse
    for runs of a few seconds)."""
    pts: list[dict[str, Any]] = []
    total = 0.0
    for row in sorted(done or [], key=lambda r: float(r[0])):
        total += float(row[1])
        pts.append({"t": float(row[0]), "images": total, "worker": str(row[2]) if len(row) > 2 else ""})
    return pts


def steady_rate(
    throughput: list[dict[str, Any]], lo: float = 0.1, hi: float = 0.9, workers: int | None = None
) -> float | None:
    """Images/s while the run is in full swing: between the moments ``lo`` and ``hi`` of all images
    were done (interpolated in the engine's cumulative samples [{"t", "images"}, ...]). Start-up
    (model loading, warm-up) and the tail (the last units, when some workers already idle) are left
    out alike for 1 or N workers.

    Samples that name their worker (one per batch, :func:`_batch_points`) also narrow the window to
    the time every worker was running: from the last worker's first batch to the first worker's last
    batch. Workers come up seconds apart (compilation on a busy host), and on a short run the first
    ones can do most of the images before the last one starts; a rate over that time is not N
    workers' rate. ``None`` when there is no such window (too few images for this many workers), or
    when fewer than ``workers`` (the run's worker count) did any batch at all."""
    pts = [(float(r["t"]), float(r["images"])) for r in throughput if "t" in r and "images" in r]
    if len(pts) < 3 or pts[-1][1] <= 0:
        return None
    total = pts[-1][1]

    def when(frac: float) -> float | None:
        goal = frac * total
        for (t0, n0), (t1, n1) in itertools.pairwise(pts):
            if n0 < goal <= n1:
                return t0 + (t1 - t0) * (goal - n0) / (n1 - n0)
        return None

    def done_at(t: float) -> float:  # images done at time t (interpolated)
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, n0), (t1, n1) in itertools.pairwise(pts):
            if t0 <= t <= t1:
                return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1
        return total

    a, b = when(lo), when(hi)
    if a is None or b is None or b <= a:
        return None
    spans: dict[str, list[float]] = {}
    for r in throughput:
        if r.get("worker"):
            span = spans.setdefault(str(r["worker"]), [float(r["t"]), float(r["t"])])
            span[0], span[1] = min(span[0], float(r["t"])), max(span[1], float(r["t"]))
    if spans and workers is not None and len(spans) < workers:
        return None
    if len(spans) > 1:
        a = max(a, max(s[0] for s in spans.values()))
        b = min(b, min(s[1] for s in spans.values()))
        if b <= a:
            return None
    return (done_at(b) - done_at(a)) / (b - a)


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


def _engine_config(
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


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The model settings every row runs with: ``--config``'s ``[model]`` with ``--detector`` and
    ``--refine`` over it, and the defaults (detector auto, refine 2) for what neither gives."""
    model = {"detector": "auto", "refine": 2, **_engine_config(args.config, None).get("model", {})}
    if args.detector is not None:
        model["detector"] = args.detector
    if args.refine is not None:
        model["refine"] = args.refine
    return model


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
    from facefleet import engine

    run: Any = getattr(engine, "run", None)
    if run is None:  # the package may not re-export it
        from facefleet.engine import runner

        run = runner.run
    if out.exists():
        shutil.rmtree(out)
    cpu0 = _cpu_seconds()
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
            config=_engine_config(config, decoder, model),
            force=True,
            quiet=True,
        )
        seconds = time.perf_counter() - t0
    cpu_s = _cpu_seconds() - cpu0
    stats: dict[str, Any] = {}
    if (out / "stats.json").is_file():
        stats = json.loads((out / "stats.json").read_text())
    totals = stats.get("totals", {})
    from facefleet.monitor.report import derive

    d = derive(stats) if stats else {"batch_latency": {}}
    lat = d["batch_latency"]
    summary = sampler.summary()
    gpu_peak, rss = _sampler_peaks(summary)
    worker_peak = stats.get("gpu_memory_peak_mib") or {}
    if isinstance(worker_peak, dict) and worker_peak:
        gpu_peak = max(float(v) for v in worker_peak.values())  # torch max_memory_allocated of workers
    images = int(totals.get("images", 0))
    # engine wall time includes listing and start-up; the stats' own wall time is reported too
    return _row(
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
            _batch_points(stats.get("batch_done")) or stats.get("throughput") or [],
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
    cpu0 = _cpu_seconds()
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
    gpu_peak, rss = _sampler_peaks(sampler.summary())
    if rec.device.type == "cuda":
        gpu_peak = torch.cuda.max_memory_allocated(rec.device) / 2**20
    return _row(
        "loop (1 image at a time)",
        str(rec.device),
        len(lat),
        faces,
        seconds,
        p50=_pct(lat, 50),
        p99=_pct(lat, 99),
        gpu_mib=gpu_peak,
        rss_mib=rss,
        failed=failed,
        cpu_ms_per_image=1e3 * (_cpu_seconds() - cpu0) / len(lat) if lat else None,
    )


def run_litert(
    files: list[Path], *, processes: int | None, budget_s: float, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """MediaPipe's models in the official LiteRT interpreter, one process per core, doing the engine's
    work for the ``model`` settings (:mod:`facefleet.bench.litert_baseline`)."""
    from facefleet.bench.litert_baseline import run_litert_pool

    settings = litert_settings(model or {})
    cpu0 = _cpu_seconds()
    with GpuSampler(0.25) as sampler:
        r = run_litert_pool(
            [str(f) for f in files], processes=processes, time_budget_s=budget_s, settings=settings
        )
    _, rss = _sampler_peaks(sampler.summary())
    return _row(
        f"LiteRT CPU x{r.processes}",
        "cpu",
        r.images,
        r.faces,
        r.seconds,
        p50=_pct(list(r.latencies), 50),
        p99=_pct(list(r.latencies), 99),
        rss_mib=rss,
        failed=r.failed,
        errors=list(r.errors),
        model=settings.label(),
        cpu_ms_per_image=1e3 * (_cpu_seconds() - cpu0) / r.images if r.images else None,
    )


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def format_rows(rows: list[dict[str, Any]]) -> str:
    loop = next(
        (r.get("images_per_s") for r in rows if r["name"].startswith("loop") and "error" not in r), None
    )
    lite = next(
        (r.get("images_per_s") for r in rows if r["name"].startswith("LiteRT") and "error" not in r), None
    )
    head = [
        "baseline",
        "device",
        "images",
        "img/s",
        "steady",
        "faces/s",
        "p50 ms",
        "p99 ms",
        "GPU MiB",
        "NVML MiB",
        "RSS MiB",
        "CPU ms/img",
        "x loop",
        "x LiteRT",
    ]
    out = []
    notes = []
    for r in rows:
        if "error" in r:
            out.append([r["name"], r["device"], "failed", *["-"] * 11])
            notes.append(f"{r['name']}: {r['error']}")
            continue
        ips = r.get("images_per_s")
        # the loop and LiteRT are timed after their warm-up, so compare with the engine's steady rate
        cmp = r.get("steady_images_per_s") or ips
        out.append(
            [
                r["name"],
                r["device"],
                f"{r['images']:,}",
                _f(ips, "{:,.1f}"),
                _f(r.get("steady_images_per_s"), "{:,.1f}"),
                _f(r.get("faces_per_s"), "{:,.1f}"),
                _f(None if r.get("batch_p50_s") is None else 1e3 * r["batch_p50_s"], "{:.1f}"),
                _f(None if r.get("batch_p99_s") is None else 1e3 * r["batch_p99_s"], "{:.1f}"),
                _f(r.get("peak_gpu_mib"), "{:,.0f}"),
                _f(r.get("nvml_gpu_mib"), "{:,.0f}"),
                _f(r.get("peak_rss_mib"), "{:,.0f}"),
                _f(r.get("cpu_ms_per_image"), "{:,.0f}"),
                _f(cmp / loop if cmp and loop else None, "{:.1f}x"),
                _f(cmp / lite if cmp and lite else None, "{:.2f}x"),
            ]
        )
    notes.append(
        "x loop / x LiteRT: steady img/s where measured (the baselines are timed after their warm-up); "
        "img/s includes the engine's start-up; every row does the same work per image (its model settings)"
    )
    notes.append(
        "CPU ms/img: CPU time of the whole call (start-up included: the engine's, the LiteRT pool's) per "
        "image, all processes; on a shared machine a steadier measure of the work than the rates"
    )
    notes.append(
        "GPU MiB: peak memory allocated (the engine: its busiest worker with its decoders); NVML MiB: what "
        "the run added to the busiest GPU's used memory by NVML's count (contexts and caches too)"
    )
    return "\n".join([format_table(head, out), *notes])


def format_scaling(rows: list[dict[str, Any]]) -> str:
    def rate(r: dict[str, Any]) -> float | None:  # steady state: start-up is a constant, not scaling
        return r.get("steady_images_per_s")

    base = next((rate(r) for r in rows if r.get("gpus") == 1 and rate(r)), None)
    out = []
    notes = []
    for r in rows:
        if "error" in r:
            out.append([str(r.get("gpus")), "-", "-", "-", "-"])
            notes.append(f"{r.get('gpus')} GPU(s): {r['error']}")
            continue
        ips = rate(r)
        if ips is None:
            notes.append(
                f"{r['gpus']} GPU(s): no steady rate: the workers never all ran at once between 10 % and "
                "90 % of the images (the first ones up did them before the last was ready); use more --images"
            )
        sp = ips / base if base and ips else None
        out.append(
            [
                str(r["gpus"]),
                _f(r.get("images_per_s"), "{:,.1f}"),
                _f(ips, "{:,.1f}"),
                _f(sp, "{:.2f}x"),
                _f(100 * sp / r["gpus"] if sp else None, "{:.1f}%"),
            ]
        )
    head = ["GPUs", "img/s (with start)", "steady img/s", "speedup", "efficiency"]
    return "\n".join([format_table(head, out), *notes])


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def _resolution(s: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise SystemExit(f"facefleet bench: --resolution must be WxH, e.g. 1920x1080 (got {s!r})") from None
    return w, h


def _faces(s: str) -> tuple[int, int]:
    a, _, b = s.partition("-")
    return int(a), int(b or a)


def _make_corpus(
    args: argparse.Namespace, out: Path, n: int, log: Any
) -> tuple[Path, list[Path], dict[str, Any]]:
    """The corpus ``args`` ask for: (folder, files, its description for the JSON)."""
    from facefleet.bench.corpus import make_corpus, make_photo_corpus, photo_files

    res = _resolution(args.resolution)
    photos = photo_files() if args.corpus_kind != "synthetic" else []
    if args.corpus_kind == "photos" and not photos:
        raise SystemExit(
            "facefleet bench: --corpus-kind photos needs the shared photos (../shared/data/images, or "
            "$FACEFLEET_SHARED_DATA/images)"
        )
    if photos:
        c = make_photo_corpus(out, n, resolution=res, quality=args.quality, seed=args.seed, photos=photos)
        log(
            f"corpus: {len(c)} JPEGs, {res[0]}x{res[1]} (upright for portraits) crops of {len(photos)} real "
            f"photos of {photos[0].parent}, q{args.quality} ({c.seconds:.1f} s)"
        )
        desc: dict[str, Any] = {"kind": "photos", "photos": str(photos[0].parent), "expected_faces": None}
    else:
        c = make_corpus(
            out, n, resolution=res, quality=args.quality, faces_per_image=_faces(args.faces), seed=args.seed
        )
        log(
            f"corpus: {len(c)} JPEGs {res[0]}x{res[1]} q{args.quality}, {sum(c.faces)} faces pasted "
            f"({c.seconds:.1f} s)"
        )
        if args.corpus_kind == "auto":
            log(
                "corpus: synthetic (faces pasted on backgrounds): the real photos of ../shared/data/images "
                "are not here ($FACEFLEET_SHARED_DATA); a photo corpus mixes 0 to many faces per image"
            )
        desc = {
            "kind": "synthetic",
            "faces_per_image": list(_faces(args.faces)),
            "expected_faces": sum(c.faces),
        }
    desc |= {"n": len(c), "resolution": list(res), "quality": args.quality, "seed": args.seed}
    desc["seconds"] = round(c.seconds, 2)
    return c.root, list(c.files), desc


def run_bench(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Run everything ``args`` asks for; returns the JSON-able result (also printed as tables)."""
    baselines = (
        [] if args.baselines.strip() == "none" else [b.strip() for b in args.baselines.split(",") if b]
    )
    bad = [b for b in baselines if b not in _BASELINES]
    if bad:
        raise SystemExit(f"facefleet bench: unknown baseline(s) {bad}; choose from {', '.join(_BASELINES)}")
    if args.repeat < 1:
        raise SystemExit(f"facefleet bench: --repeat must be at least 1 (got {args.repeat})")
    result: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "command": "facefleet bench " + " ".join(args.argv),
        "rows": [],
        "scaling": [],
        "simulation": [],
    }
    own_tmp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="facefleet-bench-")) if own_tmp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        if baselines:
            ngpu = _cuda_count()
            devices = args.devices
            if devices == "auto" and ngpu == 0:
                devices = "cpu"
            if args.corpus:
                from facefleet.io.discover import iter_inputs

                corpus_dir = args.corpus
                files = sorted(Path(p) for p in iter_inputs(str(corpus_dir)))
                result["corpus"] = {"path": str(corpus_dir), "n": len(files)}
            else:
                n = args.images if args.images is not None else (300 if devices == "cpu" else 2000)
                corpus_dir, files, result["corpus"] = _make_corpus(args, work / "corpus", n, log)
            if args.repeat > 1:
                corpus_dir = repeat_corpus(corpus_dir, files, work / "repeated", args.repeat)
                result["corpus"]["repeat"] = args.repeat
                log(f"corpus: {len(files)} files x {args.repeat} (trees of symlinks in {corpus_dir})")
            model = model_settings(args)
            result["model"] = model
            log(
                f"model settings of every row: detector {model['detector']}, refine {model['refine']} "
                "(LiteRT runs the same detector models, tiles and mesh passes)"
            )
            per_gpu: list[int | None] = list(_parse_ints(args.gpu_workers)) or [None]
            decoders: list[str | None] = [d for d in args.decoders.replace(" ", "").split(",") if d] or [None]
            if "engine" in baselines:
                for fs in args.formats or ["parquet"]:
                    fmts = tuple(x for x in fs.replace(" ", "").split(",") if x and x != "parquet")
                    for g, dec in ((g, dec) for dec in decoders for g in per_gpu):
                        name = "facefleet run" + ("" if not fmts else f" +{','.join(fmts)}")
                        name += f" ({g}/GPU)" if g and devices != "cpu" else ""
                        name += f" [{dec}]" if dec and devices != "cpu" else ""
                        log(f"running {name} on {devices} ...")
                        try:
                            row = run_engine(
                                corpus_dir,
                                work / f"out_{'_'.join(fmts) or 'parquet'}",
                                devices=devices,
                                formats=fmts,
                                batch_size=args.batch_size,
                                unit_size=args.unit_size,
                                workers=args.workers,
                                gpu_workers=g,
                                decoder=dec,
                                config=args.config,
                                name=name,
                                model=model,
                            )
                        except Exception as e:
                            row = _error_row(name, devices, e)
                        result["rows"].append(row)
            if "loop" in baselines:
                dev = (
                    "cpu"
                    if devices == "cpu" or ngpu == 0
                    else (f"cuda:{devices.split(',')[0]}" if devices not in ("auto", "all") else "cuda")
                )
                log(f"running the per-image loop on {dev} ...")
                try:
                    row = run_loop(
                        files[: args.loop_images],
                        work / "out_loop",
                        device=dev,
                        budget_s=args.baseline_seconds,
                        model=model,
                    )
                except Exception as e:
                    row = _error_row("loop (1 image at a time)", dev, e)
                result["rows"].append(row)
            if "litert" in baselines:
                log("running LiteRT on all CPU cores ...")
                try:
                    row = run_litert(
                        files[: args.litert_images],
                        processes=args.litert_processes,
                        budget_s=args.baseline_seconds,
                        model=model,
                    )
                except Exception as e:
                    row = _error_row("LiteRT CPU", "cpu", e)
                result["rows"].append(row)
            log("")
            log(format_rows(result["rows"]))
            scaling = _parse_ints(args.gpus_scaling)
            if scaling:
                for k in scaling:
                    if k > ngpu:
                        result["scaling"].append({"gpus": k, "error": f"only {ngpu} GPU(s) here"})
                        continue
                    log(f"scaling: engine on {k} GPU(s) ...")
                    try:
                        row = run_engine(
                            corpus_dir,
                            work / f"out_scale{k}",
                            devices=",".join(map(str, range(k))),
                            formats=(),
                            batch_size=args.batch_size,
                            unit_size=args.unit_size,
                            workers=None,
                            gpu_workers=per_gpu[0],
                            decoder=decoders[0],
                            config=args.config,
                            name=f"facefleet run x{k}",
                            model=model,
                        )
                        row["gpus"] = k
                    except Exception as e:
                        row = {"gpus": k, **_error_row(f"facefleet run x{k}", str(k), e)}
                    result["scaling"].append(row)
                log("")
                log(format_scaling(result["scaling"]))
        sim = _parse_ints(args.simulate_workers)
        if sim:
            log(f"simulating {sim} workers at {args.sim_rate:,.0f} images/s each ...")
            sims = [
                simulate_workers(
                    n,
                    rate=args.sim_rate,
                    seconds=args.sim_seconds,
                    unit_size=args.sim_unit_size,
                    work_dir=work,
                )
                for n in sim
            ]
            result["simulation"] = [s.to_dict() for s in sims]
            log("")
            log(format_sim_table(sims))
    finally:
        if own_tmp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            result["work_dir"] = str(work)
    if args.json:
        from facefleet.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1, default=str) + "\n")
        log(f"\nwrote {args.json}")
    return result


def bench_cli(argv: list[str] | None = None) -> int:
    """Entry point of ``facefleet bench``; returns the exit code (1 if a baseline failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    result = run_bench(args)
    failed = [r for r in result["rows"] + result["scaling"] if "error" in r and "only" not in r["error"]]
    return 1 if failed else 0
