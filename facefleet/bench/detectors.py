"""Recall and speed per detector mode, one table: ``python -m facefleet.bench.detectors``.

For each mode (``blazeface``, ``centerface``, ``combined``; :mod:`facefleet.detect.modes`) the whole
pipeline (:class:`facefleet.pipeline.Reconstructor`) runs on the shared photos of ``DATA/images``
(INDEX.tsv: :func:`facefleet.bench.accuracy.eval_recall`), and the detector alone on batches of 1080p
frames cut from them (the same frames for every mode), timed after
one warm-up call. On a GPU: ``--device cuda --precision fp16``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["detector_table", "main"]

MODES = ("blazeface", "centerface", "combined")


def _frames(data_dir: Path, n: int, device: Any) -> Any:
    """``(n, 3, 1080, 1920)`` uint8 frames on ``device``: the INDEX photos scaled to cover 1920x1080 and
    centre-cropped, in turn."""
    import torch
    import torch.nn.functional as F

    from facefleet.io.decode import read_image

    kinds = (".jpg", ".jpeg", ".png")
    names = sorted(p for p in (data_dir / "images").iterdir() if p.suffix.lower() in kinds)
    out = []
    for p in names[:n]:
        img = torch.from_numpy(read_image(p)).permute(2, 0, 1)[None].float()
        s = max(1080 / img.shape[2], 1920 / img.shape[3])
        size = (max(1080, round(img.shape[2] * s)), max(1920, round(img.shape[3] * s)))
        img = F.interpolate(img, size=size, mode="bilinear", antialias=s < 1, align_corners=False)
        y, x = (img.shape[2] - 1080) // 2, (img.shape[3] - 1920) // 2
        out.append(img[:, :, y : y + 1080, x : x + 1920].clamp(0, 255).round().to(torch.uint8))
    frames = torch.cat(out)
    reps = -(-n // len(frames))
    return frames.repeat(reps, 1, 1, 1)[:n].contiguous().to(device)


def detector_table(
    data_dir: Path,
    device: str = "auto",
    precision: str = "fp32",
    batch: int = 8,
    calls: int = 3,
    **settings: Any,
) -> list[dict[str, Any]]:
    """One row per mode: recall figures (:func:`~facefleet.bench.accuracy.eval_recall`'s summary) and the
    detector's frames per second on ``batch`` 1080p frames (best of ``calls`` calls)."""
    import torch

    from facefleet.bench.accuracy import eval_recall
    from facefleet.pipeline import Reconstructor

    rows = []
    frames = None
    for mode in MODES:
        rec = Reconstructor(device=device, precision=precision, detector=mode, **settings)
        _, summary = eval_recall(rec, data_dir)
        if frames is None:
            frames = _frames(data_dir, batch, rec.device)
        rec.detector(frames)  # warm-up (loads, plans)
        best = float("inf")
        for _ in range(calls):
            if rec.device.type == "cuda":
                torch.cuda.synchronize(rec.device)
            t0 = time.perf_counter()
            det = rec.detector(frames)
            det.counts()  # the faces reached the host
            best = min(best, time.perf_counter() - t0)
        rows.append({"mode": mode, **summary, "frames_per_s_1080p": batch / best, "device": str(rec.device)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from facefleet.bench.accuracy import default_data_dir

    p = argparse.ArgumentParser(prog="python -m facefleet.bench.detectors", description=__doc__)
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch", type=int, default=8, help="1080p frames per detector call (default 8)")
    p.add_argument("--max-faces", type=int, default=1024)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = detector_table(args.data, args.device, args.precision, args.batch, max_faces=args.max_faces)
    head = f"{'mode':<11}{'faces (capped)':>16}{'found':>7}{'exact imgs':>12}{'negatives':>11}"
    print(f"{head}{'1080p fps':>11}")
    for r in rows:
        print(
            f"{r['mode']:<11}{r['faces_found_capped']:>9}/{r['faces_expected_min']:<6}{r['faces_found_total']:>7}"
            f"{r['images_meeting_count']:>7}/{r['positive_images']:<4}{r['noface_images_with_faces']:>7}/"
            f"{r['noface_images']:<3}{r['frames_per_s_1080p']:>11.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
