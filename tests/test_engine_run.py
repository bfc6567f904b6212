"""End-to-end batch runs on the CPU: worker crash, interrupt + resume, bad files, poison units,
command-line errors. These run the real pipeline on small real photos (scikit-image), except the
poison-unit test, which needs a reconstructor that crashes on purpose."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from facefleet.engine import read_manifest, run
from facefleet.engine.queue import open_queue
from facefleet.entrypoints.cli.run import run_main as run_cli

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_support import make_corpus

REPO = Path(__file__).resolve().parents[1]
# FACEFLEET_TEST_FAKE_RECON=1 runs these with the test double (for engine development only)
RECON = "test_engine_support:FakeReconstructor" if os.environ.get("FACEFLEET_TEST_FAKE_RECON") else None

pytestmark = pytest.mark.slow


def _rows(table: pa.Table) -> dict[tuple[str, int], dict[str, object]]:
    rows = table.to_pylist()
    keyed = {(r["source"], r["face_index"]): r for r in rows}
    assert len(keyed) == len(rows), "a (source, face_index) appears twice in the manifest"
    return keyed


def _sources_once(table: pa.Table) -> list[str]:
    """Sources of the manifest, checking each image's rows come from a single unit."""
    by_src: dict[str, set[str]] = {}
    for s, u in zip(table.column("source").to_pylist(), table.column("unit").to_pylist(), strict=False):
        by_src.setdefault(s, set()).add(u)
    assert all(len(u) == 1 for u in by_src.values()), "an image was written by two units"
    return sorted(by_src)


def test_worker_killed_mid_run_still_completes(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    files = make_corpus(inp, 240)
    killed: list[int] = []

    def killer() -> None:
        q = None
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            time.sleep(0.1)
            if q is None:
                if not (out / "_queue.sqlite").exists():
                    continue
                q = open_queue(out / "_queue.sqlite")
            if q.counts()["done"]["units"] < 2:
                continue
            row = q._db.execute("SELECT owner FROM units WHERE state='leased' LIMIT 1").fetchone()
            if row:
                pid = int(row[0].split(":")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if q is not None:
            q.close()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    log = tmp_path / "events.jsonl"
    summary = run(
        str(inp),
        out,
        devices="cpu",
        workers=2,
        unit_size=16,
        batch_size=8,
        lease_seconds=3,
        quiet=True,
        log_json=log,
        reconstructor=RECON,
    )
    t.join(5)
    assert killed, "the test did not manage to kill a worker"
    assert not summary.interrupted and summary.units_done == 15 and summary.units_failed == 0
    table = read_manifest(out)
    _rows(table)
    assert _sources_once(table) == sorted(str(f) for f in files)
    assert summary.images == 240 and summary.failed == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    died = [e for e in events if e["event"] == "worker_died"]
    assert died and died[0]["pid"] == killed[0] and died[0]["exit_code"] == -signal.SIGKILL
    assert any(e["event"] == "worker_restarted" for e in events)
    done = [e for e in events if e["event"] == "unit_done"]
    assert {"read", "decode", "detect", "write"} <= set(done[0]["stages"])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["images"] == 240 and stats["worker_restarts"] >= 1
    assert sum(w["images"] for w in stats["workers"]) == 240
    # every batch of the finished units, once, timed within the run (the bench's steady rate)
    assert sum(row[1] for row in stats["batch_done"]) == 240
    assert all(0 < row[0] <= stats["wall_seconds"] + 1 for row in stats["batch_done"])
    assert {row[2] for row in stats["batch_done"]} <= {w["worker"] for w in stats["workers"]}
    if RECON is None:  # the real pipeline finds the astronaut
        assert summary.faces >= 1


def test_two_networks_threads_finish_units_whole(tmp_path: Path) -> None:
    """``network_threads = 2``: batches finish out of order (every other one takes twice as long), yet
    every unit is written whole, each image once, with the same rows as one thread; the two threads'
    batches overlap, and their busy time is shared out: never more than the wall time."""
    inp = tmp_path / "in"
    files = make_corpus(inp, 96)
    common: dict[str, Any] = dict(
        devices="cpu", workers=1, unit_size=16, batch_size=4, quiet=True,
        reconstructor="test_engine_support:FakeReconstructor", reconstructor_kwargs={"batch_delay": 0.04},
    )  # fmt: skip
    two = run(str(inp), tmp_path / "two", config={"cpu": {"network_threads": 2}}, **common)
    one = run(str(inp), tmp_path / "one", **common)
    assert two.units_done == one.units_done == 6 and two.units_failed == 0 and two.images == 96
    t2, t1 = read_manifest(tmp_path / "two"), read_manifest(tmp_path / "one")
    assert _sources_once(t2) == sorted(str(f) for f in files)
    got, want = _rows(t2), _rows(t1)
    assert got.keys() == want.keys()
    assert all(got[k]["landmarks"] == want[k]["landmarks"] for k in want)
    s2, s1 = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("two", "one"))
    busy2, busy1 = (sum(w["busy_seconds"] for w in s["workers"]) for s in (s2, s1))
    print(f"busy seconds: two threads {busy2:.3f}, one {busy1:.3f}")
    assert busy1 >= 0.04 * 36  # 24 batches one after another: 12 of 0.08 s, 12 of 0.04 s
    assert busy2 <= s2["wall_seconds"] and busy2 < busy1 - 0.2  # two threads overlap them
    # per batch: when it was done (as batch_done), its decoding, the waits, the networks' time
    from facefleet.monitor.report import steady_batch_stages

    for s in (s1, s2):
        table = s["batch_stages"]
        assert table["columns"] == ["t", "decode", "slot_wait", "wait_input", "networks"]
        assert sorted(r[0] for r in table["rows"]) == sorted(row[0] for row in s["batch_done"])
        assert len(table["rows"]) == 24 and all(r[4] >= 0.04 and min(r[1:]) >= 0 for r in table["rows"])
        med = steady_batch_stages(table)
        assert set(med) == {"decode", "slot_wait", "wait_input", "networks"} and med["networks"] >= 40


def _cli(args: list[str], env_extra: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), **(env_extra or {}))
    cmd = [sys.executable, "-m", "facefleet", "run", *args]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


