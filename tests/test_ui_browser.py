"""The browser UI at /ui in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) against ``facefleet serve``'s app on 127.0.0.1 (uvicorn, CPU, API keys on).

A user uploads a photo and sees the overlay, the textured face drawn in the 3D viewer (its pixels, not
a blank canvas) and the pose table, and downloads GLB, JSON and OBJ files that parse; submits a small
job and watches its progress reach 100 % and ``completed``, then gets its results; cancels a job; a
wrong key gets a clear message. The page is loaded with every request outside 127.0.0.1 refused: it
works offline.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip("gradio", reason="gradio is not installed (pip install facefleet[serve])")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install facefleet[serve])")

from facefleet.config import JobConfig  # noqa: E402
from facefleet.config.service import ServiceConfig  # noqa: E402
from facefleet.entrypoints.service.app import create_app  # noqa: E402
from facefleet.entrypoints.service.core import Service  # noqa: E402
from facefleet.entrypoints.service.keys import create_key  # noqa: E402

ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--use-angle=swiftshader",  # WebGL without a GPU
    "--enable-unsafe-swiftshader",
]
SHARED_PHOTO = "3ddfa_v2_trump_hillary.jpg"  # two faces
WAIT_MS = 90_000


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """A real photo: two faces from ../shared/data when present, else scikit-image's astronaut."""
    data = os.environ.get("FACEFLEET_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    shared = Path(data) / "images" / SHARED_PHOTO
    if shared.is_file():
        return shared
    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Iterator[dict[str, Any]]:
    """The app on a free port of 127.0.0.1 (a uvicorn thread), warm; its URL, a key and a photo root."""
    tmp = tmp_path_factory.mktemp("ui")
    keys = tmp / "keys.json"
    key = create_key(keys, "alice")
    root = tmp / "photos"
    root.mkdir()
    for i, q in enumerate((95, 85, 75)):
        Image.fromarray(astronaut).save(root / f"a{i}.jpg", quality=q)
    cfg = JobConfig(
        devices="cpu",
        service=ServiceConfig(data_dir=str(tmp / "state"), api_keys=str(keys), roots=(str(root),)),
    )
    app = create_app(Service(cfg, gpu_metrics=False))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not get ready"
        time.sleep(0.2)
    yield {"url": url, "key": key, "root": root}
    srv.should_exit = True
    thread.join(60)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: dict[str, Any]) -> Iterator[Any]:
    """The UI in a fresh browser context; any request outside 127.0.0.1 is refused and fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.goto(f"{server['url']}/ui/")
    pg.wait_for_selector("#ff-key input")
    yield pg
    context.close()
    assert not outside, f"the page asked for resources off this host: {outside}"


def test_photo_overlay_viewer_and_downloads(page: Any, server: dict[str, Any], photo: Path) -> None:
    page.fill("#ff-key input", server["key"])
    page.set_input_files("#ff-photo input[type=file]", str(photo))
    links = page.locator("#ff-downloads a")
    links.nth(2).wait_for()
    names = [a.get_attribute("download") for a in links.all()]
    stem = photo.stem
    assert names == [f"{stem}.glb", f"{stem}.json", f"{stem}_obj.zip"]
    files = {name: _fetch(page, a.get_attribute("href")) for name, a in zip(names, links.all())}

    # the per-image JSON of the data contract
    result = json.loads(files[f"{stem}.json"])
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert (result["height"], result["width"]) == original.shape[:2] and result["error"] is None
    faces = result["faces"]
    assert faces and all(len(f["landmarks"]) == 468 for f in faces)
    # a GLB (magic, declared length) and one OBJ + MTL + texture per face
    glb = files[f"{stem}.glb"]
    assert glb[:4] == b"glTF" and int.from_bytes(glb[8:12], "little") == len(glb)
    with zipfile.ZipFile(io.BytesIO(files[f"{stem}_obj.zip"])) as z:
        got = set(z.namelist())
        for k in range(len(faces)):
            assert {f"{stem}_face{k}.obj", f"{stem}_face{k}.mtl", f"{stem}_face{k}.png"} <= got
        assert b"mtllib" in z.read(f"{stem}_face0.obj")

    # pose and landmarks in the table, one row per face
    table = page.locator("#ff-faces").inner_text()
    for f in faces:
        assert f"{f['pose']['yaw']:.1f}" in table and f"{f['pose']['roll']:.1f}" in table
    assert table.count("468") >= len(faces)
    assert page.locator("#ff-photo-note").inner_text().startswith(f"{photo.name}: {len(faces)} face")

    # the overlay: the whole photo, with the mesh drawn inside each face's box and little changed outside
    src = page.locator("#ff-overlay img").get_attribute("src")
    overlay = np.asarray(Image.open(io.BytesIO(_fetch(page, src))).convert("RGB")).astype(float)
    assert overlay.shape == original.shape
    diff = np.abs(overlay - original).mean(axis=2)
    inside = np.zeros(diff.shape, bool)
    for f in faces:
        x0, y0, x1, y1 = (int(v) for v in f["bbox"])
        inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    assert diff[inside].mean() > 3 * diff[~inside].mean() + 2

    # the 3D viewer draws the textured face: its canvas is not a flat background
    canvas = page.locator("#ff-viewer canvas")
    canvas.wait_for()
    deadline = time.monotonic() + 30
    while True:
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
        body = shot[48:-8, 8:-8]  # below the label and buttons over the canvas
        background = np.array([31, 31, 36])  # the viewer's clear colour (0.12, 0.12, 0.14)
        drawn = (np.abs(body - background).sum(axis=2) > 40).mean()
        skin = ((body[..., 0] > body[..., 2] + 20) & (body[..., 0] > 80)).mean()
        if drawn > 0.03 and skin > 0.02 and body.std() > 10:
            break
        assert time.monotonic() < deadline, (drawn, skin, body.std())
        time.sleep(0.5)

    # a download opens in the browser as a file
    with page.expect_download() as info:
        links.nth(1).click()
    assert json.loads(Path(info.value.path()).read_bytes())["faces"] == faces
    # the key is kept neither in the browser's storage nor in the page
    stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}])")
    assert server["key"] not in stored and server["key"] not in page.content()


def test_job_progress_to_completed_with_results(page: Any, server: dict[str, Any], photo: Path) -> None:
    page.fill("#ff-key input", server["key"])
    page.get_by_role("tab", name="Jobs").click()
    uploads = sorted(server["root"].glob("*.jpg"))[:2]
    page.set_input_files("#ff-uploads input[type=file]", [str(p) for p in uploads])
    page.locator("#ff-uploads a").nth(1).wait_for()  # both uploaded
    page.locator("#ff-formats").get_by_label("glb").check()
    page.click("#ff-start")
    job = page.locator("#ff-progress .ff-job")
    job.wait_for()
    states, values = [], []
    deadline = time.monotonic() + 120
    while True:
        state = job.get_attribute("data-state")
        value = page.locator("#ff-progress progress").get_attribute("value")
        if not states or states[-1] != state:
            states.append(state)
        values.append(float(value) if value is not None else None)
        if state in ("completed", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, (states, job.inner_text())
        time.sleep(0.2)
    assert states[0] == "running" and states[-1] == "completed", (states, job.inner_text())
    assert values[-1] == 1.0 and "100 %" in job.inner_text() and "2/2 images" in job.inner_text()
    known = [v for v in values if v is not None]
    assert known == sorted(known)  # progress never goes back
    job_id = job.get_attribute("data-job")
    assert page.locator("#ff-job-id input").input_value() == job_id

    results = page.locator("#ff-results a")
    results.first.wait_for()
    names = [a.get_attribute("download") for a in results.all()]
    assert names[0] == f"job-{job_id}.zip" and "report.json" in names and "report.html" in names
    with zipfile.ZipFile(io.BytesIO(_fetch(page, results.first.get_attribute("href")))) as z:
        got = set(z.namelist())
    for i, p in enumerate(uploads):
        assert {f"files/{i:05d}_{p.name}.json", f"files/{i:05d}_{p.name}.glb"} <= got
    summary = "".join(page.locator("#ff-summary").inner_text().split())  # the job and its run report
    assert '"state":"completed"' in summary and '"images":2' in summary and '"images_per_s"' in summary
    table = page.locator("#ff-jobs").inner_text()
    assert job_id in table and "completed" in table


def test_cancel_a_job(page: Any, server: dict[str, Any]) -> None:
    page.fill("#ff-key input", server["key"])
    page.get_by_role("tab", name="Jobs").click()
    page.fill("#ff-path input", str(server["root"]))
    page.click("#ff-start")
    job = page.locator("#ff-progress .ff-job")
    job.wait_for()
    page.click("#ff-cancel")
    page.locator('#ff-progress .ff-job[data-state="cancelled"]').wait_for(timeout=60_000)
    page.click("#ff-refresh")
    jobs = sync_api.expect(page.locator("#ff-jobs"))
    jobs.to_contain_text(job.get_attribute("data-job") or "?")
    jobs.to_contain_text("cancelled")


def test_wrong_or_missing_key_shows_an_error(page: Any, server: dict[str, Any], photo: Path) -> None:
    page.fill("#ff-key input", "ff-not-a-real-key")
    page.set_input_files("#ff-photo input[type=file]", str(photo))
    toast = page.locator(".toast-body").first
    toast.wait_for()
    text = toast.inner_text()
    assert "Invalid API key" in text and "Traceback" not in text and "ff-not-a-real-key" not in text
    assert page.locator("#ff-downloads a").count() == 0
    page.get_by_role("tab", name="Jobs").click()
    page.fill("#ff-key input", "")
    page.click("#ff-refresh")
    page.get_by_text("Enter your API key").first.wait_for()
    assert server["key"] not in page.content()


def _fetch(page: Any, href: str | None) -> bytes:
    """A file the page links to, fetched with the page's cookies."""
    assert href
    r = page.request.get(href)
    assert r.ok, (href, r.status)
    return bytes(r.body())
