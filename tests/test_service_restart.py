"""``facefleet serve`` as users run it (a process on 127.0.0.1): a job survives the server's SIGKILL, and
SIGTERM drains it (the server exits 0 within its grace time, the job recorded as queued). Either way
the restarted server (same data folder) resumes the job, and its manifest holds every input once."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")


N = 200  # photos of the job: the stop lands mid-job (about 60 are done by then on 2 cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"X-API-Key": key, "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def _serve(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "facefleet", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # the process owns it
        start_new_session=True,
    )


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready: {log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_job_survives_the_server_stopping(tmp_path: Path, astronaut: np.ndarray, stop: str) -> None:
    from facefleet.entrypoints.service.keys import create_key

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(N):  # distinct files: a face each, slightly different
        buf = io.BytesIO()
        Image.fromarray(np.roll(astronaut, i, axis=1)).save(buf, "JPEG", quality=90)
        (photos / f"p{i:02d}.jpg").write_bytes(buf.getvalue())
    key = create_key(tmp_path / "keys.json", "ci")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "state"),
        "--api-keys",
        str(tmp_path / "keys.json"),
        "--roots",
        str(photos),
        "--devices",
        "cpu",
        "--workers",
        "1",
        "--unit-size",
        "4",
        "--batch-size",  # a worker holds about 5 batches (read queue, decode, network, write): few units,
        "2",  # so that a drain leaves most of the job for the next start
        "--no-ui",
        "--shutdown-grace-s",
        "5",
        "--lease-seconds",  # the killed workers' units return to the queue 5 s after their last heartbeat
        "5",
    ]
    log = tmp_path / "server.log"
    server = _serve(args, log)
    try:
        _wait_ready(base, server, log)
        job = _call(base + "/v1/jobs", key, {"input": str(photos), "formats": ["json"]})
        deadline = time.monotonic() + 120
        while _call(f"{base}/v1/jobs/{job['id']}", key)["done"] < 4:  # some units done, most not
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        if stop == "SIGKILL":
            os.killpg(server.pid, signal.SIGKILL)  # the server and its job's worker processes
            server.wait(10)
            before = _call_offline(tmp_path, job["id"])
            assert before["state"] == "running" and before["done"] < N
        else:  # graceful: workers finish the units they hold, the job is left for the next start
            server.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal once shut down: exit by SIGTERM, after the drain
            assert server.wait(60) in (0, -signal.SIGTERM), log.read_text()[-3000:]
            assert "Application shutdown complete" in log.read_text()
            before = _call_offline(tmp_path, job["id"])
            assert before["state"] == "queued" and before["done"] < N, before

        server = _serve(args, log)
        _wait_ready(base, server, log)
        deadline = time.monotonic() + 240
        while (got := _call(f"{base}/v1/jobs/{job['id']}", key))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert got["state"] == "completed" and got["done"] == N and got["failed"] == 0, got
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    import pyarrow.parquet as pq

    out = tmp_path / "state" / "jobs" / job["id"] / "out"
    sources = pq.read_table(out / "manifest", columns=["source"]).column("source").to_pylist()
    assert sorted(sources) == sorted(str(p) for p in photos.glob("*.jpg"))  # each exactly once
    assert len(list((out / "files").glob("*.json"))) == N


def _call_offline(tmp: Path, job_id: str) -> dict[str, Any]:
    from facefleet.entrypoints.service.store import ServiceStore

    store = ServiceStore(tmp / "state" / "service.sqlite")
    try:
        record = store.get(job_id)
        assert record is not None
        return {"state": record.state, "done": record.done}
    finally:
        store.close()