def test_interrupt_then_resume_equals_one_run(tmp_path: Path) -> None:
    """SIGINT while the workers wait at a gate (GatedReconstructor: the real pipeline, each worker's
    batches after its first two wait for a file), so the run cannot end before the interrupt; the
    gate opens once the signal is in, the workers finish the units they hold and leave."""
    inp = tmp_path / "in"
    make_corpus(inp, 96)
    common = ["--devices", "cpu", "--workers", "2", "--unit-size", "8", "--batch-size", "4", "--quiet"]
    extra = {"reconstructor": RECON} if RECON else {}
    gate = tmp_path / "gate"
    env = {"FACEFLEET_TEST_GATE": str(gate), **({"FACEFLEET_FAKE_DELAY": "0.05"} if RECON else {})}
    recon = RECON or "test_engine_support:GatedReconstructor"
    # the interrupted run: SIGINT to the coordinator once a unit is done
    out = tmp_path / "out"
    proc = _cli([str(inp), "-o", str(out), *common, "--reconstructor", recon], env_extra=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if (out / "_queue.sqlite").exists():
            with open_queue(out / "_queue.sqlite") as q:
                if q.counts()["done"]["units"] >= 1:
                    break
    assert proc.poll() is None, "the run ended before the interrupt"
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)  # the coordinator sets the drain flag within 0.2 s; workers look before each claim
    gate.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    with open_queue(out / "_queue.sqlite") as q:
        counts = q.counts()
    assert 1 <= counts["done"]["units"] < 12, counts
    assert counts["leased"]["units"] == 0  # drained: nothing left half-done
    partial = read_manifest(out)
    assert 0 < len(_sources_once(partial)) < 96
    # resume
    resumed = run(str(inp), out, devices="cpu", workers=2, unit_size=8, batch_size=4, quiet=True, **extra)
    assert not resumed.interrupted and resumed.units_skipped == counts["done"]["units"]
    assert resumed.images == 96
    # one uninterrupted run
    ref_out = tmp_path / "ref"
    ref = run(str(inp), ref_out, devices="cpu", workers=2, unit_size=8, batch_size=4, quiet=True, **extra)
    assert ref.images == 96
    got, want = _rows(read_manifest(out)), _rows(read_manifest(ref_out))
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        assert (g["width"], g["height"], g["error"]) == (w["width"], w["height"], w["error"])
        for col in ("bbox", "landmarks", "pose_matrix"):
            if w[col] is None:
                assert g[col] is None
            else:
                np.testing.assert_allclose(g[col], w[col], atol=1e-2, err_msg=f"{key} {col}")
    # a third run of the same command does nothing and changes nothing
    units = resumed.units_done
    again = run(str(inp), out, devices="cpu", workers=2, unit_size=8, quiet=True, **extra)
    assert again.units_skipped == units and again.images == 96
    assert read_manifest(out).num_rows == len(got)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_mixed_bad_files_are_reported_not_fatal(tmp_path: Path, astronaut: np.ndarray) -> None:
    from PIL import Image

    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).resize((256, 256)).save(inp / "face.jpg", quality=90)
    from skimage import data

    Image.fromarray(data.coffee()).resize((200, 150)).save(inp / "sub" / "coffee.png")
    good = (inp / "face.jpg").read_bytes()
    (inp / "empty.jpg").write_bytes(b"")
    (inp / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (inp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + np.random.default_rng(0).bytes(5000))
    (inp / "huge.png").write_bytes(_png_header(100_000, 100_000))
    (inp / "sub" / "notes.jpg").write_text("this is not an image\n")
    (inp / "readme.md").write_text("ignored: not an image extension\n")
    log = tmp_path / "log.jsonl"
    code = run_cli(
        [
            str(inp),
            "-o",
            str(out),
            "--devices",
            "cpu",
            "--workers",
            "1",
            "--unit-size",
            "3",
            "--quiet",
            "--log-json",
            str(log),
            "--formats",
            "json,overlay",
            *(["--reconstructor", RECON] if RECON else []),
        ]
    )
    assert code == 1  # finished, some images failed
    rows = read_manifest(out).to_pylist()
    by = {Path(r["source"]).name: r for r in rows if r["face_index"] <= 0}
    assert set(by) == {
        "face.jpg",
        "coffee.png",
        "empty.jpg",
        "truncated.jpg",
        "corrupt.jpg",
        "huge.png",
        "notes.jpg",
    }
    assert by["face.jpg"]["error"] is None and by["coffee.png"]["error"] is None
    assert "empty" in by["empty.jpg"]["error"]
    assert "truncated" in by["truncated.jpg"]["error"]
    assert by["corrupt.jpg"]["error"]
    assert "100000x100000" in by["huge.png"]["error"] or "too large" in by["huge.png"]["error"]
    assert by["notes.jpg"]["error"]
    if RECON is None:
        assert by["face.jpg"]["face_index"] == 0 and len(by["face.jpg"]["landmarks"]) == 1404
        assert by["coffee.png"]["face_index"] == -1 and by["coffee.png"]["landmarks"] is None
    # per-image files mirror the input tree; failed images get a JSON with their error
    face_json = json.loads((out / "files" / "face.jpg.json").read_text())
    assert face_json["error"] is None and face_json["width"] == 256
    notes_json = json.loads((out / "files" / "sub" / "notes.jpg.json").read_text())
    assert notes_json["error"] and notes_json["faces"] == []
    # overlays are drawn on the decoded photos (kept on the host past the device stage), for the
    # images with a face
    overlays = sorted(p.relative_to(out / "files").as_posix() for p in (out / "files").rglob("*_overlay.png"))
    assert overlays == (["face.jpg_overlay.png"] if RECON is None else overlays)
    if RECON is None:
        with Image.open(out / "files" / "face.jpg_overlay.png") as im:
            assert im.size == (256, 256)
            # the photo itself is under the drawing: most pixels equal the decoded input
            drawn = np.asarray(im.convert("RGB")).astype(int)
            photo = np.asarray(Image.open(inp / "face.jpg").convert("RGB")).astype(int)
            assert (np.abs(drawn - photo).max(-1) <= 2).mean() > 0.5
    stats = json.loads((out / "stats.json").read_text())
    reasons = stats["totals"]["failed_by_reason"]
    assert stats["totals"]["failed"] == 5 and sum(reasons.values()) == 5
    assert {"empty", "truncated", "too_large"} <= set(reasons)
    assert (out / "report.html").exists() or not _has_report()


def _has_report() -> bool:
    try:
        from facefleet.monitor.report_files import write_report  # noqa: F401
    except ImportError:
        return False
    return True


def test_image_that_kills_its_worker_is_bisected_and_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One image whose worker dies of SIGSEGV: its unit is cut in halves until the file is alone,
    which gets an error row; every other image of the unit is done."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_corpus(inp, 12, subdirs=1)
    monkeypatch.setenv("FACEFLEET_FAKE_CRASH", "img00005")  # this image kills any worker
    monkeypatch.setenv("FACEFLEET_FAKE_CRASH_SIGNAL", "SEGV")
    summary = run(
        str(inp),
        out,
        devices="cpu",
        workers=2,
        unit_size=4,
        max_attempts=2,
        lease_seconds=5,
        quiet=True,
        reconstructor="test_engine_support:FakeReconstructor",
    )
    assert summary.images == 12 and summary.failed == 1 and summary.exit_code == 1
    assert summary.units_failed == 1
    rows = read_manifest(out).to_pylist()
    by_src: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_src.setdefault(Path(r["source"]).name, []).append(r)
    assert sorted(by_src) == [f"img{i:05d}.jpg" for i in range(12)]
    failed = [r for r in rows if r["error"]]
    assert [Path(r["source"]).name for r in failed] == ["img00005.jpg"]
    assert "unit failed after 2 attempts" in failed[0]["error"]
    assert str(-signal.SIGSEGV) in failed[0]["error"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["images"] == 12 and stats["totals"]["failed_by_reason"] == {"worker_crash": 1}


def test_command_line_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--devices", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "input not found" in err and "nope" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli([str(empty), "-o", str(tmp_path / "o"), "--devices", "cpu"]) == 2
    assert "no image files" in capsys.readouterr().err
    one = tmp_path / "one"
    make_corpus(one, 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli([str(one), "-o", str(blocker / "out"), "--devices", "cpu"]) == 2
    assert "cannot create output directory" in capsys.readouterr().err
    # an OUT made for another INPUT is refused, and so is a different unit size
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "run.json").write_text(json.dumps({"input": str(empty), "unit_size": 256}))
    assert run_cli([str(one), "-o", str(tmp_path / "o2"), "--devices", "cpu"]) == 2
    assert "different INPUT" in capsys.readouterr().err
    (tmp_path / "o2" / "run.json").write_text(json.dumps({"input": str(one), "unit_size": 256}))
    assert run_cli([str(one), "-o", str(tmp_path / "o2"), "--devices", "cpu", "--unit-size", "8"]) == 2
    assert "--unit-size 256" in capsys.readouterr().err
    assert run_cli([str(one), "-o", str(tmp_path / "o3"), "--formats", "json,stl"]) == 2
    assert "run.formats must be one of" in capsys.readouterr().err


def test_pipeline_settings_from_flags_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in"
    make_corpus(inp, 3, subdirs=1)  # astronaut crops: a face each
    out = tmp_path / "out"
    cfg = tmp_path / "ff.toml"
    cfg.write_text('[model]\ndetector = "full"\nmax_faces = 2\n')
    args = [str(inp), "-o", str(out), "--devices", "cpu", "--workers", "1", "--quiet", "--config", str(cfg)]
    assert run_cli([*args, "--detector", "short", "--refine", "0"]) == 0
    record = json.loads((out / "run.json").read_text())
    # flags over the config file, the file's other settings kept
    assert record["model"] == {"detector": "short", "max_faces": 2, "refine": 0}
    assert read_manifest(out).num_rows >= 3
    # resuming with other settings would mix two pipelines in one manifest: refused
    assert run_cli([*args, "--detector", "short"]) == 2
    assert "pipeline settings" in capsys.readouterr().err
    assert run_cli([*args, "--detector", "short", "--refine", "0"]) == 0  # the same: resumes (nothing left)
    # bad values: one line, exit 2
    assert run_cli([*args, "--refine", "-1", "--force"]) == 2
    assert "model.refine must be >= 0, got -1" in capsys.readouterr().err
    cfg.write_text("[model]\nrefines = 1\n")
    assert run_cli([*args, "--force"]) == 2
    assert "unknown key model.refines" in capsys.readouterr().err
