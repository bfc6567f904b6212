"""``facefleet eval``: accuracy on AFLW2000-3D (68-point NME) and detection recall on real photos.

NME protocol (3DDFA / PRNet): mean over the 68 points of the 2D error divided by sqrt(w * h) of
the ground-truth 68-point bounding box, reported per |yaw| bin [0,30], (30,60], (60,90] and as
the mean of the three bin means; also the plain mean over images.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

YAW_BINS = ("[0,30]", "(30,60]", "(60,90]")
MEDIAPIPE_REFERENCE_NME = 4.7  # % mean over the 8 images, MediaPipe's runtime, best fixed mapping


def default_data_dir() -> Path:
    env = os.environ.get("FACEFLEET_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class NmeRow:
    image: str
    yaw_bin: str
    yaw_deg: float
    nme: float | None  # percent; None when no face was found
    pred_yaw: float | None


def nme_68(pred: np.ndarray, gt: np.ndarray) -> float:
    """pred, gt: (68, 2). Returns the NME in percent (normaliser sqrt(w*h) of the gt box)."""
    w = gt[:, 0].max() - gt[:, 0].min()
    h = gt[:, 1].max() - gt[:, 1].min()
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(w * h) * 100.0)


def _pick_face(result: Any, gt: np.ndarray) -> Any:
    """The detected face whose box centre is nearest the ground-truth centre."""
    if not result.faces:
        return None
    c = gt.mean(axis=0)
    d = [np.linalg.norm((f.bbox[:2] + f.bbox[2:]) / 2 - c) for f in result.faces]
    return result.faces[int(np.argmin(d))]


def eval_aflw(rec: Any, data_dir: Path) -> tuple[list[NmeRow], dict[str, float]]:
    from scipy.io import loadmat

    root = data_dir / "benchmarks" / "aflw2000_3d_subset"
    with open(root / "index.tsv") as fh:
        index = list(csv.DictReader(fh, delimiter="\t"))
    paths = [str(root / r["image"]) for r in index]
    results = rec(paths)
    rows: list[NmeRow] = []
    for r, res in zip(index, results):
        gt = loadmat(str(root / r["image"].replace(".jpg", ".mat")))["pt3d_68"][:2].T.astype(np.float64)
        face = _pick_face(res, gt)
        rows.append(
            NmeRow(
                image=r["image"],
                yaw_bin=r["yaw_bin"],
                yaw_deg=float(r["pose_para_pitch_yaw_roll_deg"].split()[1]),
                nme=None if face is None else nme_68(face.landmarks68, gt),
                pred_yaw=None if face is None else face.pose.yaw,
            )
        )
    found = [x.nme for x in rows if x.nme is not None]
    summary: dict[str, float] = {"mean": float(np.mean(found)) if found else float("nan")}
    bin_means = []
    for b in YAW_BINS:
        v = [x.nme for x in rows if x.yaw_bin == b and x.nme is not None]
        if v:
            summary[b] = float(np.mean(v))
            bin_means.append(summary[b])
    summary["mean_of_bins"] = float(np.mean(bin_means)) if bin_means else float("nan")
    summary["missed"] = float(sum(x.nme is None for x in rows))
    return rows, summary


def _expected(count: str) -> tuple[int, bool]:
    """'3' -> (3, exact); '8+' -> (8, at-least)."""
    return (int(count.rstrip("+")), not count.endswith("+"))


def eval_recall(rec: Any, data_dir: Path, batch: int = 8) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    img_dir = data_dir / "images"
    with open(img_dir / "INDEX.tsv") as fh:
        index = list(csv.DictReader(fh, delimiter="\t"))
    rows: list[dict[str, Any]] = []
    for i in range(0, len(index), batch):
        chunk = index[i : i + batch]
        res = rec([str(img_dir / r["file"]) for r in chunk])
        for r, x in zip(chunk, res):
            exp, exact = _expected(r["faces"])
            rows.append(
                {
                    "file": r["file"],
                    "expected": r["faces"],
                    "found": len(x.faces),
                    "error": x.error,
                    "ok": (len(x.faces) == exp) if exact else (len(x.faces) >= exp),
                }
            )
    pos = [r for r in rows if not r["file"].startswith("noface_")]
    neg = [r for r in rows if r["file"].startswith("noface_")]
    exp_total = sum(_expected(r["expected"])[0] for r in pos)
    found_capped = sum(min(r["found"], _expected(r["expected"])[0]) for r in pos)
    summary = {
        "images": len(rows),
        "faces_expected_min": exp_total,
        "faces_found_capped": found_capped,
        "recall": found_capped / max(exp_total, 1),
        "faces_found_total": sum(r["found"] for r in pos),
        "images_meeting_count": sum(r["ok"] for r in pos),
        "positive_images": len(pos),
        "noface_images_with_faces": sum(r["found"] > 0 for r in neg),
        "noface_images": len(neg),
    }
    return rows, summary


def eval_cli(argv: list[str]) -> int:
    from facefleet.pipeline import Reconstructor

    p = argparse.ArgumentParser(
        prog="facefleet eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        default=default_data_dir(),
        help="the shared test data folder (default ../shared/data or $FACEFLEET_SHARED_DATA)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--what", default="aflw,recall", help="aflw, recall or both (default)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--model-dir", type=Path, default=None)
    from facefleet.cli import add_pipeline_options, pipeline_kwargs

    add_pipeline_options(p, max_faces=256)  # 256: crowds have 100+
    args = p.parse_args(argv)
    if not (args.data / "benchmarks").is_dir():
        print(f"facefleet eval: no benchmark data at {args.data} (use --data)", file=sys.stderr)
        return 2
    settings = pipeline_kwargs(args)
    rec = Reconstructor(device=args.device, precision=args.precision, model_dir=args.model_dir, **settings)  # type: ignore[arg-type]
    report: dict[str, Any] = {"device": str(rec.device), "precision": args.precision, "settings": settings}
    what = {w.strip() for w in args.what.split(",")}
    if "aflw" in what:
        rows, summ = eval_aflw(rec, args.data)
        print(f"AFLW2000-3D subset, 68-point NME (%), {rec.device} {args.precision}")
        print(f"{'image':<16}{'yaw bin':<10}{'yaw':>8}{'pred yaw':>10}{'NME %':>8}")
        for r in rows:
            nme = "missed" if r.nme is None else f"{r.nme:.2f}"
            py = "" if r.pred_yaw is None else f"{r.pred_yaw:.1f}"
            print(f"{r.image:<16}{r.yaw_bin:<10}{r.yaw_deg:>8.1f}{py:>10}{nme:>8}")
        for b in YAW_BINS:
            if b in summ:
                print(f"  mean {b:<9} {summ[b]:.2f}")
        print(f"  mean over images      {summ['mean']:.2f}   (MediaPipe runtime: {MEDIAPIPE_REFERENCE_NME})")
        print(f"  mean of the bin means {summ['mean_of_bins']:.2f}   (MediaPipe runtime: 6.3)")
        report["aflw"] = {"rows": [asdict(r) for r in rows], "summary": summ}
    if "recall" in what:
        rows2, summ2 = eval_recall(rec, args.data)
        print(f"\nRecall on {args.data / 'images'}")
        print(f"{'file':<42}{'expected':>9}{'found':>7}")
        for rr in rows2:
            flag = "" if rr["ok"] else "  <-"
            print(f"{rr['file']:<42}{rr['expected']:>9}{rr['found']:>7}{flag}")
        print(
            f"  faces found/expected (capped at expected): {summ2['faces_found_capped']}/"
            f"{summ2['faces_expected_min']} = {summ2['recall']:.1%}"
        )
        print(f"  images with the expected count: {summ2['images_meeting_count']}/{summ2['positive_images']}")
        print(
            f"  no-face images with a detection: {summ2['noface_images_with_faces']}/{summ2['noface_images']}"
        )
        report["recall"] = {"rows": rows2, "summary": summ2}
    if args.json:
        from facefleet.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))
    return 0
