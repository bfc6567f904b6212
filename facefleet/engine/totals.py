"""A run's totals, sessions and stats, rebuilt from its queue (and manifest) alone.

The queue holds everything needed: each finished unit's stats (counts, failures, stage seconds, the
worker that did it), the workers' rows, and the run's *sessions* (meta ``sessions``: one record per
start or resume of a coordinator, with its start, end and the images it finished). So the
totals and the report of a run whose units were done by external workers with no coordinator
(``facefleet worker --queue URL``) come out of :func:`rebuild_stats` just the same.

Whole-run figures: the totals count every unit done or failed (``void_units`` left out: units
whose manifest file a resume found missing or damaged and queued again); ``wall_seconds`` is the
sum of the sessions' own times, so a no-op re-run or a resume does not change the run's rate.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.engine.queue import WorkQueue

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports a process that SIGINT ended
EXIT_TERMINATED = 143  # SIGTERM: drained like Ctrl-C, reported as a shell reports SIGTERM

SESSIONS_KEY = "sessions"
VOID_KEY = "void_units"


@dataclass(frozen=True)
class RunSummary:
    """What a run did (totals over the whole run, previous sessions of a resumed run included)."""

    out_dir: Path
    images: int = 0
    faces: int = 0
    no_face: int = 0
    failed: int = 0
    units_done: int = 0
    units_failed: int = 0
    units_skipped: int = 0  # already finished before this session
    seconds: float = 0.0  # this session's wall time
    interrupted: bool = False
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    stats_path: Path | None = None
    signal_name: str | None = None  # "SIGINT" or "SIGTERM" when interrupted
    skipped_inputs: int = 0  # listed entries that are not regular files, loops, ... (see the report)
    job_id: str = ""

    @property
    def complete(self) -> bool:
        return not self.interrupted

    @property
    def exit_code(self) -> int:
        """0 all done, 1 done with failed images, 130 interrupted (SIGINT), 143 (SIGTERM)."""
        if self.interrupted:
            return EXIT_TERMINATED if self.signal_name == "SIGTERM" else EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


# -- sessions ----------------------------------------------------------------------------------
def read_sessions(q: WorkQueue) -> list[dict[str, Any]]:
    text = q.get_meta(SESSIONS_KEY)
    try:
        data = json.loads(text) if text else []
    except ValueError:
        return []
    return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []


def save_session(q: WorkQueue, index: int, record: dict[str, Any]) -> int:
    """Store session ``index`` (-1: append a new one); returns its index."""
    sessions = read_sessions(q)
    if index < 0 or index >= len(sessions):
        sessions.append(record)
        index = len(sessions) - 1
    else:
        sessions[index] = record
    q.set_meta(SESSIONS_KEY, json.dumps(sessions))
    return index


LIVE_SECONDS = 10.0  # a running session's record is refreshed every second; older: its coordinator is gone


def live_session(q: WorkQueue, now: float) -> dict[str, Any] | None:
    """The session of another coordinator that is running on this queue now (a networked queue
    shared by runs with different OUT folders, which OUT's lock cannot see), or None."""
    for s in read_sessions(q)[-1:]:
        if s.get("status") == "running" and now - float(s.get("end") or 0) < LIVE_SECONDS:
            return s
    return None


def void_units(q: WorkQueue) -> set[str]:
    text = q.get_meta(VOID_KEY)
    try:
        return set(json.loads(text)) if text else set()
    except ValueError:
        return set()


def add_void_units(q: WorkQueue, ids: Iterable[str]) -> None:
    q.set_meta(VOID_KEY, json.dumps(sorted(void_units(q) | set(ids))))


# -- totals ------------------------------------------------------------------------------------
@dataclass
class Totals:
    """Sums over the finished units of a run (built by :func:`collect`)."""

    images: int = 0
    faces: int = 0
    no_face: int = 0
    failed: int = 0
    units_done: int = 0
    units_failed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    per_worker: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_peak: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"images": self.images, "faces": self.faces, "no_face": self.no_face, "failed": self.failed}


def collect(q: WorkQueue) -> Totals:
    """Sum the stats of every done or failed unit of the queue (void units left out)."""
    tot = Totals()
    void = void_units(q)
    worker_peak: dict[tuple[str, str], float] = {}
    for uid, state, st in q.unit_stats():
        if uid in void:
            continue
        if state == "done":
            tot.units_done += 1
        else:
            tot.units_failed += 1
        tot.images += int(st.get("images", 0))
        tot.faces += int(st.get("faces", 0))
        tot.no_face += int(st.get("no_face", 0))
        tot.failed += int(st.get("failed", 0))
        for k, v in st.get("failed_by_reason", {}).items():
            tot.by_reason[k] = tot.by_reason.get(k, 0) + int(v)
        for k, v in st.get("stages", {}).items():
            tot.stages[k] = tot.stages.get(k, 0.0) + float(v)
        for f in st.get("failures", []):
            if sum(x["reason"] == f["reason"] for x in tot.failures) < 5:
                tot.failures.append(f)
        w = st.get("worker")
        if not w:
            continue
        pw = tot.per_worker.setdefault(
            w,
            {
                "worker": w,
                "device": st.get("device"),
                "units": 0,
                "images": 0,
                "faces": 0,
                "failed": 0,
                "seconds": 0.0,
                "busy_seconds": 0.0,
            },
        )
        pw["units"] += 1
        for k in ("images", "faces", "failed"):
            pw[k] += int(st.get(k, 0))
        pw["seconds"] += float(st.get("seconds", 0.0))
        pw["busy_seconds"] += float(st.get("busy_seconds", 0.0))
        if "gpu_memory_peak_mib" in st:
            key = (str(st.get("device")), str(w))
            worker_peak[key] = max(worker_peak.get(key, 0.0), float(st["gpu_memory_peak_mib"]))
    # several workers on one GPU: their peaks add up (an upper bound of the GPU's peak)
    for (dev, _w), v in worker_peak.items():
        tot.gpu_peak[dev] = tot.gpu_peak.get(dev, 0.0) + v
    for pw in tot.per_worker.values():
        pw["images_per_s"] = pw["images"] / pw["busy_seconds"] if pw["busy_seconds"] else None
    return tot


