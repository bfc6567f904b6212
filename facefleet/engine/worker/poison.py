"""Poison units: units whose leases ended in a crash or an expiry ``max_attempts`` times.

A unit of several items is cut in two halves, queued again with fresh attempts (so one file that
kills its worker ends up alone); a unit of one item is failed: the queue records it as failed and, for
an image, its manifest file gets an error row (a video's chunk has no manifest file: its job reports
the video failed from the queue). The queue's conditional updates make this safe to run from
several processes at once (a coordinator, and the supervisors of external worker hosts, which
have no coordinator to do it for them): each unit is split or failed once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from facefleet.engine.queue import WorkQueue
from facefleet.engine.worker.errors import error_kind


@dataclass(frozen=True)
class PoisonOutcome:
    """What became of one poison unit: ``action`` is "split" (``halves``: the new units' ids) or
    "failed" (``items``: the images failed with ``error``; ``source``: the first of them, as text)."""

    unit: str
    action: str
    items: int
    error: str
    halves: tuple[str, ...] = ()
    source: str = ""


def reap_poison(q: WorkQueue, out: str | os.PathLike[str], max_attempts: int) -> list[PoisonOutcome]:
    """Split or fail every poison unit of ``q`` (see the module docstring); writes the failed units'
    manifest files under ``out``. Raises OSError when such a file cannot be written."""
    from facefleet.engine.manifest import write_unit
    from facefleet.export.sink import source_text
    from facefleet.sources.items import ImageItem
    from facefleet.types import ImageResult

    done: list[PoisonOutcome] = []
    for unit in q.poisoned(max_attempts):
        reason = q.last_error(unit.id) or "worker failed"
        if len(unit.items) > 1:
            halves = q.split(unit.id)
            if halves:
                done.append(PoisonOutcome(unit.id, "split", len(unit.items), reason, tuple(halves)))
            continue
        text = f"unit failed after {unit.attempts} attempts: {reason}"
        item = unit.items[0]
        if not isinstance(item, ImageItem):  # a chunk of a video (FrameRange)
            q.fail(unit.id, text, {"frames": 0})
            done.append(PoisonOutcome(unit.id, "failed", 1, text, source=item.source))
            continue
        results = [ImageResult(source_text(p), 0, 0, error=text) for p in unit.paths]
        write_unit(out, unit.id, results)
        kind = error_kind(text)
        stats = {
            "worker": None,
            "images": len(results),
            "faces": 0,
            "no_face": 0,
            "failed": len(results),
            "failed_by_reason": {kind: len(results)},
            "stages": {},
            "failures": [{"source": r.source, "reason": kind, "error": text} for r in results[:5]],
        }
        q.fail(unit.id, text, stats)
        done.append(PoisonOutcome(unit.id, "failed", len(results), text, source=results[0].source))
    return done
