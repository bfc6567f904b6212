"""``facefleet bench-core``: speed of the per-device pipeline and agreement across devices/dtypes.

Prints three tables:
1. the networks alone (items/s per model, batch size and precision);
2. detect + mesh (+ texture) on already-decoded image batches (images/s and faces/s);
3. agreement: landmarks of CUDA fp32/fp16/bf16 against CPU fp32 (pixels), on real photos.

Timings use CUDA events (or perf_counter on CPU) after warm-up; the median of repeats is shown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _timeit(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call of ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sample_images(n_distinct: int = 4) -> list[np.ndarray]:
    """Real portraits: the scikit-image astronaut plus shared photos when present."""
    from skimage import data

    imgs = [np.ascontiguousarray(data.astronaut())]
    from facefleet.bench.accuracy import default_data_dir

    d = default_data_dir() / "images"
    if d.is_dir():
        from facefleet.io.decode import read_image

        for name in ("face_recognition_obama.jpg", "3ddfa_v2_JianzhuGuo.jpg", "deepface_img24.jpg"):
            if (d / name).is_file() and len(imgs) < n_distinct:
                imgs.append(read_image(d / name))
    return imgs


def _letterbox_1080p(img: np.ndarray) -> np.ndarray:
    """Place a portrait on a 1920x1080 canvas (scaled to 900 px high), as a 1080p photo."""
    from PIL import Image

    h, w = img.shape[:2]
    s = 900 / h
    im = Image.fromarray(img).resize((max(1, int(w * s)), 900), Image.Resampling.BILINEAR)
    canvas = np.full((1080, 1920, 3), 90, np.uint8)
    x0 = (1920 - im.width) // 2
    canvas[90 : 90 + 900, x0 : x0 + im.width] = np.asarray(im)
    return canvas


def bench_networks(
    device: torch.device, batches: list[int], dtypes: list[str], repeats: int, model_dir: Path | None
) -> list[dict[str, Any]]:
    from facefleet.models import load_model

    rows = []
    sizes = {"face_detection_short_range": 128, "face_detection_full_range": 192, "face_landmark": 192}
    base = torch.from_numpy(_sample_images(1)[0]).permute(2, 0, 1).float().div(255)[None]
    for name, size in sizes.items():
        for dt in dtypes:
            if device.type == "cpu" and dt == "fp16":
                continue
            net = load_model(name, device=device, dtype=DTYPES[dt], model_dir=model_dir)
            for b in batches:
                x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")
                x = (x.repeat(b, 1, 1, 1) + 0.01 * torch.randn(b, 3, size, size)).to(device, DTYPES[dt])

                def call(net: Any = net, x: torch.Tensor = x) -> Any:
                    with torch.inference_mode():
                        return net(x)

                s = _timeit(call, device, repeats)
                rows.append({"model": name, "dtype": dt, "batch": b, "ms": s * 1e3, "items_per_s": b / s})
                print(f"  {name:<28}{dt:<6}{b:>6}{s * 1e3:>10.2f} ms{b / s:>12.0f} /s", flush=True)
    return rows


def bench_pipeline(
    device: torch.device,
    batches: list[int],
    dtypes: list[str],
    repeats: int,
    texture: bool,
    model_dir: Path | None,
) -> list[dict[str, Any]]:
    from facefleet.pipeline import Reconstructor

    rows = []
    frames = [torch.from_numpy(_letterbox_1080p(im)).permute(2, 0, 1).contiguous() for im in _sample_images()]
    for dt in dtypes:
        if device.type == "cpu" and dt == "fp16":
            continue
        rec = Reconstructor(device=device, precision=dt, model_dir=model_dir, max_faces=4)
        for b in batches:
            imgs = [frames[i % len(frames)].to(device) for i in range(b)]
            names = [f"img{i}" for i in range(b)]
            out: list[Any] = []

            def run(
                imgs: list[torch.Tensor] = imgs,
                names: list[str] = names,
                out: list[Any] = out,
                rec: Any = rec,
            ) -> None:
                out[:] = rec.reconstruct_tensors(imgs, names, texture=texture)

            s = _timeit(run, device, repeats)
            faces = sum(len(r.faces) for r in out)
            stages: dict[str, float] = {}
            rec.reconstruct_tensors(imgs, names, texture=texture, timings=stages)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append(
                {
                    "dtype": dt,
                    "batch": b,
                    "texture": texture,
                    "ms": s * 1e3,
                    "images_per_s": b / s,
                    "faces_per_s": faces / s,
                    "faces": faces,
                    "stages_ms": {k: v * 1e3 for k, v in stages.items()},
                    "peak_gib": peak,
                }
            )
            st = " ".join(f"{k}={v * 1e3:.1f}" for k, v in stages.items())
            print(
                f"  {dt:<6}{b:>6}{s * 1e3:>10.1f} ms{b / s:>10.0f} img/s{faces / s:>10.0f} faces/s"
                f"  peak {peak:.2f} GiB  [{st} ms]",
                flush=True,
            )
    return rows


def agreement(device: torch.device, dtypes: list[str], model_dir: Path | None) -> list[dict[str, Any]]:
    """Landmark differences of ``device`` at each precision against CPU fp32 on real photos."""
    from facefleet.pipeline import Reconstructor

    imgs = _sample_images(8)
    ref = Reconstructor(device="cpu", precision="fp32", model_dir=model_dir)(imgs)
    rows = []
    for dt in dtypes:
        if device.type == "cpu" and dt != "bf16":
            continue
        res = Reconstructor(device=device, precision=dt, model_dir=model_dir)(imgs)
        diffs, dyaw, nmatch = [], [], 0
        for a, b in zip(ref, res):
            for fa in a.faces:
                if not b.faces:
                    continue
                fb = min(b.faces, key=lambda f: float(np.abs(f.bbox - fa.bbox).sum()))
                nmatch += 1
                size = float(np.sqrt((fa.bbox[2] - fa.bbox[0]) * (fa.bbox[3] - fa.bbox[1])))
                diffs.append(np.abs(fb.landmarks[:, :2] - fa.landmarks[:, :2]).max() / size * 100)
                dyaw.append(abs(fb.pose.yaw - fa.pose.yaw))
        nref = sum(len(r.faces) for r in ref)
        row = {
            "device": str(device),
            "dtype": dt,
            "faces_ref": nref,
            "faces_matched": nmatch,
            "max_landmark_diff_pct_of_box": float(max(diffs)) if diffs else None,
            "max_yaw_diff_deg": float(max(dyaw)) if dyaw else None,
        }
        rows.append(row)
        print(
            f"  {device} {dt:<6} faces {nmatch}/{nref}  max |landmark diff| = "
            f"{row['max_landmark_diff_pct_of_box']:.4f} % of box size, "
            f"max |yaw diff| = {row['max_yaw_diff_deg']:.3f} deg"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="facefleet bench-core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", default="fp32,fp16,bf16")
    p.add_argument("--net-batches", default="1,8,64,256,512,1024")
    p.add_argument("--batches", default="1,8,32,128,512")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--what", default="networks,pipeline,agreement")
    p.add_argument(
        "--texture", action="store_true", help="include the UV texture stage in the pipeline table"
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--model-dir", type=Path, default=None)
    args = p.parse_args(argv)
    from facefleet._device import resolve_device

    device = resolve_device(args.device)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    what = set(args.what.split(","))
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU x{torch.get_num_threads()} threads"
    )
    print(f"facefleet bench-core on {device} ({name}), torch {torch.__version__}")
    report: dict[str, Any] = {"device": str(device), "device_name": name, "torch": torch.__version__}
    if "networks" in what:
        print("networks alone (items/s = crops or detector inputs per second):")
        report["networks"] = bench_networks(
            device, [int(x) for x in args.net_batches.split(",")], dtypes, args.repeats, args.model_dir
        )
    if "pipeline" in what:
        print(
            f"pipeline on decoded 1080p batches (detect + mesh + pose{' + texture' if args.texture else ''}):"
        )
        report["pipeline"] = bench_pipeline(
            device,
            [int(x) for x in args.batches.split(",")],
            dtypes,
            max(3, args.repeats // 2),
            args.texture,
            args.model_dir,
        )
    if "agreement" in what:
        print("agreement with CPU fp32:")
        report["agreement"] = agreement(device, dtypes, args.model_dir)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
