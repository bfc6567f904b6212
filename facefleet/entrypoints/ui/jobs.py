"""The UI's jobs tab without the widgets: start a job (a path under the server's roots, or uploaded
files), follow it until it ends, show its progress, list a key's jobs, and package a finished job's
results for download.

Everything goes through the :class:`~facefleet.entrypoints.service.core.Service` the REST routes use,
with the same rules: the key's quota, the server's roots, a job visible to its own key only.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import shutil
import time
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facefleet.entrypoints.service.keys import ApiKey
from facefleet.entrypoints.service.store import FINAL, JobRecord
from facefleet.entrypoints.service.uploads import HttpError, safe_filename

if TYPE_CHECKING:
    from facefleet.entrypoints.service.core import Service

#: how often a followed job's record is read
POLL_S = 0.5
#: a finished job's outputs are offered as one zip up to this size (larger: fetch them over the API)
ZIP_LIMIT = 512 * 2**20
#: columns of the jobs table
JOB_COLUMNS = ["id", "kind", "state", "progress", "images", "faces", "failed", "created", "error"]


def submit(
    service: Service,
    key: ApiKey,
    kind: str,
    path: str,
    uploads: Sequence[str],
    formats: Sequence[str],
) -> JobRecord:
    """Start a job over ``path`` (under the server's roots) or over ``uploads`` (files the browser sent,
    copied into the job's input folder). Raises ``HttpError`` as ``POST /v1/jobs`` answers."""
    path = path.strip()
    if path and uploads:
        raise HttpError(422, "give a server path or upload files, not both")
    options = {"formats": list(formats)}
    if not uploads:
        if not path:
            raise HttpError(422, "give a path on the server (under its roots) or upload files")
        return service.submit_job(key, kind, [path], options)
    job_id, folder = service.jobs.new_folder()
    inbox = folder / "input"
    inbox.mkdir()
    try:
        for i, up in enumerate(uploads):
            shutil.copyfile(up, inbox / safe_filename(Path(up).name, i))
        return service.submit_job(key, kind, [str(inbox)], options, job_id=job_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a refused job leaves no files behind
        raise


async def follow(service: Service, job_id: str, poll_s: float = POLL_S) -> AsyncIterator[JobRecord]:
    """The job's record now and every ``poll_s`` seconds while it changes, until it is final."""
    last: JobRecord | None = None
    while True:
        record = service.store.get(job_id)
        if record is None:
            raise HttpError(404, f"no job {job_id!r}")
        if last is None or record.updated != last.updated or record.state != last.state:
            yield record
        last = record
        if record.state in FINAL:
            return
        await asyncio.sleep(poll_s)


def progress_html(record: JobRecord) -> str:
    """A progress bar (``<progress>``, indeterminate while the total is unknown) with the job's state,
    counts, rate and ETA, as HTML."""
    p = record.progress
    bar = f'<progress max="1" value="{p:.4f}"></progress>' if p is not None else "<progress></progress>"
    unit = "frames" if record.kind == "video" else "images"
    parts = []
    if p is not None:
        parts.append(f"{100 * p:.0f} %")
    if record.total is not None:
        parts.append(f"{record.done}/{record.total} {unit}")
    else:
        parts.append(f"{record.images} {unit}")
    parts.append(f"{record.faces} faces, {record.failed} failed")
    if record.state == "running" and record.rate > 0:
        parts.append(f"{record.rate:g} {unit}/s")
    eta = record.eta_seconds
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    if record.state in FINAL and record.started and record.finished:
        parts.append(f"took {_duration(record.finished - record.started)}")
    state, job = html.escape(record.state), html.escape(record.id)
    status = f"<b>{state}</b> · {html.escape(' · '.join(parts))}"
    error = f'<div class="ff-error">{html.escape(record.error)}</div>' if record.error else ""
    return (
        f'<div class="ff-job" data-state="{state}" data-job="{job}">'
        f'{bar}<div class="ff-status">{status}</div>{error}</div>'
    )


def job_rows(records: Sequence[JobRecord]) -> list[list[Any]]:
    """One row of :data:`JOB_COLUMNS` per job."""
    rows = []
    for r in records:
        p = r.progress
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        progress = "" if p is None else f"{100 * p:.0f} %"
        rows.append([r.id, r.kind, r.state, progress, r.images, r.faces, r.failed, created, r.error or ""])
    return rows


def job_summary(record: JobRecord, queue: str | None = None) -> dict[str, Any]:
    """What the jobs tab shows of a job: the job as ``GET /v1/jobs/{id}`` shows it (``queue``: its
    networked queue's URL, see :meth:`Service.job_queue`) and, once it has one, its run report's figures
    (``report.json``'s ``derived`` part)."""
    view = record.to_api(queue)
    report = Path(record.out) / "report.json"
    if record.state in FINAL and report.is_file():
        with contextlib.suppress(OSError, ValueError):  # a report being written: shown next time
            view["report"] = json.loads(report.read_text()).get("derived")
    return view


def package_results(service: Service, record: JobRecord, scratch: Path) -> tuple[list[Path], str]:
    """Copies of a finished job's report files and one zip of all its outputs (when under
    :data:`ZIP_LIMIT`) in ``scratch``, for download; and a line that says what they hold."""
    files = service.output_files(record)
    if not files:
        return [], "no output files"
    scratch.mkdir(parents=True, exist_ok=True)
    out = Path(record.out)
    picked = []
    for p in files:
        if p.parent == out and (p.name.startswith("report.") or p.suffix == ".parquet"):
            picked.append(Path(shutil.copy2(p, scratch / p.name)))
    size = sum(p.stat().st_size for p in files)
    if size <= ZIP_LIMIT:
        target = scratch / f"job-{record.id}.zip"
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for p in files:
                z.write(p, p.relative_to(out).as_posix())
        picked.insert(0, target)
        note = f"{len(files)} files, {size / 2**20:.1f} MiB (all in {target.name})"
    else:
        note = (
            f"{len(files)} files, {size / 2**20:.0f} MiB: too many to zip here; "
            f"list them with GET /v1/jobs/{record.id}/results"
        )
    return picked, note


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
