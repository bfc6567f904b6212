"""Print the engine rows of ``facefleet bench --json`` files with their stages, one line per row.

Usage: python benchmarks/bench_stages.py OUT/a.json [OUT/b.json ...]

Per row: steady img/s, p50 / p99 batch, peak GPU memory, and the seconds per stage summed over units
(stages overlap; ``wait_input`` / ``wait_writers`` are the device thread's waits for decoded batches
and for the file writers, ``slot_copy`` the decoder process's copies into the shared slots,
``slot_wait`` its waits for a free slot); then the median milliseconds per batch of the batches done
between 10 % and 90 % of the run: decoding, the decoder's wait for a slot, the networks' wait for the
batch and the networks' time on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def lines(path: Path) -> list[str]:
    out = []
    for r in json.loads(path.read_text())["rows"]:
        if "batch_p50_s" not in r or r.get("batch_p50_s") is None:
            continue
        stages = " ".join(f"{k} {v:.1f}" for k, v in sorted((r.get("stages") or {}).items()))
        per_batch = " ".join(f"{k} {v:.1f}" for k, v in (r.get("batch_stages_p50_ms") or {}).items())
        out.append(
            f"{path.name}  {r['name']}  steady {r.get('steady_images_per_s') or 0:,.0f} img/s  "
            f"p50 {r['batch_p50_s'] * 1e3:.1f} / p99 {(r.get('batch_p99_s') or 0) * 1e3:.0f} ms  "
            f"GPU {r.get('peak_gpu_mib') or 0:,.0f} MiB (NVML {r.get('nvml_gpu_mib') or 0:,.0f})  {stages}"
            + (f"\n  steady batches, median ms: {per_batch}; bound: {r.get('bound')}" if per_batch else "")
        )
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for a in argv:
        print("\n".join(lines(Path(a))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
