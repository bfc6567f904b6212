"""``facefleet eval``: accuracy on AFLW2000-3D (68-point NME) and detection recall on real photos.

NME protocol (3DDFA / PRNet): mean over the 68 points of the 2D error divided by sqrt(w * h) of
the ground-truth 68-point bounding box, reported per |yaw| bin [0,30], (30,60], (60,90] and as
the mean of the three bin means; also the plain mean over images. The 68 points are the shipped map
of the model family (``--family``; several, comma-separated, are measured in one run), and the
mesh network's speed (faces/s on the evaluated faces' crops) is measured beside it.

Expected data layout (``--data DIR``, default ``../shared/data``)::

    DIR/benchmarks/aflw2000_3d_subset/index.tsv    image, yaw_bin, pose_para_pitch_yaw_roll_deg columns
    DIR/benchmarks/aflw2000_3d_subset/<image>.jpg  with <image>.mat (pt3d_68: 68 ground-truth points)
    DIR/images/INDEX.tsv                           file, faces columns (recall on real photos)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

YAW_BINS = ("[0,30]", "(30,60]", "(60,90]")
MEDIAPIPE_REFERENCE_NME = 4.7  # % mean over the 8 images, MediaPipe's runtime, best fixed mapping


AFLW_DIR = Path("benchmarks") / "aflw2000_3d_subset"
RECALL_INDEX = Path("images") / "INDEX.tsv"


def layout_problems(data_dir: Path, what: set[str]) -> list[str]:
    """What ``data_dir`` lacks for the evaluations in ``what`` ("aflw", "recall"); empty when complete."""
    missing = []
    if "aflw" in what and not (data_dir / AFLW_DIR / "index.tsv").is_file():
        missing.append(str(data_dir / AFLW_DIR / "index.tsv"))
    if "recall" in what and not (data_dir / RECALL_INDEX).is_file():
        missing.append(str(data_dir / RECALL_INDEX))
    return missing


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

    root = data_dir / AFLW_DIR
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


@dataclass(frozen=True)
class MeshSpeed:
    """Speed of a family's mesh network alone: ``faces`` crops per call, ``calls`` timed calls (the
    fastest of several rounds), ``faces_per_s`` = faces * calls / seconds; ``cpu_seconds``: the
    process's CPU time of the round with the least (every thread; ``faces_per_cpu_s``: throughput per
    CPU second, which other work on a shared machine disturbs less than wall time)."""

    family: str
    runtime: str
    faces: int
    calls: int
    seconds: float
    cpu_seconds: float

    @property
    def faces_per_s(self) -> float:
        return self.faces * self.calls / self.seconds

    @property
    def faces_per_cpu_s(self) -> float:
        return self.faces * self.calls / self.cpu_seconds


def mesh_speeds(
    recs: Sequence[Any], data_dir: Path, batch: int = 16, calls: int = 5, rounds: int = 5
) -> list[MeshSpeed]:
    """Time each reconstructor's mesh network on ``batch`` face crops of the AFLW subset's images (the
    detector's ROIs, repeated to fill the batch): ``rounds`` rounds of ``calls`` calls, the networks in
    turn within each round, each network's fastest round kept (other work on the machine slows rounds,
    not networks: interleaving exposes every network to it alike)."""
    import torch

    timers = [_mesh_timer(rec, data_dir, batch) for rec in recs]
    best = [float("inf")] * len(recs)
    best_cpu = [float("inf")] * len(recs)
    with torch.inference_mode():
        for _ in range(rounds):
            for k, (rec, run) in enumerate(zip(recs, timers, strict=True)):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    run()
                if rec.device.type == "cuda":
                    torch.cuda.synchronize(rec.device)
                best[k] = min(best[k], time.perf_counter() - t0)
                best_cpu[k] = min(best_cpu[k], time.process_time() - c0)
    return [
        MeshSpeed(rec.family.name, rec.runtime, batch, calls, s, c)
        for rec, s, c in zip(recs, best, best_cpu, strict=True)
    ]


def _mesh_timer(rec: Any, data_dir: Path, batch: int) -> Any:
    """A no-argument call of ``rec``'s mesh network on ``batch`` crops (made and run once here)."""
    import torch

    from facefleet.io.decode import read_image
    from facefleet.mesh import crop_rois, roi_from_detections

    root = data_dir / AFLW_DIR
    with open(root / "index.tsv") as fh:
        names = [r["image"] for r in csv.DictReader(fh, delimiter="\t")]
    imgs = [torch.from_numpy(read_image(root / n)).permute(2, 0, 1).contiguous() for n in names]
    det = rec.detector(imgs)
    roi = roi_from_detections(det.boxes, det.keypoints)
    size = rec.mesher.crop_size
    crops = crop_rois(imgs, det.image_index, roi, size).to(rec.device, rec.dtype)
    reps = -(-batch // max(len(crops), 1))
    crops = crops.repeat(reps, 1, 1, 1)[:batch].contiguous()
    model = rec.mesher.model

    def run() -> None:
        model.landmarks_from_crops(crops)

    with torch.inference_mode():
        run()
    return run


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


def _print_aflw(rows: list[NmeRow], summ: dict[str, float], label: str) -> None:
    print(f"AFLW2000-3D subset, 68-point NME (%), {label}")
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


def _print_recall(rows2: list[dict[str, Any]], summ2: dict[str, Any], where: Path) -> None:
    print(f"\nRecall on {where}")
    print(f"{'file':<42}{'expected':>9}{'found':>7}")
    for rr in rows2:
        flag = "" if rr["ok"] else "  <-"
        print(f"{rr['file']:<42}{rr['expected']:>9}{rr['found']:>7}{flag}")
    print(
        f"  faces found/expected (capped at expected): {summ2['faces_found_capped']}/"
        f"{summ2['faces_expected_min']} = {summ2['recall']:.1%}"
    )
    print(f"  images with the expected count: {summ2['images_meeting_count']}/{summ2['positive_images']}")
    print(f"  no-face images with a detection: {summ2['noface_images_with_faces']}/{summ2['noface_images']}")


def eval_cli(argv: list[str]) -> int:
    from facefleet.families import DEFAULT_FAMILY, list_families
    from facefleet.pipeline import Reconstructor

    p = argparse.ArgumentParser(
        prog="facefleet eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        default=default_data_dir(),
        help="the shared test data folder (default ../shared/data or $FACEFLEET_SHARED_DATA); layout above",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--runtime", default="auto", choices=["auto", "torch", "litert"])
    p.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"model family, or several comma-separated (measured in one run): {', '.join(list_families())}",
    )
    p.add_argument("--what", default="aflw,recall", help="aflw, recall or both (default)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--model-dir", type=Path, default=None)
    from facefleet.config import (
        ConfigError,
        JobConfig,
        ModelConfig,
        add_config_arguments,
        config_from_args,
    )
    from facefleet.config.flags import section_keys

    model_keys = [k for k in section_keys("model") if k != "model.family"]  # --family above takes a list
    add_config_arguments(p, model_keys, aliases=(), config_file=False)
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args, JobConfig(model=ModelConfig(max_faces=256)))  # 256: crowds have 100+
    except ConfigError as e:
        p.error(str(e))
    what = {w.strip() for w in args.what.split(",")}
    unknown = what - {"aflw", "recall"}
    if unknown:
        print(f"facefleet eval: unknown --what {sorted(unknown)} (use aflw, recall)", file=sys.stderr)
        return 2
    families = [f.strip() for f in args.family.split(",") if f.strip()]
    bad = [f for f in families if f not in list_families()]
    if bad or not families:
        print(f"facefleet eval: unknown --family {bad}; known: {', '.join(list_families())}", file=sys.stderr)
        return 2
    missing = layout_problems(args.data, what)
    if missing:
        print(
            f"facefleet eval: {args.data} is not the test data folder: missing {', '.join(missing)}.\n"
            f"Expected layout (--data DIR):\n"
            f"  DIR/{AFLW_DIR}/index.tsv, and <image>.jpg with <image>.mat (pt3d_68) per row\n"
            f"  DIR/{RECALL_INDEX} (file, faces columns) beside the photos",
            file=sys.stderr,
        )
        return 2
    settings = {k: v for k, v in cfg.model.arguments().items() if k != "family"}
    report: dict[str, Any] = {"precision": args.precision, "settings": settings, "families": {}}
    recs = []
    for fam in families:
        rec = Reconstructor(
            device=args.device,
            precision=args.precision,
            model_dir=args.model_dir,
            runtime=args.runtime,
            family=fam,
            **settings,
        )
        recs.append(rec)
        report["device"] = str(rec.device)
        out: dict[str, Any] = {"runtime": rec.runtime}
        label = f"{fam}, {rec.device} {args.precision}, {rec.runtime}"
        if "aflw" in what:
            rows, summ = eval_aflw(rec, args.data)
            _print_aflw(rows, summ, label)
            out["aflw"] = {"rows": [asdict(r) for r in rows], "summary": summ}
        if "recall" in what:
            rows2, summ2 = eval_recall(rec, args.data)
            _print_recall(rows2, summ2, args.data / "images")
            out["recall"] = {"rows": rows2, "summary": summ2}
        report["families"][fam] = out
        print()
    if "aflw" in what:
        speeds = mesh_speeds(recs, args.data)
        print("Mesh network speed (faces/s; the same crops, the networks in turn, best of 5 rounds)")
        for sp in speeds:
            report["families"][sp.family]["mesh_speed"] = {
                **asdict(sp),
                "faces_per_s": sp.faces_per_s,
                "faces_per_cpu_s": sp.faces_per_cpu_s,
            }
            rate = (
                f"{sp.faces_per_s:8.1f} faces/s, {sp.faces_per_cpu_s:6.1f} per CPU second  "
                f"({sp.faces} crops x {sp.calls} calls)"
            )
            print(f"  {sp.family:<14} {sp.runtime:<7} {rate}")
        if len({sp.runtime for sp in speeds}) > 1:
            print("  (different runtimes: to compare the families like for like, use --runtime torch)")
    if args.json:
        from facefleet.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))
    return 0
