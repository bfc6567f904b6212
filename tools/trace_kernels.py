"""Kernel time per batch, by pipeline step, from a Chrome trace of ``tools/probe_stages.py --trace``.

Usage: python tools/trace_kernels.py TRACE.json.gz [--reps 10] [--top 15]

Each kernel, copy and memset of the trace is counted in the innermost step range (GPU side) that holds it;
printed per batch (``--reps``: the profiled batches): the total, per step, and the largest kernels.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    opener = gzip.open if a.trace.endswith(".gz") else open
    with opener(a.trace, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    ranges = sorted(
        (e for e in events if e.get("cat") == "gpu_user_annotation" and e["name"] != "batch"),
        key=lambda e: e["dur"],
    )

    def step(k: dict[str, float]) -> str:
        for r in ranges:  # shortest first: the innermost
            if r["ts"] <= k["ts"] and k["ts"] + k["dur"] <= r["ts"] + r["dur"] + 1:
                return str(r["name"])
        return "(outside the steps)"

    per_step: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    per_kernel: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for k in kernels:
        s = step(k)
        for table, key in ((per_step, s), (per_kernel, (s, str(k["name"])[:70]))):
            table[key][0] += 1  # type: ignore[index]
            table[key][1] += k["dur"]  # type: ignore[index]
    ms = 1e3 * a.reps
    print(f"kernels, copies and memsets per batch: {sum(v[1] for v in per_step.values()) / ms:.2f} ms")
    print(f"{'ms':>7s} {'count':>7s}  step")
    for name, (n, d) in sorted(per_step.items(), key=lambda kv: -kv[1][1]):
        print(f"{d / ms:7.2f} {n / a.reps:7.1f}  {name}")
    print(f"\n{'ms':>7s} {'count':>7s}  {'step':28s} kernel")
    for (name, kernel), (n, d) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"{d / ms:7.2f} {n / a.reps:7.1f}  {name[:28]:28s} {kernel}")


if __name__ == "__main__":
    main()
