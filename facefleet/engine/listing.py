"""The coordinator's lister thread: checks the manifest against the queue, lists INPUT, and queues
every listed image that the run does not have yet.

Every session lists INPUT again, so files added since the last session are picked up. An image is
queued once per run: a listed source already in the queue (in a pending or running unit, or in
the manifest of a finished one) is left out, whatever unit it came in; so an input that changed
while an interrupted listing had not finished never gives duplicate rows. Sources are absolute
paths (or URLs), so a resume from another folder reads the same files.

Before listing, a resume checks ``OUT/manifest`` against the queue: a finished unit whose file is
missing, unreadable, or holds other rows than the unit's, is made *void* (its rows no longer
count; its file, if any, moves to ``OUT/manifest-damaged``) and its images are queued again by
the listing; a file of a unit the queue does not know (a copy) moves aside too.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facefleet.engine.layout import DAMAGED_DIR
from facefleet.engine.manifest import MANIFEST_DIR
from facefleet.engine.queue import WorkQueue, iter_units, open_queue, unit_id
from facefleet.engine.totals import add_void_units, void_units
from facefleet.export.sink import source_text
from facefleet.io.discover import is_url, iter_inputs
from facefleet.sources.items import WorkItem

if TYPE_CHECKING:
    from facefleet.engine.jobplan import JobPlan

UNITS_PER_WORKER = 4  # a short listing is cut so that each worker gets about this many units
_FAR_FUTURE = 1e18  # a time after every lease: poisoned(0, now=_FAR_FUTURE) is every unfinished unit


def absolute_source(s: str) -> str:
    """A listed source as the queue stores it: an absolute local path, or the URL as written."""
    return s if is_url(s) else os.path.abspath(s)


def effective_unit_size(n_listed: int, unit_size: int, workers: int) -> int:
    """Units of at most ``unit_size`` images, smaller for a listing of ``n_listed`` images that would
    leave workers without a unit (about :data:`UNITS_PER_WORKER` units per worker)."""
    return max(1, min(unit_size, math.ceil(n_listed / (UNITS_PER_WORKER * max(1, workers)))))


class Lister:
    """Runs the listing on a thread; ``error`` is a one-line message when it failed."""

    def __init__(self, plan: JobPlan, *, stop: Callable[[], bool], note: Callable[[str], None]) -> None:
        self.plan = plan
        self.stop = stop
        self.note = note
        self.error: str | None = None
        self.skipped: list[dict[str, str]] = []  # the first few, for the report
        self.skipped_by_reason: dict[str, int] = {}
        self.skipped_count = 0
        self.repairs: dict[str, Any] = {}
        self.listed = 0
        self.queued = 0
        self._thread = threading.Thread(target=self._run, name="lister", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    def skipped_report(self) -> dict[str, Any]:
        return {"count": self.skipped_count, "by_reason": self.skipped_by_reason, "examples": self.skipped}

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with open_queue(self.plan.queue_url) as q:
                known = self._verify(q) | _unfinished_sources(q)
                self._list(q, known)
        except BaseException as e:
            self.error = _one_line(e, self.plan.input_spec)

    def _skip(self, path: str, reason: str) -> None:
        self.skipped_count += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        if len(self.skipped) < 20:
            self.skipped.append({"source": _printable(path), "reason": reason})

    def _list(self, q: WorkQueue, known: set[str]) -> None:
        plan = self.plan
        spec = list(plan.input_spec) if isinstance(plan.input_spec, (list, tuple)) else plan.input_spec
        listing = iter_inputs(spec, on_skip=self._skip, exclude=[str(plan.out)])

        def new_sources() -> Iterator[str]:
            for s in listing:
                self.listed += 1
                a = absolute_source(s)
                key = source_text(a)
                if key not in known:
                    known.add(key)  # a source listed twice (two list entries) is queued once
                    yield a

        fresh = new_sources()
        peek: list[str] = []
        limit = plan.unit_size * len(plan.profiles) * UNITS_PER_WORKER
        for s in fresh:
            peek.append(s)
            if len(peek) >= limit:
                break
        size = (
            plan.unit_size
            if len(peek) >= limit
            else effective_unit_size(len(peek), plan.unit_size, len(plan.profiles))
        )

        def chained() -> Iterator[str]:
            yield from peek
            yield from fresh

        buf: list[tuple[str, tuple[WorkItem, ...]]] = []
        for uid, items in iter_units(chained(), size):
            if self.stop():
                return
            buf.extend(_fresh_ids(q, uid, items, self.note))
            if len(buf) >= 16:
                self._flush(q, buf)
                buf = []
        self._flush(q, buf)
        if self.listed == 0 and not self.stop():
            raise FileNotFoundError(f"no image files found in {_spec_text(plan.input_spec)}")
        q.set_meta("listing_done", "1")
        q.add_event("listing_done", {"images": self.listed, "queued": self.queued})

    def _flush(self, q: WorkQueue, buf: list[tuple[str, tuple[WorkItem, ...]]]) -> None:
        if buf:
            q.add_units(buf)
            self.queued += sum(len(items) for _, items in buf)
        q.set_meta("listed_images", str(self.listed))

    # -- the manifest against the queue ----------------------------------------------------
    def _verify(self, q: WorkQueue) -> set[str]:
        """Sources of the finished units whose manifest file is whole; repairs the rest (see the
        module docstring). Returns the sources."""
        import pyarrow.parquet as pq

        out = self.plan.out
        mdir = out / MANIFEST_DIR
        void = void_units(q)
        finished = {
            uid: (state, int(st.get("images", 0))) for uid, state, st in q.unit_stats() if uid not in void
        }
        files = (
            {p.name[len("unit-") : -len(".parquet")]: p for p in mdir.glob("unit-*.parquet")}
            if mdir.is_dir()
            else {}
        )
        sources: set[str] = set()
        bad: list[str] = []
        moved: list[str] = []
        for uid, (_state, images) in finished.items():
            path = files.get(uid)
            try:
                if path is None:
                    raise ValueError("missing")
                table = pq.read_table(path, columns=["source", "unit"])
                if set(table.column("unit").to_pylist()) != {uid}:
                    raise ValueError("rows of another unit")
                srcs = set(table.column("source").to_pylist())
                if len(srcs) != images:
                    raise ValueError(f"{len(srcs)} images, the queue says {images}")
                sources |= srcs
            except Exception:
                bad.append(uid)
                if path is not None:
                    moved.append(_move_aside(out, path))
        for uid, path in files.items():  # files of units the queue never had (copies)
            if uid not in finished and q.state_of(uid) is None:
                moved.append(_move_aside(out, path))
        if bad:
            add_void_units(q, bad)
        if bad or moved:
            self.repairs = {"void_units": bad, "moved": moved}
            self.note(
                f"the manifest did not match the queue: {len(bad)} unit file(s) missing or damaged "
                f"(their images are queued again), {len(moved)} file(s) moved to {out / DAMAGED_DIR}"
            )
        return sources


def _unfinished_sources(q: WorkQueue) -> set[str]:
    """Sources of every pending or leased unit (poisoned() with no attempts needed and a time after
    every lease returns exactly those)."""
    out: set[str] = set()
    for unit in q.poisoned(0, now=_FAR_FUTURE):
        out.update(source_text(p) for p in unit.paths)
    return out


def _fresh_ids(
    q: WorkQueue, uid: str, items: tuple[WorkItem, ...], note: Callable[[str], None]
) -> list[tuple[str, tuple[WorkItem, ...]]]:
    """(uid, items), or halves of it when that id is already in the queue (the images of a void
    unit, listed again in the same order, would give its id back)."""
    if q.state_of(uid) is None:
        return [(uid, items)]
    if len(items) == 1:
        note(f"cannot queue {items[0]!r} again (its unit is already in the queue); use --force to redo it")
        return []
    k = len(items) // 2
    out: list[tuple[str, tuple[WorkItem, ...]]] = []
    for half in (items[:k], items[k:]):
        out.extend(_fresh_ids(q, unit_id(half), half, note))
    return out


def _move_aside(out: Path, path: Path) -> str:
    dest = out / DAMAGED_DIR / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(dest))
    return str(dest)


def _printable(s: str) -> str:
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _spec_text(spec: Any) -> str:
    return ", ".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)


def _one_line(e: BaseException, spec: Any) -> str:
    import errno

    from facefleet.engine.queue import QueueError

    if isinstance(e, FileNotFoundError):
        msg = str(e)
        return (
            msg
            if msg.startswith(("input not found", "no files", "no image files"))
            else (f"input not found: {_spec_text(spec)}")
        )
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return "no space left on device"
        return f"cannot read input {_spec_text(spec)}: {e.strerror or e}"
    if isinstance(e, QueueError):
        return str(e).splitlines()[0]
    return f"listing {_spec_text(spec)} failed: {type(e).__name__}: {e}"
