"""External workers (``facefleet worker --queue URL --out DIR``): no coordinator, their own device
plan, the run's settings from the queue; three "hosts" on one PostgreSQL queue survive one host
killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefleet.engine.layout import publish_run
from facefleet.engine.manifest import read_manifest
from facefleet.engine.queue import enqueue_listing, open_queue

PG_SERVER = os.environ.get("FACEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TESTS = Path(__file__).parent


def _crops(folder: Path, n: int, size: int = 192) -> list[str]:
    """``n`` JPEG crops of the astronaut portrait around her face (real photos: real faces)."""
    from skimage import data

    img = data.astronaut()
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        y, x = int(rng.integers(0, 60)), int(rng.integers(100, 200))
        path = folder / f"a{k:02d}.jpg"
        Image.fromarray(img[y : y + size, x : x + size]).save(path, quality=90)
        out.append(str(path))
    return out


def _host(
    url: str, out: Path, scratch: Path, name: str, config: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """One "host": its own process group, scratch folder and TMPDIR."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "facefleet.engine.worker.cli", "--queue", url, "--out", str(out)]
    cmd += ["--devices", "cpu", "--name", name, "--config", str(config)]
    return subprocess.Popen(
        cmd,
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _config(path: Path, batch: int = 2) -> Path:
    path.write_text(f"[cpu]\nworkers = 1\nthreads = 1\nbatch_size = {batch}\n")
    return path


def _exactly_once(out: Path, sources: list[str]) -> None:
    rows = read_manifest(out).to_pylist()
    units: dict[str, set[str]] = defaultdict(set)
    faces: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        units[r["source"]].add(r["unit"])
        faces[r["source"]].append(r["face_index"])
    assert sorted(units) == sorted(sources)  # every input, nothing else
    assert all(len(u) == 1 for u in units.values())  # each in one unit's file
    assert all(len(f) == len(set(f)) for f in faces.values())  # no face row twice


def test_external_worker_needs_no_coordinator(tmp_path: Path) -> None:
    """A worker started on its own reads the run's settings from the queue, works until the listing
    is done and no unit is left, and exits 0; files are named as any run names them."""
    sources = _crops(tmp_path / "in", 6, size=64)
    out = tmp_path / "out"
    out.mkdir()
    url = str(out / "_queue.sqlite")
    with open_queue(url) as q:
        rec = {"input": str(tmp_path / "in"), "formats": ["json"], "lease_seconds": 5, "max_attempts": 3}
        publish_run(q, {**rec, "reconstructor": "test_engine_support:FakeReconstructor"})
        enqueue_listing(q, sources, 2)
    p = _host(url, out, tmp_path / "h0", "h0", _config(tmp_path / "cfg.toml"))
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, log
    _exactly_once(out, sources)
    assert sorted(x.name for x in (out / "files").iterdir()) == sorted(
        Path(s).name + ".json" for s in sources
    )
    with open_queue(url) as q:
        assert q.counts()["done"]["units"] == 3
        assert {w["name"] for w in q.workers()} == {"h0/cpu0"}


def test_a_file_that_kills_its_worker_is_quarantined_without_a_coordinator(tmp_path: Path) -> None:
    """No coordinator reaps poison units here: the host does (split down to the one file, failed with
    an error row), restarts its crashed worker, and finishes the rest."""
    sources = _crops(tmp_path / "in", 4, size=48)
    out = tmp_path / "out"
    out.mkdir()
    url = str(out / "_queue.sqlite")
    with open_queue(url) as q:
        rec = {"input": str(tmp_path / "in"), "formats": [], "lease_seconds": 5, "max_attempts": 1}
        publish_run(q, {**rec, "reconstructor": "test_engine_support:FakeReconstructor"})
        enqueue_listing(q, sources, 2)
    env = {"FACEFLEET_FAKE_CRASH": "a01.jpg"}
    p = _host(url, out, tmp_path / "h0", "h0", _config(tmp_path / "cfg.toml"), env)
    log, _ = p.communicate(timeout=240)
    assert p.returncode == 0, log
    _exactly_once(out, sources)
    errors = {r["source"]: r["error"] for r in read_manifest(out).to_pylist()}
    assert [s for s, e in errors.items() if e] == [sources[1]] and "unit failed after 1 attempts" in errors[
        sources[1]
    ]
    assert "quarantined 1 image(s)" in log


def test_a_run_with_the_external_executor_waits_for_external_workers(tmp_path: Path) -> None:
    """``run(..., executor="external")`` lists the input and starts no worker; a ``facefleet worker``
    started beside it (any host) does the work with the run's settings, and both end when the queue
    is done: the run's summary counts every image, the files are named as a local run names them."""
    import threading

    from facefleet.engine import run

    sources = _crops(tmp_path / "in", 4)
    out = tmp_path / "out"
    logs: list[str] = []

    def host() -> None:
        while not (out / "run.json").exists():
            time.sleep(0.05)
        p = _host(str(out / "_queue.sqlite"), out, tmp_path / "h0", "h0", _config(tmp_path / "cfg.toml"))
        logs.append(p.communicate(timeout=180)[0])
        logs.append(f"rc {p.returncode}")

    t = threading.Thread(target=host)
    t.start()
    summary = run(str(tmp_path / "in"), out, devices="cpu", formats=["json"], executor="external", quiet=True)
    t.join()
    assert logs[-1] == "rc 0", logs
    assert summary.images == 4 and summary.failed == 0
    _exactly_once(out, sources)
    assert sorted(p.name for p in (out / "files").iterdir()) == [f"a{k:02d}.jpg.json" for k in range(4)]


def test_a_launcher_rank_takes_its_own_device() -> None:
    """Under torchrun (LOCAL_RANK) or srun (SLURM_LOCALID) each process takes its rank's GPU, or the CPU
    on a host without that GPU, instead of every GPU of the host."""
    from facefleet.engine.worker.cli import launcher_slot
    from facefleet.platforms import cuda_device_count

    assert launcher_slot({}) == (None, "")
    devices, suffix = launcher_slot({"LOCAL_RANK": "1"})
    assert suffix == "-r1" and devices == ("1" if cuda_device_count() > 1 else "cpu")
    assert launcher_slot({"SLURM_LOCALID": "0"})[1] == "-r0"


def test_bad_queue_or_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from facefleet.engine.worker.cli import worker_cli

    (tmp_path / "out").mkdir()
    assert worker_cli(["--queue", str(tmp_path / "out" / "q.sqlite"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert worker_cli(["--queue", "redis://x", "--out", str(tmp_path)]) == 2
    assert "unknown queue URL scheme" in capsys.readouterr().err


@pytest.fixture
def pg_queue_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_SERVER, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL at {PG_SERVER} does not answer: {e}")
    schema = f"ext_{uuid.uuid4().hex[:12]}"
    url = f"{PG_SERVER}?schema={schema}&retry_s=10"
    yield url
    from facefleet.engine.queue.postgres import PostgresQueue

    q = PostgresQueue(url)
    q.drop_schema()
    q.close()


def _leased_by(url: str, host: str) -> int:
    import psycopg

    schema = url.split("schema=")[1].split("&")[0]
    with psycopg.connect(PG_SERVER) as c:
        (n,) = c.execute(
            f"SELECT count(*) FROM {schema}.units WHERE state = 'leased' AND owner LIKE %s", (f"%:{host}/%",)
        ).fetchone()  # type: ignore[misc]
    return int(n)


def test_three_hosts_on_postgres_one_killed_mid_run(tmp_path: Path, pg_queue_url: str) -> None:
    """Three external worker "hosts" (separate process groups, scratch folders and TMPDIRs; OUT shared
    as on a network file system) run the real pipeline on CPU over one PostgreSQL queue. One host is
    killed with SIGKILL while it holds a unit: its lease expires, another host redoes the unit, the
    other two exit 0, and every input is in the manifest exactly once."""
    sources = _crops(tmp_path / "in", 16)
    out = tmp_path / "out"
    out.mkdir()
    url = pg_queue_url
    with open_queue(url) as q:
        record = {"input": str(tmp_path / "in"), "formats": ["json"], "lease_seconds": 3, "max_attempts": 3}
        publish_run(q, {**record, "model": {"detector": "short", "refine": 0}})
        enqueue_listing(q, sources, 2)
    cfg = _config(tmp_path / "cfg.toml", batch=2)
    # h1 starts first and is killed once it holds a lease; the others start then, so h1 cannot have
    # finished the run before its kill (as it could when all three raced for 8 small units)
    hosts = {"h1": _host(url, out, tmp_path / "h1", "h1", cfg)}
    t0 = time.monotonic()
    while _leased_by(url, "h1") == 0:
        assert hosts["h1"].poll() is None, hosts["h1"].communicate()[0]
        assert time.monotonic() - t0 < 90, "host h1 never claimed a unit"
        time.sleep(0.05)
    hosts.update({name: _host(url, out, tmp_path / name, name, cfg) for name in ("h0", "h2")})
    os.killpg(hosts["h1"].pid, signal.SIGKILL)
    hosts["h1"].wait(10)
    logs = {}
    for name in ("h0", "h2"):
        logs[name], _ = hosts[name].communicate(timeout=180)
        assert hosts[name].returncode == 0, logs[name]
    _exactly_once(out, sources)
    with open_queue(url) as q:
        c = q.counts()
        assert c["done"]["units"] == 8 and c["pending"]["units"] == 0 and c["leased"]["units"] == 0
        names = {w["name"] for w in q.workers()}
    assert names == {"h0/cpu0", "h1/cpu0", "h2/cpu0"}
    rows = read_manifest(out).to_pylist()
    assert (
        all(r["error"] is None for r in rows) and sum(r["face_index"] >= 0 for r in rows) >= 8
    )  # real faces
