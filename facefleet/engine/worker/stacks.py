"""A sampling profiler of a worker's threads, for finding where a pipeline stalls.

Set ``FACEFLEET_STACK_SAMPLES=DIR`` and every worker samples the Python stacks of all its threads
(``sys._current_frames``) every ``FACEFLEET_STACK_INTERVAL`` seconds (default 0.01) from the moment
its networks are ready (the steady state) and, on exit, writes ``DIR/stacks-<worker>.txt``: per
thread, the share of samples spent at each innermost stack (a thread waiting on a queue shows as
``queue.py get``: idle), then the share of samples in which each function was anywhere on the stack
(inclusive: where a busy thread's time goes). Standard-library only, works where ``py-spy`` cannot
attach (containers without ptrace); costs one GIL acquisition per sample.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

ENV = "FACEFLEET_STACK_SAMPLES"


class StackSampler:
    def __init__(
        self, out: str | os.PathLike[str], name: str, interval: float = 0.01, depth: int = 4
    ) -> None:
        self.out = Path(out) / f"stacks-{name}.txt"
        self.interval = float(interval)
        self.depth = int(depth)
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    @classmethod
    def from_env(cls, name: str) -> StackSampler | None:
        d = os.environ.get(ENV)
        if not d:
            return None
        return cls(d, name, float(os.environ.get("FACEFLEET_STACK_INTERVAL", "0.01")))

    def start(self) -> StackSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                full = traceback.extract_stack(frame)
                key = " < ".join(
                    f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(full[-self.depth :])
                )
                thread = names.get(ident, str(ident))
                self.counts[thread][key] += 1
                self.inclusive[thread].update({f"{Path(f.filename).name} {f.name}" for f in full})
            self.samples += 1

    def stop(self, top: int = 12) -> Path | None:
        self._stop.set()
        if self._thread.ident is not None:  # started (a worker starts it once its networks are ready)
            self._thread.join(timeout=5)
        if not self.samples:
            return None
        lines = [f"{self.samples} samples every {self.interval * 1e3:.0f} ms"]
        for thread, c in sorted(self.counts.items()):
            lines.append(f"\n== {thread}")
            for key, n in c.most_common(top):
                lines.append(f"{100 * n / self.samples:5.1f}%  {key}")
            lines.append("  -- inclusive")
            for key, n in self.inclusive[thread].most_common(3 * top):
                lines.append(f"{100 * n / self.samples:5.1f}%  {key}")
        from facefleet.io.atomic import atomic_write_text

        return atomic_write_text(self.out, "\n".join(lines) + "\n")


PROFILE_ENV = "FACEFLEET_TORCH_PROFILE"


class BatchWindowProfiler:
    """``FACEFLEET_TORCH_PROFILE=DIR``: the torch profiler (CUPTI: every thread and stream of the
    process) over batches ``FACEFLEET_TORCH_PROFILE_BATCHES`` (default ``5:15``, after the warm-up)
    of a GPU worker's device loop. Writes ``DIR/torch-<worker>.json`` (a Chrome trace) and
    ``DIR/torch-<worker>.txt``: the window's wall time, how much of it the GPU ran kernels (union over
    streams), kernel time per stream, and the largest kernels: where a batch's time goes in the
    engine, with its decoder and writer threads running, rather than alone."""

    def __init__(self, out: str | os.PathLike[str], name: str, first: int, end: int) -> None:
        self.out = Path(out)
        self.name = name
        self.first, self.end = first, end
        self.seen = 0
        self._prof: Any = None
        self._t0 = 0.0

    @classmethod
    def from_env(cls, name: str) -> BatchWindowProfiler | None:
        d = os.environ.get(PROFILE_ENV)
        if not d:
            return None
        first, _, end = os.environ.get(f"{PROFILE_ENV}_BATCHES", "5:15").partition(":")
        return cls(d, name, int(first), int(end or int(first) + 10))

    def batch_starts(self) -> None:
        """Called by the device loop before each batch."""
        import time

        from torch.profiler import ProfilerActivity, profile

        if self.seen == self.first:
            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._prof.__enter__()
            self._t0 = time.perf_counter()
        elif self.seen == self.end:
            self.finish()
        self.seen += 1

    def finish(self) -> Path | None:
        import json
        import time

        import torch

        if self._prof is None:
            return None
        torch.cuda.synchronize()
        wall = time.perf_counter() - self._t0
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        trace = self.out / f"torch-{self.name}.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
        kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
        spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels)
        busy, end = 0.0, float("-inf")
        for start, stop in spans:  # union of kernel intervals over all streams
            if stop > end:
                busy += stop - max(start, end)
                end = stop
        per_stream: dict[str, float] = collections.defaultdict(float)
        per_kernel: dict[str, float] = collections.defaultdict(float)
        for k in kernels:
            per_stream[str(k.get("args", {}).get("stream", "?"))] += float(k["dur"])
            per_kernel[str(k.get("name", "?"))[:90]] += float(k["dur"])
        n = self.end - self.first
        window = (spans[-1][1] - spans[0][0]) if spans else 0.0
        lines = [
            f"{n} batches in {wall * 1e3:.1f} ms of wall time ({wall * 1e3 / max(1, n):.1f} ms per batch)",
            f"GPU kernel span {window / 1e3:.1f} ms, busy (kernels on any stream) {busy / 1e3:.1f} ms "
            f"= {100 * busy / max(window, 1e-9):.0f} % of it",
            "kernel ms per stream: "
            + ", ".join(f"stream {s}: {t / 1e3:.1f}" for s, t in sorted(per_stream.items(), key=_second)),
            "",
            "largest kernels (ms in the window):",
        ]
        lines += [f"{t / 1e3:9.2f}  {k}" for k, t in sorted(per_kernel.items(), key=_second)[:20]]
        from facefleet.io.atomic import atomic_write_text

        return atomic_write_text(self.out / f"torch-{self.name}.txt", "\n".join(lines) + "\n")


def _second(kv: tuple[str, float]) -> float:
    return -kv[1]  # largest first
