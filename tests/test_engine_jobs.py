"""The Engine object and run-level behaviour over several sessions: job ids and typed events, the
OUT lock, re-runs that pick up new files, whole-run reports, absolute sources, manifest repair,
odd inputs (non-UTF-8 names, FIFOs, symlink loops, OUT inside INPUT), SIGTERM, unit sizing.

Small real photos (scikit-image crops); the light test double of the pipeline where only the
scheduling matters (FakeReconstructor), so the whole file runs in about a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from facefleet.engine import Engine, EngineError, Job, RunOptions, read_manifest, run
from facefleet.engine import events as ev
from facefleet.engine.queue import open_queue

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_support import make_corpus

REPO = Path(__file__).resolve().parents[1]
FAKE = "test_engine_support:FakeReconstructor"
OPTS: dict[str, Any] = dict(devices="cpu", workers=2, unit_size=4, quiet=True, reconstructor=FAKE)


def _sources(out: Path) -> list[str]:
    """The manifest's sources, checking no (source, face) row appears twice."""
    rows = read_manifest(out).to_pylist()
    keys = [(r["source"], r["face_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (source, face) rows"
    return sorted({r["source"] for r in rows})


def _stats(out: Path) -> dict[str, Any]:
    return json.loads((out / "stats.json").read_text())


def test_engine_jobs_events_and_lock(tmp_path: Path) -> None:
    """Job ids, the typed events of a job in order, the summary from wait(); while a job runs, a
    second run on its OUT is refused (with --force too) and the first is not disturbed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 16)
    engine = Engine()
    seen: list[ev.Event] = []
    opts = RunOptions(devices="cpu", workers=1, unit_size=4, reconstructor=FAKE,
                      reconstructor_kwargs={"delay": 0.1})  # fmt: skip
    job = engine.submit(Job(str(inp), out, opts), subscribers=[seen.append])
    stream = engine.events(job)
    first_up = next(e for e in stream if isinstance(e, ev.WorkerUp))
    assert first_up.job_id == job and first_up.device == "cpu"
    with pytest.raises(EngineError, match="another run is using"):
        run(str(inp), out, **OPTS)
    with pytest.raises(EngineError, match="another run is using"):
        run(str(inp), out, force=True, **OPTS)
    rest = list(stream)  # ends with the job's JobDone
    summary = engine.wait(job)
    assert summary.images == 16 and summary.units_done == 4 and summary.job_id == job
    assert isinstance(rest[-1], ev.JobDone) and rest[-1].status == "completed" and rest[-1].summary is summary
    kinds = [type(e).__name__ for e in seen]
    assert kinds[-1] == "JobDone" and "Progress" in kinds and "WorkerDown" in kinds
    done = [e for e in seen if isinstance(e, ev.UnitDone) and e.state == "done"]
    assert len(done) == 4 and sum(e.images for e in done) == 16
    assert all(e.job_id == job for e in seen)
    # the same engine runs another job (a re-run: nothing new) under a new id; the lock is free
    job2 = engine.submit(Job(str(inp), out, opts))
    assert job2 != job and engine.wait(job2).units_skipped == 4
    assert list(engine.events(job2)) == []  # an ended job's stream is empty


def test_rerun_new_files_formats_and_sessions_report(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    files = make_corpus(inp, 12, subdirs=1)
    first = run(str(inp), out, **OPTS)
    record = (out / "run.json").read_bytes()
    assert first.images == 12
    # a no-op re-run: the report covers both sessions; the rate is over their own times
    again = run(str(inp), out, **OPTS)
    assert again.images == 12 and again.units_skipped == first.units_done
    s = _stats(out)
    assert len(s["sessions"]) == 2 and s["sessions"][1]["images"] == 0
    assert s["wall_seconds"] == pytest.approx(sum(x["wall_seconds"] for x in s["sessions"]), abs=0.01)
    report = json.loads((out / "report.json").read_text())["derived"]
    assert report["images_per_s"] == pytest.approx(12 / s["wall_seconds"], rel=1e-3)
    assert all(w["busy_fraction"] is None or w["busy_fraction"] <= 1.0 for w in report["per_worker"])
    assert "Sessions" in (out / "report.html").read_text()
    # new files (sorting first, so every later unit boundary moves) are picked up, each image once
    extra = make_corpus(tmp_path / "more", 3, subdirs=1)
    added = []
    for i, f in enumerate(extra):
        dest = inp / "d0" / f"a{i}.jpg"
        dest.write_bytes(f.read_bytes())
        added.append(dest)
    with open_queue(out / "_queue.sqlite") as q:  # as if the first listing had not finished
        q.set_meta("listing_done", "0")
    third = run(str(inp), out, **OPTS)
    assert third.images == 15 and _stats(out)["totals"]["images"] == 15
    assert _sources(out) == sorted(str(f) for f in [*files, *added])
    assert (out / "run.json").read_bytes() == record  # never rewritten
    # the totals and the report rebuilt from the queue alone (as for external workers)
    from facefleet.engine import write_run_report

    before = _stats(out)
    for name in ("stats.json", "report.json", "report.html"):
        (out / name).unlink()
    assert write_run_report(out) == out / "report.html" and (out / "report.html").exists()
    rebuilt = _stats(out)
    assert rebuilt["totals"] == before["totals"] and rebuilt["status"] == "completed"
    assert rebuilt["wall_seconds"] == before["wall_seconds"] and len(rebuilt["sessions"]) == 3
    # other formats: refused with the option named, nothing changed
    with pytest.raises(EngineError, match="--formats"):
        run(str(inp), out, formats=["json", "obj"], **OPTS)
    assert (out / "run.json").read_bytes() == record


def test_resume_from_another_folder_with_an_absolute_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started as ``run in`` (relative), interrupted, resumed as ``run /abs/in`` from elsewhere:
    the pending images are read from INPUT, not from the current folder."""
    (tmp_path / "a").mkdir()
    inp, out = tmp_path / "a" / "in", tmp_path / "out"
    make_corpus(inp, 48, subdirs=1)
    monkeypatch.chdir(tmp_path / "a")
    engine = Engine()
    opts = RunOptions(devices="cpu", workers=1, unit_size=4, batch_size=4, reconstructor=FAKE,
                      reconstructor_kwargs={"delay": 0.05})  # fmt: skip
    job = engine.submit(Job("in", out, opts))
    for e in engine.events(job):
        if isinstance(e, ev.UnitDone):
            engine.cancel(job)
            break
    first = engine.wait(job)
    assert first.interrupted and first.exit_code == 130 and 0 < first.images < 48
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "d0").mkdir()  # a same-named tree here must not be read
    done = run(str(inp), out, **OPTS)
    assert done.images == 48 and done.failed == 0
    assert _sources(out) == sorted(str(inp / "d0" / f"img{i:05d}.jpg") for i in range(48))


def test_damaged_manifest_is_repaired_on_resume(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    files = make_corpus(inp, 16, subdirs=1)
    run(str(inp), out, **OPTS)
    units = sorted((out / "manifest").glob("unit-*.parquet"))
    assert len(units) >= 3
    units[0].unlink()  # deleted
    units[1].write_bytes(units[1].read_bytes()[:100])  # truncated
    (out / "manifest" / "unit-0000000000000000.parquet").write_bytes(units[2].read_bytes())  # a copy
    resumed = run(str(inp), out, **OPTS)
    assert resumed.images == 16 and resumed.failed == 0
    assert _sources(out) == sorted(str(f) for f in files)
    s = _stats(out)
    assert s["totals"]["images"] == 16 and len(s["manifest_repairs"]["void_units"]) == 2
    assert len(list((out / "manifest-damaged").iterdir())) == 2


def test_odd_inputs_never_abort_the_run(tmp_path: Path) -> None:
    """A non-UTF-8 file name, a FIFO named .jpg, a symlink loop, a .gif, and OUT inside INPUT."""
    from PIL import Image

    inp = tmp_path / "in"
    files = make_corpus(inp, 4, subdirs=1)
    odd = os.fsencode(inp / "d0") + b"/caf\xe9.jpg"
    with open(odd, "wb") as fh:
        fh.write(files[0].read_bytes())
    Image.open(files[1]).save(inp / "d0" / "anim.gif")
    os.mkfifo(inp / "d0" / "pipe.jpg")
    os.symlink(inp, inp / "d0" / "loop")
    out = inp / "out"  # OUT inside INPUT
    first = run(str(inp), out, **OPTS)
    second = run(str(inp), out, **OPTS)  # the first run's files are not inputs of the second
    assert first.images == second.images == 6
    assert second.units_skipped == first.units_done + first.units_failed
    # the manifest's text form of the name: its undecodable byte as \xe9
    odd_name = "caf\\xe9.jpg"
    names = {Path(s).name for s in _sources(out)}
    assert names == {odd_name, "anim.gif", *(f.name for f in files)}
    rows = {Path(r["source"]).name: r for r in read_manifest(out).to_pylist()}
    assert rows["anim.gif"]["error"] is None
    assert all(rows[f.name]["error"] is None for f in files)  # the odd name took no other image down
    skipped = _stats(out)["skipped_inputs"]
    reasons = {e["reason"] for e in skipped["examples"]}
    assert any("not a regular file" in r for r in reasons) and any("loop" in r for r in reasons)
    assert first.skipped_inputs == 2
    html = (out / "report.html").read_text()
    assert "pipe.jpg" in html and "Skipped" in html


def test_units_sized_so_every_worker_has_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short listing is cut into units small enough that every worker gets some (one unit of 256
    would have left the second worker idle); both workers are up before the first batch runs."""
    monkeypatch.setenv("FACEFLEET_FAKE_QUORUM", f"{tmp_path / 'up'}:2")
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 48)
    opts = {**OPTS, "unit_size": 256, "reconstructor_kwargs": {"delay": 0.02}}
    s = run(str(inp), out, **opts)
    assert s.images == 48 and s.units_done >= 4
    workers = _stats(out)["workers"]
    assert len(workers) == 2 and all(w["images"] > 0 for w in workers)


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.md").write_text("not an image\n")
    with pytest.raises(EngineError, match="no image files found"):
        run(str(tmp_path / "empty"), tmp_path / "out", **OPTS)
    assert not (tmp_path / "out").exists()


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), **env_extra)
    cmd = [sys.executable, "-m", "facefleet", "run", *args]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize(
    "sig, rc", [(signal.SIGTERM, 143), pytest.param(signal.SIGKILL, -9, marks=pytest.mark.slow)]
)
def test_sigterm_drains_and_a_killed_run_leaves_no_lock(tmp_path: Path, sig: int, rc: int) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 64)
    args = [str(inp), "-o", str(out), "--devices", "cpu", "--workers", "2", "--unit-size", "4",
            "--batch-size", "4", "--reconstructor", FAKE]  # fmt: skip
    proc = _cli(args, {"FACEFLEET_FAKE_DELAY": "0.1"})
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if (out / "_queue.sqlite").exists():
            with open_queue(out / "_queue.sqlite") as q:
                if q.counts()["done"]["units"] >= 1:
                    break
    assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    with open_queue(out / "_queue.sqlite") as q:
        pids = [w["pid"] for w in q.workers()]
        leased = q.counts()["leased"]["units"]
    if sig == signal.SIGTERM:
        assert "interrupted" in err and leased == 0 and "Traceback" not in err
        assert not any(_alive(p) for p in pids), "orphan workers"
    else:  # workers left alone notice their coordinator is gone and leave
        end = time.time() + 30
        while time.time() < end and any(_alive(p) for p in pids):
            time.sleep(0.2)
    done = run(str(inp), out, **OPTS)  # the lock went with the process
    assert done.images == 64 and len(_sources(out)) == 64


@pytest.mark.slow
def test_full_disk_is_one_line_and_resumes(tmp_path: Path) -> None:
    """OUT on a tiny file system: one line, exit code 2, no traceback; a resume with room finishes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:  # fmt: skip
        pytest.skip("needs root to mount a small tmpfs")
    try:
        inp = tmp_path / "in"
        make_corpus(inp, 64)
        out = mnt / "out"
        args = [str(inp), "-o", str(out), "--devices", "cpu", "--workers", "1", "--unit-size", "4",
                "--formats", "json", "--reconstructor", FAKE, "--quiet"]  # fmt: skip
        proc = _cli(args, {})
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        lines = [x for x in err.splitlines() if x.strip()]
        mine = [x for x in lines if x.startswith("facefleet run:")]
        assert len(mine) == 1 and ("no space left" in mine[0] or "cannot write" in mine[0]), err
        # the workers too say it in one line (a QueueError of a full disk is an output error)
        assert "Traceback" not in err and "OperationalError" not in err, err
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        done = run(str(inp), out, **{**OPTS, "workers": 1, "formats": ["json"]})
        assert done.images == 64 and len(_sources(out)) == 64
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_cancel_before_start_and_progress_line(tmp_path: Path) -> None:
    """The CLI's progress line is a subscriber of the engine's events."""
    import io

    from facefleet.engine.engine import ProgressPrinter, progress_line

    p = ev.Progress("j", 0.0, 50, 100, True, 50, 60, 1, 10.0, 5.0, 6.0, (("cpu0", 5.0),))
    line = progress_line(p)
    assert line.startswith("50/100 images 50%") and "ETA 0:10" in line and "1 failed" in line
    buf = io.StringIO()
    printer = ProgressPrinter(buf)
    printer(p)
    printer(ev.Error("j", 1.0, "worker cpu0 died"))
    assert buf.getvalue().splitlines() == [line, "facefleet: worker cpu0 died"]
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 8)
    engine = Engine()
    gate = threading.Event()
    engine.subscribe(lambda e: gate.set() if isinstance(e, ev.JobDone) else None)
    job = engine.submit(Job(str(inp), out, RunOptions(devices="cpu", workers=1, reconstructor=FAKE)))
    engine.cancel(job)
    summary = engine.wait(job)
    assert gate.wait(5) and summary.exit_code in (0, 130)


def test_job_from_typed_config(tmp_path: Path) -> None:
    from facefleet.config import CpuConfig, JobConfig, ModelConfig, RunConfig

    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 6)
    cfg = JobConfig(
        devices="cpu",
        run=RunConfig(unit_size=3, reconstructor=FAKE, formats=("json",)),
        cpu=CpuConfig(workers=1),
        model=ModelConfig(max_faces=2),
    )
    engine = Engine()
    summary = engine.wait(engine.submit(Job.from_config(str(inp), out, cfg)))
    assert summary.images == 6 and summary.units_done == 3  # units of 2: about 4 for the one worker
    record = json.loads((out / "run.json").read_text())
    assert record["unit_size"] == 3 and record["formats"] == ["json"] and record["workers"] == 1
    assert record["model"]["max_faces"] == 2
    assert len(list((out / "files").rglob("*.json"))) == 6


def test_a_live_coordinator_is_seen_through_a_shared_queue(tmp_path: Path) -> None:
    """A networked queue may be shared by runs with different OUT folders (their locks differ): a
    run sees another's session refreshed within the last seconds, and a crashed one's goes stale."""
    from facefleet.engine.totals import LIVE_SECONDS, live_session, save_session

    with open_queue(tmp_path / "q.sqlite") as q:
        now = time.time()
        assert live_session(q, now) is None
        i = save_session(q, -1, {"start": now - 5, "end": now - 1, "images": 3, "status": "running"})
        assert live_session(q, now) is not None
        assert live_session(q, now + LIVE_SECONDS) is None  # its coordinator stopped refreshing it
        save_session(q, i, {"start": now - 5, "end": now, "images": 3, "status": "completed"})
        assert live_session(q, now) is None


def test_report_command_rebuilds_stats_from_the_queue(tmp_path: Path) -> None:
    """``facefleet report OUT`` rebuilds stats.json and the report of a run from its queue alone (as
    after external workers with no coordinator): the same totals as the run's own."""
    from facefleet.entrypoints.cli import main

    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 12)
    run(str(inp), out, **OPTS)
    before = json.loads((out / "stats.json").read_text())["totals"]
    for name in ("stats.json", "report.html", "report.json"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "stats.json").read_text())["totals"] == before
    assert (out / "report.html").is_file() and before["images"] == 12
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_typed_config_settings_reach_the_plan(tmp_path: Path) -> None:
    """A JobConfig's [run] settings reach the job's plan (max_restarts was dropped), and an explicit
    option still wins over the config."""
    from facefleet.config import JobConfig, RunConfig
    from facefleet.engine.engine import plan_job

    inp = tmp_path / "in"
    make_corpus(inp, 2)
    cfg = JobConfig(devices="cpu", run=RunConfig(max_restarts=7, lease_seconds=12.0, reconstructor=FAKE))
    plan, _ = plan_job("j1", Job.from_config(str(inp), tmp_path / "out", cfg))
    assert plan.max_restarts == 7 and plan.lease == 12.0
    plan, _ = plan_job("j2", Job.from_config(str(inp), tmp_path / "out2", cfg, max_restarts=1))
    assert plan.max_restarts == 1
