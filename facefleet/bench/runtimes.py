"""CPU runtime benchmark: the torch port of each MediaPipe model against the official LiteRT interpreter.

``python -m facefleet.bench.runtimes [--batches 1 8 32] [--seconds 2] [--json out.json]``

For each model and batch size it reports ms/item, items/s and the ratio torch/LiteRT (below 1 means
torch is faster). torch runs with ``os.cpu_count()`` threads in inference mode, in its default NCHW
memory format and in channels-last; LiteRT runs with the same thread count (XNNPACK), batched
through ``resize_tensor_input``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _time(fn: Callable[[], Any], seconds: float, min_runs: int = 5, warmup: int = 3) -> float:
    """Median seconds per call of ``fn`` over at least ``min_runs`` calls / ``seconds``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def _torch_runner(name: str, batch: int, channels_last: bool, threads: int) -> Callable[[], Any]:
    import torch

    from facefleet.models import load_model

    torch.set_num_threads(threads)
    net = load_model(name, channels_last=channels_last)  # the module converts its input itself
    x = torch.rand(batch, *net.input_shape)

    def run() -> Any:
        with torch.inference_mode():
            return net(x)

    return run


def _litert_runner(name: str, batch: int, threads: int) -> Callable[[], Any]:
    from facefleet.models import get_spec, model_path
    from facefleet.models.litert_runner import make_interpreter

    h, w = get_spec(name).input_size
    it = make_interpreter(model_path(name), num_threads=threads)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [batch, h, w, 3])
    it.allocate_tensors()
    x = np.random.default_rng(0).uniform(-1, 1, (batch, h, w, 3)).astype(np.float32)
    outs = [d["index"] for d in it.get_output_details()]

    def run() -> Any:
        it.set_tensor(inp["index"], x)
        it.invoke()
        return [it.get_tensor(i) for i in outs]

    return run


def benchmark(
    names: list[str] | None = None, batches: tuple[int, ...] = (1, 8, 32), seconds: float = 2.0,
    threads: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per (model, batch): ms/item for torch (NCHW, channels-last) and LiteRT."""
    from facefleet.models.specs import TFLITE_MODELS

    threads = threads or os.cpu_count() or 1
    rows = []
    for name in names or list(TFLITE_MODELS):  # CenterFace's runtimes: python -m facefleet.bench.centerface
        for batch in batches:
            row: dict[str, Any] = {"model": name, "batch": batch, "threads": threads}
            for key, make in (
                ("torch_nchw", lambda: _torch_runner(name, batch, False, threads)),  # noqa: B023
                ("torch_cl", lambda: _torch_runner(name, batch, True, threads)),  # noqa: B023
                ("litert", lambda: _litert_runner(name, batch, threads)),  # noqa: B023
            ):
                try:
                    row[f"{key}_ms"] = 1000 * _time(make(), seconds) / batch
                except ImportError as exc:
                    row[f"{key}_ms"], row[f"{key}_error"] = None, str(exc)
            rows.append(row)
    return rows


def fastest_cpu_runtime(rows: list[dict[str, Any]], batch: int) -> str:
    """``"torch"`` or ``"litert"``: the runtime with the lower total ms/item over the models at ``batch``."""
    sel = [r for r in rows if r["batch"] == batch and r.get("litert_ms") is not None]
    if not sel:
        return "torch"
    torch_ms = sum(min(r["torch_nchw_ms"], r["torch_cl_ms"]) for r in sel)
    return "torch" if torch_ms <= sum(r["litert_ms"] for r in sel) else "litert"


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'model':28s} {'batch':>5s} {'torch ms/it':>11s} {'torch-CL':>9s} {'LiteRT':>8s} "
    head += f"{'it/s torch':>10s} {'it/s LiteRT':>11s} {'torch/LiteRT':>12s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        best = min(r["torch_nchw_ms"], r["torch_cl_ms"])
        lite = r.get("litert_ms")
        print(
            f"{r['model']:28s} {r['batch']:5d} {r['torch_nchw_ms']:11.2f} {r['torch_cl_ms']:9.2f} "
            f"{(f'{lite:8.2f}' if lite else '     n/a')} {1000 / best:10.1f} "
            f"{(f'{1000 / lite:11.1f}' if lite else '        n/a')} "
            f"{(f'{best / lite:12.2f}' if lite else '         n/a')}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m facefleet.bench.runtimes", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--models", nargs="*", default=None, help="model names (default: all)")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=2.0, help="timing budget per measurement")
    p.add_argument("--threads", type=int, default=None, help="default: os.cpu_count()")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    rows = benchmark(args.models, tuple(args.batches), args.seconds, args.threads)
    print(
        f"CPU threads: {rows[0]['threads'] if rows else '-'}  (ms/item = median over repeated calls / batch)"
    )
    _print_table(rows)
    for b in args.batches:
        print(f"fastest CPU runtime at batch {b}: {fastest_cpu_runtime(rows, b)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
