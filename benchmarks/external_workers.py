"""External workers over a PostgreSQL queue against the local executor, on one machine and corpus.

    python benchmarks/external_workers.py --corpus DIR [--devices cpu] [--queue postgresql://...]

Runs ``facefleet run CORPUS`` twice into fresh output folders: once as usual (workers started by the
run, SQLite queue in OUT), once with ``--executor external`` on a PostgreSQL queue while one
``facefleet worker --queue URL --out OUT`` on this host does the work (it plans the same devices).
Prints a table of both runs' steady rate (the bench's definition, from the runs' per-batch records),
their wall time and the ratio. Rows are comparable only within one call, on one machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from facefleet.bench.rates import batch_points, steady_rate


def _steady(out: Path) -> tuple[float | None, int]:
    stats = json.loads((out / "stats.json").read_text())
    rate = steady_rate(batch_points(stats.get("batch_done")) or stats.get("throughput") or [])
    return rate, int(stats["totals"]["images"])


def _facefleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "facefleet", *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="folder of images (e.g. a facefleet bench corpus)")
    p.add_argument("--devices", default="auto", help="devices of both runs (default auto)")
    p.add_argument("--queue", default="postgresql://127.0.0.1/test", help="PostgreSQL server and database")
    p.add_argument("--work-dir", default=None, help="where the outputs go (default: a temp dir, removed)")
    args = p.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ff-ext-"))
    schema = f"ffbench_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in args.queue else "?"
    url = f"{args.queue}{sep}schema={schema}"
    rows = []
    try:
        out = work / "local"
        t0 = time.perf_counter()
        subprocess.run(_facefleet("run", args.corpus, "-o", str(out), "--devices", args.devices, "--quiet"),
                       check=True)  # fmt: skip
        rows.append(("local executor, SQLite queue", *_steady(out), time.perf_counter() - t0))

        out = work / "external"
        t0 = time.perf_counter()
        run = subprocess.Popen(_facefleet("run", args.corpus, "-o", str(out), "--devices", args.devices,
                                          "--queue", url, "--executor", "external", "--quiet"))  # fmt: skip
        while not (out / "run.json").exists():  # the run has published its settings
            if run.poll() is not None:
                raise SystemExit(f"facefleet run exited with {run.returncode}")
            time.sleep(0.1)
        subprocess.run(_facefleet("worker", "--queue", url, "--out", str(out), "--devices", args.devices),
                       check=True)  # fmt: skip
        if run.wait(600) != 0:
            raise SystemExit(f"facefleet run exited with {run.returncode}")
        rows.append(("facefleet worker, PostgreSQL queue", *_steady(out), time.perf_counter() - t0))
    finally:
        database = args.queue.rsplit("/", 1)[-1]
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", database,
                        "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], capture_output=True)  # fmt: skip
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]
    print("| run | images | steady img/s | wall s | steady vs local |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, images, wall in rows:
        ratio = f"{rate / base:.2f}x" if rate and base else "-"
        print(f"| {name} | {images} | {rate or 0:.1f} | {wall:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
