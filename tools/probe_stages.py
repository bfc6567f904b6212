"""Device time of each step of the pipeline on one decoded batch (GPU host).

Usage: python tools/probe_stages.py --corpus DIR [--batch 128] [--reps 5] [--ops] [--contend decoder,python]
       [--syncs] [--trace FILE.json.gz]

Wraps the pipeline's steps (letterbox, each network, box decoding, NMS, tiling, mesh crops, pose...)
in profiler ranges and prints, per step, the GPU kernel time it launched (summed over its calls) and
its host time, per batch: what to optimise first. Steps nest (a network call is inside its
detector step), so the rows do not add up; "batch" is the whole ``reconstruct_tensors`` call.

``--ops`` counts the torch operations one batch dispatches (each a host call; those that are not
views of a tensor launch a kernel or wait on a GPU), per facefleet function that issued them
(network internals as one row).

``--syncs`` lists where one batch makes the host wait for the device (torch's sync debug mode), by
the facefleet lines that led there; ``--trace`` writes the profiled batches' Chrome trace.

``--contend`` then times the batch again with company, as in an engine worker: "decoder" decodes
the next batch's JPEGs on a thread and stream of its own while each batch runs (what the worker's
decoder thread does), "python" keeps a pure-Python thread busy (the worst case for the GIL).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import facefleet.detect.detector as det_mod
import facefleet.geometry as geo_mod
import facefleet.mesh.predictor as mesh_mod
from facefleet.io.gpu_decode import decode_images
from facefleet.pipeline import Reconstructor

STEPS: list[tuple[Any, str, str]] = [
    (det_mod.FaceDetector, "__call__", "detect"),
    (det_mod.FaceDetector, "_views", "detect: letterbox views"),
    (det_mod.FaceDetector, "_run", "detect: network"),
    (det_mod.FaceDetector, "_tile_candidates", "detect: tiles (crowd check + tiled views + network)"),
    (det_mod.FaceDetector, "_crowded", "detect: crowd check"),
    (det_mod.FaceDetector, "_nms", "detect: nms"),
    (det_mod, "_keep_better", "detect: keep better"),
    (det_mod, "letterbox_sizes", "detect: whole-frame letterboxes"),
    (det_mod, "letterbox_tiles", "detect: tile letterboxes"),
    (mesh_mod.MeshPredictor, "__call__", "mesh"),
    (mesh_mod, "crop_rois", "mesh: crops"),
    (mesh_mod.MeshPredictor, "_run", "mesh: network"),
    (mesh_mod, "pack_images", "mesh: pack images"),
    (geo_mod, "estimate_pose", "pose"),
    (geo_mod, "to_landmarks68", "landmarks68"),
]


HOST: dict[str, float] = {}


def wrap(owner: Any, attr: str, label: str) -> None:
    found: Callable[..., Any] | None = getattr(owner, attr, None)
    if found is None:  # an older or newer tree (``PYTHONPATH=OLD``) without this step
        return
    fn = found

    @functools.wraps(fn)
    def inner(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        with record_function(label):
            out = fn(*a, **k)
        HOST[label] = HOST.get(label, 0.0) + time.perf_counter() - t0
        return out

    setattr(owner, attr, inner)


def contended(
    mode: str, step: Callable[[], Any], blobs: list[bytes], names: list[str], device: str, reps: int
) -> float:
    """Wall ms per batch of ``step`` while ``mode``'s threads run (see the module docstring)."""
    import threading

    parts = set(mode.split("+"))
    unknown = parts - {"decoder", "python"}
    if unknown:
        raise SystemExit(f"--contend: unknown mode(s) {sorted(unknown)}")
    stop = threading.Event()
    tokens = threading.Semaphore(0)
    threads = []
    if "decoder" in parts:

        def decode() -> None:
            cuda = device.startswith("cuda")
            stream = torch.cuda.Stream(device) if cuda else None
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                while True:
                    tokens.acquire()
                    if stop.is_set():
                        return
                    decode_images(blobs, names, device, stack=True, chunk=32)
                    if stream is not None:
                        stream.synchronize()

        threads.append(threading.Thread(target=decode, daemon=True))
    if "python" in parts:

        def spin() -> None:
            x = 0
            while not stop.is_set():
                for i in range(1000):
                    x ^= i

        threads.append(threading.Thread(target=spin, daemon=True))
    for t in threads:
        t.start()
    step()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        tokens.release()
        step()
    sync()
    ms = (time.perf_counter() - t0) / reps * 1e3
    stop.set()
    tokens.release()
    for t in threads:
        t.join()
    return ms


