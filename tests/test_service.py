"""The REST service over HTTP (FastAPI's TestClient: the real app, its middleware and lifespan) on the
CPU: every route, its errors, results equal to the Reconstructor's, jobs end to end, metrics."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from facefleet.config import JobConfig
from facefleet.config.service import ServiceConfig
from facefleet.entrypoints.service.app import create_app
from facefleet.entrypoints.service.core import Service
from facefleet.entrypoints.service.keys import create_key


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Any:
    tmp = tmp_path_factory.mktemp("service")
    keys = tmp / "keys.json"
    ns = {
        "alice": create_key(keys, "alice"),
        "bob": create_key(keys, "bob"),
        "slow": create_key(keys, "slow", rate_limit=0.2, burst=4),
        "tiny": create_key(keys, "tiny", quota=2),
    }
    root = tmp / "photos"
    (root / "sub").mkdir(parents=True)
    for i, q in enumerate((95, 85, 75)):
        (root / "sub" / f"a{i}.jpg").write_bytes(_jpeg(astronaut, q))
    (tmp / "secret").mkdir()
    (tmp / "secret" / "x.jpg").write_bytes(_jpeg(astronaut))
    os.symlink(tmp / "secret", root / "link_out")
    cfg = JobConfig(
        devices="cpu",
        service=ServiceConfig(
            data_dir=str(tmp / "state"),
            api_keys=str(keys),
            roots=(str(root),),
            ui=False,
            max_request_mb=1.0,
            max_upload_mb=4.0,
            max_pixels=40_000_000,
        ),
    )
    service = Service(cfg, gpu_metrics=False)
    with TestClient(create_app(service)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        yield client, ns, root, tmp, service


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_job(client: TestClient, job_id: str, key: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=_auth(key)).json()
        if job["state"] not in ("queued", "running"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def test_reconstruct_equals_the_reconstructor(server: Any, astronaut: np.ndarray) -> None:
    client, ns, *_ = server
    from facefleet.pipeline import Reconstructor

    jpg = _jpeg(astronaut)
    r = client.post(
        "/v1/reconstruct", content=jpg, headers={**_auth(ns["alice"]), "content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    got = r.json()
    from facefleet.io.decode import decode_image

    want = Reconstructor(device="cpu")([decode_image(jpg, "upload")], sources=["upload"])[0].to_dict()
    assert got["width"] == want["width"] == 512 and got["error"] is None
    assert len(got["faces"]) == len(want["faces"]) == 1
    g, w = got["faces"][0], want["faces"][0]
    assert set(g) == set(w)
    np.testing.assert_allclose(g["landmarks"], w["landmarks"], atol=1e-2)
    np.testing.assert_allclose(g["bbox"], w["bbox"], atol=1e-2)
    for angle in ("yaw", "pitch", "roll"):
        assert abs(g["pose"][angle] - w["pose"][angle]) < 1e-2


def test_reconstruct_multipart_glb_and_overlay(server: Any, astronaut: np.ndarray) -> None:
    client, ns, *_ = server
    jpg = _jpeg(astronaut)
    files = {"image": ("face.jpg", jpg, "image/jpeg")}
    r = client.post("/v1/reconstruct", files=files, headers={"X-API-Key": ns["alice"]})
    assert r.status_code == 200 and r.json()["source"] == "face.jpg"
    glb = client.post("/v1/reconstruct?output=glb", content=jpg, headers=_auth(ns["alice"]))
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    assert glb.content[:4] == b"glTF" and int.from_bytes(glb.content[8:12], "little") == len(glb.content)
    png = client.post("/v1/reconstruct?output=overlay", content=jpg, headers=_auth(ns["alice"]))
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    overlay = np.asarray(Image.open(io.BytesIO(png.content)))
    assert overlay.shape == astronaut.shape and (overlay != astronaut).any()  # something was drawn


@pytest.mark.parametrize(
    "headers, why",
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer nope"}, "invalid API key"),
        ({"Authorization": "Bearer "}, "missing API key"),
        ({"X-API-Key": ""}, "missing API key"),
    ],
)
def test_no_or_wrong_key_is_401(server: Any, headers: dict[str, str], why: str) -> None:
    client, *_ = server
    for method, url in (("post", "/v1/reconstruct"), ("get", "/v1/jobs"), ("post", "/v1/jobs")):
        r = getattr(client, method)(url, headers=headers)
        assert r.status_code == 401 and why in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_rate_limit_and_quota_are_429(server: Any, astronaut: np.ndarray) -> None:
    client, ns, *_ = server
    codes = [client.get("/v1/jobs", headers=_auth(ns["slow"])).status_code for _ in range(6)]
    assert codes[:4] == [200] * 4 and codes[-1] == 429  # burst 4, then 0.2 requests/s
    r = client.get("/v1/jobs", headers=_auth(ns["slow"]))
    assert "rate limit" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    jpg = _jpeg(astronaut)
    codes = [
        client.post("/v1/reconstruct", content=jpg, headers=_auth(ns["tiny"])).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    r = client.post("/v1/jobs", json={"input": "sub"}, headers=_auth(ns["tiny"]))
    assert r.status_code == 429 and "quota" in r.json()["error"]


def test_too_large_is_413(server: Any) -> None:
    client, ns, *_ = server
    big = b"\xff\xd8\xff" + b"0" * (1 << 20)
    r = client.post("/v1/reconstruct", content=big, headers=_auth(ns["alice"]))
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunked() -> Any:  # no Content-Length: stopped while it streams
        for _ in range(40):
            yield b"0" * 65536

    r = client.post("/v1/reconstruct", content=chunked(), headers=_auth(ns["alice"]))
    assert r.status_code == 413


def test_not_an_image_and_bombs_are_422(server: Any) -> None:
    client, ns, *_ = server
    r = client.post("/v1/reconstruct", content=b"%PDF-1.4 hello", headers=_auth(ns["alice"]))
    assert r.status_code == 422 and "not an image" in r.json()["error"]
    r = client.post("/v1/reconstruct", content=b"", headers=_auth(ns["alice"]))
    assert r.status_code == 422 and "empty" in r.json()["error"]
    # a PNG whose header declares 30000 x 30000 pixels: refused from the header, never decoded
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    r = client.post("/v1/reconstruct", content=bomb, headers=_auth(ns["alice"]))
    assert r.status_code == 422 and "decompression bomb" in r.json()["error"]
    r = client.post("/v1/reconstruct?output=mesh", content=bomb, headers=_auth(ns["alice"]))
    assert r.status_code == 422 and "output" in r.json()["error"]


def test_paths_outside_the_roots_are_403(server: Any) -> None:
    client, ns, root, tmp, _ = server
    for spec in (
        str(root / ".." / "secret"),
        str(root / "link_out"),
        str(root / "link_out" / "x.jpg"),
        "/etc",
        str(tmp / "secret"),
    ):
        r = client.post("/v1/jobs", json={"input": spec}, headers=_auth(ns["alice"]))
        assert r.status_code == 403 and "outside" in r.json()["error"], spec
    r = client.post("/v1/jobs", json={"input": str(root / "missing")}, headers=_auth(ns["alice"]))
    assert r.status_code == 404


def test_path_job_runs_to_completion_with_results(server: Any) -> None:
    client, ns, root, *_ = server
    r = client.post(
        "/v1/jobs", json={"input": str(root / "sub"), "formats": ["json"]}, headers=_auth(ns["alice"])
    )
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"], ns["alice"])
    assert job["state"] == "completed" and job["progress"] == 1.0, job
    assert job["images"] == 3 and job["faces"] == 3 and job["failed"] == 0
    files = client.get(f"/v1/jobs/{job['id']}/results", headers=_auth(ns["alice"])).json()["files"]
    paths = {f["path"] for f in files}
    assert {"files/a0.jpg.json", "files/a1.jpg.json", "files/a2.jpg.json", "report.json", "run.json"} <= paths
    assert any(p.startswith("manifest/") and p.endswith(".parquet") for p in paths)
    one = client.get(f"/v1/jobs/{job['id']}/files/files/a1.jpg.json", headers=_auth(ns["alice"]))
    assert one.status_code == 200 and len(one.json()["faces"]) == 1
    # another key sees no such job; a path out of the outputs is refused
    assert client.get(f"/v1/jobs/{job['id']}", headers=_auth(ns["bob"])).status_code == 404
    r = client.get(f"/v1/jobs/{job['id']}/files/..%2F..%2Fservice.sqlite", headers=_auth(ns["alice"]))
    assert r.status_code in (403, 404)
    assert job["id"] in {j["id"] for j in client.get("/v1/jobs", headers=_auth(ns["alice"])).json()["jobs"]}


def test_upload_job_and_bad_options(server: Any, astronaut: np.ndarray) -> None:
    client, ns, *_ = server
    files = [("files", (f"p{i}.jpg", _jpeg(astronaut, 90 - i), "image/jpeg")) for i in range(2)]
    files.append(("files", ("notes.txt", b"not a photo", "text/plain")))
    r = client.post("/v1/jobs", files=files, data={"formats": "json,glb"}, headers=_auth(ns["alice"]))
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"], ns["alice"])
    assert job["state"] == "completed" and job["images"] == 2 and job["faces"] == 2, job
    paths = {
        f["path"]
        for f in client.get(f"/v1/jobs/{job['id']}/results", headers=_auth(ns["alice"])).json()["files"]
    }
    assert "files/00000_p0.jpg.glb" in paths and "files/00001_p1.jpg.json" in paths
    r = client.post("/v1/jobs", files=files[:1], data={"formats": "stl"}, headers=_auth(ns["alice"]))
    assert r.status_code == 422 and "formats" in r.json()["error"]
    r = client.post("/v1/jobs", content=b"x", headers={**_auth(ns["alice"]), "content-type": "text/plain"})
    assert r.status_code == 415


def test_metrics_count_requests_images_and_jobs(server: Any) -> None:
    client, *_ = server
    text = client.get("/metrics").text
    assert (
        'facefleet_http_request_duration_seconds_count{method="POST",route="/v1/reconstruct",status="200"}'
        in text
    )
    assert 'route="/v1/jobs/{job_id}"' in text  # the route's template, never an id
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    assert samples['facefleet_images_total{source="sync"}'] >= 3
    assert samples['facefleet_images_total{source="jobs"}'] >= 5  # the jobs' units, from the engine's events
    assert samples['facefleet_jobs{state="completed"}'] >= 2
    assert samples["facefleet_batch_size_count"] >= 3
    assert client.get("/healthz").json()["status"] == "ok"


def test_keys_are_stored_hashed(server: Any) -> None:
    _, ns, _, tmp, _ = server
    text = Path(tmp / "keys.json").read_text()
    assert all(k not in text for k in ns.values()) and "sha256" in text


def test_results_are_paged(server: Any) -> None:
    client, ns, *_ = server
    jobs = client.get("/v1/jobs", headers=_auth(ns["alice"])).json()["jobs"]
    done = next(j for j in jobs if j["state"] == "completed")
    url = f"/v1/jobs/{done['id']}/results"
    whole = client.get(url, headers=_auth(ns["alice"])).json()
    page = client.get(url + "?offset=1&limit=2", headers=_auth(ns["alice"])).json()
    assert page["total"] == whole["total"] == len(whole["files"]) > 3
    assert page["files"] == whole["files"][1:3]
    assert client.get(url + "?limit=0", headers=_auth(ns["alice"])).status_code == 422


def test_the_job_list_is_paged_and_filtered_by_state(server: Any) -> None:
    client, ns, *_ = server
    h = _auth(ns["alice"])
    whole = client.get("/v1/jobs?limit=1000", headers=h).json()
    assert whole["total"] == len(whole["jobs"]) >= 2 and whole["offset"] == 0
    page = client.get("/v1/jobs?offset=1&limit=1", headers=h).json()
    assert page["total"] == whole["total"] and page["jobs"] == whole["jobs"][1:2]  # newest first
    done = client.get("/v1/jobs?state=completed,failed", headers=h).json()
    assert done["jobs"] and {j["state"] for j in done["jobs"]} <= {"completed", "failed"}
    assert done["total"] == sum(j["state"] in ("completed", "failed") for j in whole["jobs"])
    bad = client.get("/v1/jobs?state=finished", headers=h)
    assert bad.status_code == 422 and "finished" in bad.json()["error"]
    assert client.get("/v1/jobs?limit=5000", headers=h).status_code == 422
    assert client.get("/v1/jobs", headers=_auth(ns["bob"])).json()["total"] == 0  # only the key's own


@pytest.mark.shared_data
def test_video_job_from_an_upload(server: Any, shared_data: Path) -> None:
    pytest.importorskip("av")
    import pyarrow.parquet as pq

    client, ns, *_ = server
    clip = shared_data / "videos" / "liveportrait_d12.mp4"
    files = [("files", (clip.name, clip.read_bytes(), "video/mp4"))]
    r = client.post(
        "/v1/jobs", files=files, data={"kind": "video", "formats": "parquet"}, headers=_auth(ns["alice"])
    )
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"], ns["alice"], timeout=300)
    assert job["state"] == "completed" and job["kind"] == "video" and job["images"] == 183, job
    paths = {f["path"] for f in client.get(job["results"], headers=_auth(ns["alice"])).json()["files"]}
    name = next(
        p
        for p in paths
        if p.endswith("liveportrait_d12.mp4.parquet") or p.endswith("liveportrait_d12.parquet")
    )
    got = client.get(f"/v1/jobs/{job['id']}/files/{name}", headers=_auth(ns["alice"]))
    rows = pq.read_table(io.BytesIO(got.content))
    assert rows.num_rows >= 150 and set(rows.column("frame").to_pylist()) <= set(range(183))
    metrics = client.get("/metrics").text  # the video's frames count as the job's images
    video = [
        line for line in metrics.splitlines() if line.startswith('facefleet_images_total{source="jobs"}')
    ]
    assert float(video[0].split()[1]) >= 183


@pytest.mark.shared_data
def test_a_video_job_reports_progress_and_cancels(tmp_path: Path, shared_data: Path) -> None:
    """A running video job's record shows frames done of the exact total; DELETE stops its workers at once
    (not after they use up their restarts), and the record says cancelled with the frames done so far."""
    pytest.importorskip("av")
    from facefleet.config import CpuConfig, VideoConfig

    cfg = JobConfig(
        devices="cpu",
        cpu=CpuConfig(workers=1, threads=1, batch_size=2),  # a worker holds 2 chunks at a time
        video=VideoConfig(chunk_frames=20, overlap=2),  # 10 chunks
        service=ServiceConfig(data_dir=str(tmp_path / "state"), auth=False, ui=False),
    )
    clip = shared_data / "videos" / "liveportrait_d12.mp4"
    with TestClient(create_app(Service(cfg, gpu_metrics=False))) as client:
        files = [("files", (clip.name, clip.read_bytes(), "video/mp4"))]
        r = client.post("/v1/jobs", files=files, data={"kind": "video", "formats": "parquet"})
        assert r.status_code == 202, r.text
        url = f"/v1/jobs/{r.json()['id']}"
        deadline = time.monotonic() + 120
        while (job := client.get(url).json())["done"] == 0:
            assert job["state"] == "running" and time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["total"] == 183 and 0 < job["done"] < 183 and job["faces"] > 0, job
        t0 = time.monotonic()
        gone = client.delete(url).json()
        assert gone["state"] == "cancelled" and 0 < gone["done"] == gone["images"] < 183, gone
        assert time.monotonic() - t0 < 20
        assert client.get(url).json()["state"] == "cancelled"
        metrics = client.get("/metrics").text  # frames counted as their chunks were done
        jobs = next(m for m in metrics.splitlines() if m.startswith('facefleet_images_total{source="jobs"}'))
        assert 0 < float(jobs.split()[1]) < 183


@pytest.mark.shared_data
def test_a_video_job_drained_by_a_shutdown_resumes_at_the_next_start(
    tmp_path: Path, shared_data: Path
) -> None:
    """A graceful shutdown drains a running video job (its workers finish the chunks they hold) and
    leaves it queued; the next server on the same data folder finishes it, every frame once."""
    pytest.importorskip("av")
    import pyarrow.parquet as pq

    from facefleet.config import CpuConfig, VideoConfig
    from facefleet.entrypoints.service.store import ServiceStore

    cfg = JobConfig(
        devices="cpu",
        cpu=CpuConfig(workers=1, threads=1, batch_size=2),
        video=VideoConfig(chunk_frames=10, overlap=2),  # 19 chunks, 2 held at a time
        service=ServiceConfig(data_dir=str(tmp_path / "state"), auth=False, ui=False, shutdown_grace_s=30),
    )
    clip = shared_data / "videos" / "liveportrait_d12.mp4"
    with TestClient(create_app(Service(cfg, gpu_metrics=False))) as client:
        files = [("files", (clip.name, clip.read_bytes(), "video/mp4"))]
        job = client.post("/v1/jobs", files=files, data={"kind": "video", "formats": "parquet"}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}").json()["done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # the server has shut down (the client's exit): drained, not failed nor finished
    store = ServiceStore(tmp_path / "state" / "service.sqlite")
    before = store.get(job["id"])
    store.close()
    assert before is not None and before.state == "queued" and 0 < before.done < 183, before
    with TestClient(create_app(Service(cfg, gpu_metrics=False))) as client:
        got = _wait_job(client, job["id"], "", timeout=180)
        assert got["state"] == "completed" and got["done"] == got["total"] == 183, got
        name = next(
            f["path"] for f in client.get(got["results"]).json()["files"] if f["path"].endswith(".parquet")
        )
        rows = pq.read_table(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/files/{name}").content))
    frames = rows.column("frame").to_pylist()
    assert sorted(frames) == list(range(183))  # one face a frame, each frame once


def test_jobs_on_the_networked_queue_get_their_own_schema(tmp_path: Path, astronaut: np.ndarray) -> None:
    """With [queue] url on PostgreSQL, each job has its schema of it (shown for workers on other hosts)."""
    import psycopg

    from facefleet.config import QueueConfig
    from facefleet.entrypoints.service.jobs import job_queue_url

    assert job_queue_url("postgresql://u:pw@h/db?schema=ff&retry_s=5", "ab12").endswith(
        "schema=ff_jab12&retry_s=5"
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(_jpeg(astronaut))
    base = "postgresql://127.0.0.1:5432/test?schema=svc_test"
    cfg = JobConfig(
        devices="cpu",
        queue=QueueConfig(url=base),
        service=ServiceConfig(
            data_dir=str(tmp_path / "state"), auth=False, ui=False, roots=(str(tmp_path / "in"),)
        ),
    )
    with TestClient(create_app(Service(cfg, gpu_metrics=False))) as client:
        r = client.post("/v1/jobs", json={"input": str(tmp_path / "in")})
        assert r.status_code == 202, r.text
        job = _wait_job(client, r.json()["id"], "")
    assert job["state"] == "completed" and job["images"] == 1, job
    assert job["queue"] == f"postgresql://127.0.0.1:5432/test?schema=svc_test_j{job['id']}"
    with psycopg.connect("postgresql://127.0.0.1:5432/test") as conn:
        schema = f"svc_test_j{job['id']}"
        n = conn.execute(f'SELECT count(*) FROM "{schema}".units WHERE state = %s', ("done",)).fetchone()
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert n is not None and n[0] == 1


def test_delete_cancels_a_running_job(server: Any, astronaut: np.ndarray) -> None:
    client, ns, root, *_ = server
    many = root / "many"
    many.mkdir()
    for i in range(60):
        (many / f"m{i:02d}.jpg").write_bytes(_jpeg(np.roll(astronaut, i, axis=0)))
    r = client.post("/v1/jobs", json={"input": str(many)}, headers=_auth(ns["alice"]))
    assert r.status_code == 202
    gone = client.delete(f"/v1/jobs/{r.json()['id']}", headers=_auth(ns["alice"]))
    assert gone.status_code == 200 and gone.json()["state"] == "cancelled", gone.json()
    job = client.get(f"/v1/jobs/{r.json()['id']}", headers=_auth(ns["alice"])).json()
    assert job["state"] == "cancelled" and job["done"] < 60
    assert client.delete(f"/v1/jobs/{r.json()['id']}", headers=_auth(ns["bob"])).status_code == 404


def test_a_second_server_on_the_same_data_dir_is_refused(server: Any) -> None:
    *_, service = server
    with pytest.raises(ValueError, match="another facefleet serve is using"):
        Service(service.config, gpu_metrics=False)
