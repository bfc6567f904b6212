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
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from facefleet.bench.rows import (
    cuda_count,
    engine_config,
    error_row,
    machine_info,
    repeat_corpus,
    run_engine,
    run_litert,
    run_loop,
)
from facefleet.bench.simulate import format_sim_table, simulate_workers
from facefleet.bench.tables import format_rows, format_scaling

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
        choices=("auto", "short", "full", "blazeface", "combined", "centerface"),
        default=None,
        help="model setting of every row, the engine's, the loop's and LiteRT's alike (default: --config's "
        "[model], else auto); LiteRT has no CenterFace: its row is left out in the combined and "
        "centerface modes",
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


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The model settings every row runs with: ``--config``'s ``[model]`` with ``--detector`` and
    ``--refine`` over it, and the defaults (detector auto, refine 2) for what neither gives."""
    model = {"detector": "auto", "refine": 2, **engine_config(args.config, None).get("model", {})}
    if args.detector is not None:
        model["detector"] = args.detector
    if args.refine is not None:
        model["refine"] = args.refine
    return model


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


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
        "machine": machine_info(),
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
            ngpu = cuda_count()
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
            if model["detector"] in ("combined", "centerface") and "litert" in baselines:
                log(f"LiteRT runs BlazeFace only: no LiteRT row with detector {model['detector']}")
                baselines = [b for b in baselines if b != "litert"]
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
                            row = error_row(name, devices, e)
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
                    row = error_row("loop (1 image at a time)", dev, e)
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
                    row = error_row("LiteRT CPU", "cpu", e)
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
                        row = {"gpus": k, **error_row(f"facefleet run x{k}", str(k), e)}
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