def count_ops(step: Callable[[], Any], top: int = 30) -> None:
    """Print the torch operations one call of ``step`` dispatches, per facefleet function."""
    import collections
    import sys

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.by: collections.Counter[str] = collections.Counter()
            self.views: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            f: Any = sys._getframe(1)
            key = "(outside facefleet)"
            while f is not None:
                name = f.f_code.co_filename
                if "/facefleet/" in name:
                    rel = name.split("/facefleet/")[-1]
                    key = "networks" if rel.startswith("models/") else f"{rel}:{f.f_code.co_name}"
                    break
                f = f.f_back
            self.by[key] += 1
            self.views[key] += bool(func.is_view)
            return func(*args, **(kwargs or {}))

    mode = Count()
    with mode:
        step()
    total, views = sum(mode.by.values()), sum(mode.views.values())
    net = mode.by["networks"] - mode.views["networks"]
    outside = total - views - net
    print(f"torch operations per batch: {total}, {total - views} not views ({outside} outside the networks)")
    print(f"{'ops':>7s} {'views':>7s}  issued by")
    for key, n in sorted(mode.by.items(), key=lambda kv: mode.views[kv[0]] - kv[1])[:top]:
        print(f"{n - mode.views[key]:7d} {mode.views[key]:7d}  {key}")
    print()


def list_syncs(step: Callable[[], Any]) -> None:
    """Print where one call of ``step`` makes the host wait for the device (torch's sync debug mode),
    by the facefleet lines that led there."""
    import collections
    import traceback
    import warnings

    seen: collections.Counter[str] = collections.Counter()

    def show(message: Any, *_: Any, **__: Any) -> None:
        frames = [f for f in traceback.extract_stack()[:-1] if "/facefleet/" in f.filename]
        seen[" < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    print(f"host waits for the device in one batch: {sum(seen.values())}")
    for where, n in seen.most_common():
        print(f"{n:5d}  {where}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ops", action="store_true", help="count torch operations per function")
    ap.add_argument("--contend", default="", help="comma list of decoder, python, decoder+python")
    ap.add_argument("--syncs", action="store_true", help="list the host waits for the device of one batch")
    ap.add_argument("--trace", default="", help="write the profiled batches' Chrome trace here (.json.gz)")
    a = ap.parse_args()
    files = sorted(Path(a.corpus).rglob("*.jpg"))[: a.batch]
    blobs = [f.read_bytes() for f in files]
    got = decode_images(blobs, [str(f) for f in files], a.device, stack=True)
    assert got.stack is not None
    imgs, names = got.stack, [str(f) for f in files]
    cuda = a.device.startswith("cuda")
    rec = Reconstructor(device=a.device, precision="fp16" if cuda else "fp32", runtime="torch")
    rec.warmup()
    if a.ops:
        rec.reconstruct_tensors(imgs, names)
        count_ops(lambda: rec.reconstruct_tensors(imgs, names))
    if a.syncs and cuda:
        rec.reconstruct_tensors(imgs, names)
        list_syncs(lambda: rec.reconstruct_tensors(imgs, names))
    for owner, attr, label in STEPS:
        wrap(owner, attr, label)
    for _ in range(3):
        rec.reconstruct_tensors(imgs, names)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    HOST.clear()
    t0 = time.perf_counter()
    for _ in range(a.reps):
        res = rec.reconstruct_tensors(imgs, names)
    sync()
    host = dict(HOST)
    wall = (time.perf_counter() - t0) / a.reps * 1e3
    faces = sum(len(r.faces) for r in res)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(a.reps):
            with record_function("batch"):
                rec.reconstruct_tensors(imgs, names)
        sync()
    if a.trace:
        import gzip
        import os
        import shutil

        raw = a.trace.removesuffix(".gz")
        prof.export_chrome_trace(raw)
        if a.trace.endswith(".gz"):
            with open(raw, "rb") as src, gzip.open(a.trace, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.remove(raw)
    rows = {e.key: e for e in prof.key_averages()}
    labels = {"batch", *(step[2] for step in STEPS)}  # record_function ranges: not kernels
    kernel_ms = (
        sum(
            e.self_device_time_total
            for e in prof.key_averages()
            if e.device_type.name == "CUDA" and e.key not in labels
        )
        / 1e3
    )
    where = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"batch {len(imgs)} x {tuple(imgs.shape[2:])}, {faces} faces, {where}")
    rate = len(imgs) / wall * 1e3
    print(f"wall {wall:.1f} ms/batch ({rate:.0f} img/s); kernels {kernel_ms / a.reps:.1f} ms/batch")
    print("GPU span: first to last kernel of the step (idle gaps included); host: wall time in the step")
    print(f"{'step':56s} {'calls':>6s} {'GPU span':>8s} {'host ms':>8s}")
    for label in ["batch"] + [s[2] for s in STEPS]:
        e = rows.get(label)
        if e is None:
            print(f"{label:56s} {'-':>6s}")
            continue
        print(
            f"{label:56s} {e.count / a.reps:6.1f} {e.device_time_total / 1e3 / a.reps:8.2f} "
            f"{host.get(label, 0.0) * 1e3 / a.reps:8.2f}"
        )
    for mode in [m for m in a.contend.split(",") if m]:
        ms = contended(mode, lambda: rec.reconstruct_tensors(imgs, names), blobs, names, a.device, a.reps)
        print(f"with {mode}: wall {ms:.1f} ms/batch ({len(imgs) / ms * 1e3:.0f} img/s)")
    print()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
