"""A sampling profiler of a worker's threads, for finding where a pipeline stalls.

Set ``FACEFLEET_STACK_SAMPLES=DIR`` and every worker samples the Python stacks of all its threads
(``sys._current_frames``) every ``FACEFLEET_STACK_INTERVAL`` seconds (default 0.01) and, on exit,
writes ``DIR/stacks-<worker>.txt``: per thread, the share of samples spent at each innermost
stack (a thread waiting on a queue shows as ``queue.py get``: idle). Standard-library only, works
where ``py-spy`` cannot attach (containers without ptrace); costs one GIL acquisition per sample.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import traceback
from pathlib import Path

ENV = "FACEFLEET_STACK_SAMPLES"


class StackSampler:
    def __init__(
        self, out: str | os.PathLike[str], name: str, interval: float = 0.01, depth: int = 4
    ) -> None:
        self.out = Path(out) / f"stacks-{name}.txt"
        self.interval = float(interval)
        self.depth = int(depth)
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
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
                stack = traceback.extract_stack(frame)[-self.depth :]
                key = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
                self.counts[names.get(ident, str(ident))][key] += 1
            self.samples += 1

    def stop(self, top: int = 12) -> Path | None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.samples:
            return None
        lines = [f"{self.samples} samples every {self.interval * 1e3:.0f} ms"]
        for thread, c in sorted(self.counts.items()):
            lines.append(f"\n== {thread}")
            for key, n in c.most_common(top):
                lines.append(f"{100 * n / self.samples:5.1f}%  {key}")
        from facefleet.io.atomic import atomic_write_text

        return atomic_write_text(self.out, "\n".join(lines) + "\n")
