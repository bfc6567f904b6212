"""The browser UI of ``facefleet serve``, at ``/ui`` (Gradio, served by the same process as the REST API).

- Photo: upload a photo -> the overlay, the textured 3D face in an orbitable viewer, pose and landmark
  summary, downloads (GLB, JSON, OBJ + MTL + texture zipped).
- Jobs: a folder or bucket path under the server's roots, or uploaded photos or a video -> a job with a
  live progress bar and ETA, its report and results; the key's jobs; cancel.

Every action takes the API key typed at the top of the page and goes through the same
:class:`~facefleet.entrypoints.service.core.Service` as the REST routes (keys, rate limits, quotas,
roots, batching). The page works offline: no analytics, no fonts or scripts from the internet, no run
history kept in the browser (it would hold the key).

Gradio is imported by :func:`mount_ui` only, so ``import facefleet`` never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from facefleet.entrypoints.service.core import Service

UI_PATH = "/ui"


def mount_ui(app: FastAPI, service: Service) -> FastAPI:
    """Mount the UI of ``service`` on the FastAPI ``app`` at :data:`UI_PATH`; returns ``app``."""
    import gradio as gr

    from facefleet.entrypoints.ui.layout import CSS, build_blocks

    blocks = build_blocks(service)
    blocks.queue(default_concurrency_limit=4)
    system = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    theme = gr.themes.Default(font=system, font_mono=["ui-monospace", "Consolas", "monospace"])
    return gr.mount_gradio_app(
        app,
        blocks,
        path=UI_PATH,
        footer_links=[],
        run_history=False,  # it would keep every action's inputs, the API key among them
        ssr_mode=False,
        show_error=False,  # unexpected errors show as "Error", without their text; gr.Error messages show
        max_file_size=int(service.settings.max_upload_mb * 2**20),
        theme=theme,
        css=CSS,
        mcp_server=False,
    )
