"""Make the README's picture of the web UI: ``facefleet serve`` (CPU, no keys, 127.0.0.1) in a subprocess,
a photo uploaded in headless Debian Chromium (Playwright), the page captured once the 3D viewer has drawn.

    python scripts/render_ui.py PHOTO [--out docs/images/ui_photo.png]

(The README's picture: scikit-image's astronaut saved as a JPEG; the page is scaled to ``--width`` pixels
and 256 colours.)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photo")
    p.add_argument("--out", default="docs/images/ui_photo.png")
    p.add_argument("--width", type=int, default=1000)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facefleet",
                "serve",
                "--no-auth",
                "--devices",
                "cpu",
                "--port",
                str(port),
                "--data-dir",
                tmp,
                "--log-level",
                "warning",
            ]
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.2)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1050})
                page.goto(url + "/ui/")
                page.set_input_files("#ff-photo input[type=file]", args.photo)
                page.locator("#ff-downloads a").nth(2).wait_for(timeout=120_000)
                page.locator("#ff-viewer canvas").wait_for()
                time.sleep(3)  # the viewer loads and frames the mesh
                shot = page.screenshot(full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(60)
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(shot)).convert("RGB")
    im = im.resize((args.width, round(im.height * args.width / im.width)), Image.Resampling.LANCZOS)
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