def run_wall(q: WorkQueue, sessions: list[dict[str, Any]]) -> float:
    """The run's time: the sum of its sessions' own times; without sessions (external workers and
    no coordinator), from the first worker's start to the last one's last sign of life."""
    if sessions:
        return sum(max(0.0, float(s.get("end") or s["start"]) - float(s["start"])) for s in sessions)
    ws = q.workers()
    if not ws:
        return 0.0
    return max(0.0, max(float(w["last_seen"]) for w in ws) - min(float(w["started"]) for w in ws))


def build_stats(
    q: WorkQueue, out: Path, record: dict[str, Any], *, status: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The stats.json document of a run, from its queue (``extra``: this session's series: the
    throughput, batch records, GPU samples, skip notes)."""
    tot = collect(q)
    counts = q.counts()
    sessions = read_sessions(q)
    wall = run_wall(q, sessions)
    started = min((float(s["start"]) for s in sessions), default=None)
    stats: dict[str, Any] = {
        "version": _version(),
        "status": status,
        "input": record.get("input"),
        "output": str(out.resolve()),
        "started_at": started,
        "finished_at": time.time(),
        "wall_seconds": round(wall, 3),
        "sessions": [_session_row(s) for s in sessions],
        "totals": {
            **tot.counts(),
            "units": tot.units_done + tot.units_failed,
            "units_done": tot.units_done,
            "units_failed": tot.units_failed,
            "units_pending": counts["pending"]["units"] + counts["leased"]["units"],
            "images_listed": int(q.get_meta("listed_images") or 0),
            "failed_by_reason": tot.by_reason,
        },
        "failures": tot.failures,
        "workers": sorted(tot.per_worker.values(), key=lambda w: str(w["worker"])),
        "stages": {k: round(v, 4) for k, v in tot.stages.items()},
        "gpu_memory_peak_mib": tot.gpu_peak,
        "config": record,
    }
    stats.update(extra or {})
    return stats


def _session_row(s: dict[str, Any]) -> dict[str, Any]:
    wall = max(0.0, float(s.get("end") or s["start"]) - float(s["start"]))
    images = int(s.get("images", 0))
    return {
        **s,
        "wall_seconds": round(wall, 3),
        "images_per_s": images / wall if wall > 0 and images else None,
    }


def rebuild_stats(out: str | os.PathLike[str], queue_url: str | None = None) -> dict[str, Any]:
    """The stats of the run in ``out`` from its queue alone (``queue_url``: where the queue is, when
    not ``OUT/_queue.sqlite``): for runs done by external workers, or to redo a lost report."""
    from facefleet.engine.layout import RUN_FILE, EngineError
    from facefleet.engine.queue import QUEUE_FILE, QueueError, open_queue

    out_p = Path(out)
    record: dict[str, Any] = {}
    if (out_p / RUN_FILE).is_file():
        try:
            record = json.loads((out_p / RUN_FILE).read_text())
        except (OSError, ValueError):
            record = {}
    url = queue_url or record.get("queue") or str(out_p / QUEUE_FILE)
    if "://" not in str(url) and not Path(url).exists():
        raise EngineError(f"no run in {out_p}: {url} not found")
    try:
        with open_queue(url) as q:
            if not record:  # no run.json here (external workers): the record the run left in its queue
                from facefleet.engine.layout import RUN_META_KEY

                text = q.get_meta(RUN_META_KEY)
                record = json.loads(text) if text else {}
            remaining = q.remaining()
            listed = q.get_meta("listing_done") == "1"
            status = "completed" if listed and remaining == 0 else "incomplete"
            return build_stats(q, out_p, record, status=status)
    except QueueError as e:
        raise EngineError(str(e)) from None


def write_stats(out: str | os.PathLike[str], stats: dict[str, Any], report: bool = True) -> Path:
    """Write ``OUT/stats.json`` and (``report``) ``report.json``/``report.html``."""
    from facefleet.engine.layout import STATS_FILE, EngineError
    from facefleet.io.atomic import atomic_write_text

    path = Path(out) / STATS_FILE
    try:
        atomic_write_text(path, json.dumps(stats, indent=1, default=str))
    except OSError as e:
        raise EngineError(f"cannot write {path}: {e.strerror or e}") from None
    if report:
        from facefleet.monitor.report_files import write_report

        try:
            write_report(out, stats)
        except OSError as e:
            raise EngineError(f"cannot write the run report in {out}: {e.strerror or e}") from None
    return path


def write_run_report(out: str | os.PathLike[str], queue_url: str | None = None) -> Path:
    """``facefleet report OUT``: rebuild stats.json and the report from the queue; returns the
    report's HTML path."""
    write_stats(out, rebuild_stats(out, queue_url))
    return Path(out) / "report.html"


def _version() -> str:
    try:
        from facefleet import __version__

        return __version__
    except Exception:
        return "unknown"
