"""The UI's Gradio Blocks: an API key field, a photo tab and a jobs tab, wired to a service.

Every action authenticates the key it is given (the same key ring, rate limit and quota as the REST
API) and turns the service's refusals into a short message in the page (``gr.Error``), never a stack
trace. The key is an input of each action only: it is not stored, logged or sent back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from facefleet.entrypoints.service.keys import ApiKey
from facefleet.entrypoints.service.store import FINAL
from facefleet.entrypoints.service.uploads import HttpError
from facefleet.entrypoints.ui import jobs as uijobs
from facefleet.entrypoints.ui.photo import FACE_COLUMNS, reconstruct_photo

if TYPE_CHECKING:
    from facefleet.entrypoints.service.core import Service

MY_JOBS = 50  # jobs the "My jobs" table shows, newest first

CSS = """
.ff-job progress { width: 100%; height: 1.1rem; }
.ff-error { color: var(--error-text-color); margin-top: 0.4rem; }
"""


def build_blocks(service: Service) -> gr.Blocks:
    """The UI of ``service``."""
    with gr.Blocks(title="facefleet", analytics_enabled=False, delete_cache=(600, 3600)) as blocks:
        gr.Markdown("# facefleet\n3D faces from photos and videos: textured meshes, landmarks, head pose.")
        need = "required" if service.settings.auth else "not needed: this server runs without keys"
        key = gr.Textbox(
            label="API key",
            type="password",
            placeholder=f"your API key ({need})",
            elem_id="ff-key",
            max_lines=1,
        )
        with gr.Tab("Photo", elem_id="ff-photo-tab"):
            _photo_tab(service, key)
        with gr.Tab("Jobs", elem_id="ff-jobs-tab"):
            _jobs_tab(service, key)
    return blocks


def _photo_tab(service: Service, key: gr.Textbox) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            photo = gr.Image(
                label="Photo",
                type="filepath",
                image_mode=None,  # the uploaded file as it is (the service decodes it)
                sources=["upload", "clipboard"],
                height=420,
                elem_id="ff-photo",
            )
            run = gr.Button("Reconstruct", variant="primary", elem_id="ff-run")
        overlay = gr.Image(
            label="Overlay: mesh, box, pose axes",
            interactive=False,
            height=420,
            scale=1,
            elem_id="ff-overlay",
        )
    note = gr.Markdown(elem_id="ff-photo-note")
    with gr.Row():
        viewer = gr.Model3D(
            label="3D faces (drag to orbit, scroll to zoom)",
            clear_color=(0.12, 0.12, 0.14, 1.0),
            height=460,
            scale=3,
            elem_id="ff-viewer",
        )
        with gr.Column(scale=2):
            faces = gr.Dataframe(
                headers=FACE_COLUMNS, label="Faces: pose and landmarks", interactive=False, elem_id="ff-faces"
            )
            downloads = gr.File(
                label="Downloads: GLB, JSON, OBJ (zip of OBJ + MTL + texture PNG)",
                file_count="multiple",
                interactive=False,
                elem_id="ff-downloads",
            )

    async def reconstruct(presented: str, path: str | None) -> tuple[Any, ...]:
        if not path:
            raise _error("Upload a photo first.")
        who = _authenticate(service, presented)
        try:
            view = await asyncio.to_thread(reconstruct_photo, service, who, path, _scratch())
        except HttpError as e:
            raise _error(_message(e)) from None
        glb = str(view.glb) if view.glb else None
        return view.overlay, glb, view.rows, [str(p) for p in view.downloads], view.note

    gr.on(
        [run.click, photo.upload],
        reconstruct,
        inputs=[key, photo],
        outputs=[overlay, viewer, faces, downloads, note],
        concurrency_limit=None,  # the service batches concurrent photos on its devices
        api_visibility="undocumented",
    )


def _jobs_tab(service: Service, key: gr.Textbox) -> None:
    from facefleet.config import FORMATS
    from facefleet.config.sections import VIDEO_FORMATS

    roots = ", ".join(service.settings.roots) or "none: this server reads no paths, upload files"
    with gr.Row():
        with gr.Column(scale=1):
            kind = gr.Radio(["photos", "video"], value="photos", label="Kind", elem_id="ff-kind")
            path = gr.Textbox(
                label="Folder, file or bucket URL on the server",
                info=f"under the server's roots ({roots})",
                max_lines=1,
                elem_id="ff-path",
            )
            uploads = gr.File(
                label="…or upload photos or a video",
                file_count="multiple",
                file_types=["image", "video"],
                elem_id="ff-uploads",
            )
            formats = gr.CheckboxGroup(
                list(FORMATS), value=["json"], label="Output files", elem_id="ff-formats"
            )
            start = gr.Button("Start job", variant="primary", elem_id="ff-start")
        with gr.Column(scale=1):
            job_id = gr.Textbox(label="Job id", max_lines=1, elem_id="ff-job-id")
            with gr.Row():
                follow_btn = gr.Button("Follow job", elem_id="ff-follow")
                cancel_btn = gr.Button("Cancel job", variant="stop", elem_id="ff-cancel")
            progress = gr.HTML(elem_id="ff-progress")
            summary = gr.JSON(label="Job and its report", elem_id="ff-summary")
            results = gr.File(label="Results", file_count="multiple", interactive=False, elem_id="ff-results")
            results_note = gr.Markdown(elem_id="ff-results-note")
    with gr.Row():
        refresh = gr.Button("Refresh my jobs", size="sm", elem_id="ff-refresh")
    table = gr.Dataframe(headers=uijobs.JOB_COLUMNS, label="My jobs", interactive=False, elem_id="ff-jobs")

    def kind_changed(k: str) -> Any:
        allowed = list(VIDEO_FORMATS if k == "video" else FORMATS)
        return gr.CheckboxGroup(choices=allowed, value=["parquet"] if k == "video" else ["json"])

    kind.change(kind_changed, kind, formats, api_visibility="undocumented")

    outputs = [job_id, progress, summary, results, results_note, table]

    async def start_job(
        presented: str, k: str, where: str, files: list[str] | None, fmts: list[str]
    ) -> AsyncIterator[tuple[Any, ...]]:
        who = _authenticate(service, presented)
        try:
            record = await asyncio.to_thread(uijobs.submit, service, who, k, where or "", files or [], fmts)
        except HttpError as e:
            raise _error(_message(e)) from None
        async for update in _follow(service, who, record.id):
            yield update

    async def follow_job(presented: str, jid: str) -> AsyncIterator[tuple[Any, ...]]:
        who = _authenticate(service, presented)
        async for update in _follow(service, who, jid.strip()):
            yield update

    gr.on(
        [start.click], start_job, inputs=[key, kind, path, uploads, formats], outputs=outputs,
        concurrency_limit=None, api_visibility="undocumented",
    )  # fmt: skip
    gr.on(
        [follow_btn.click, job_id.submit], follow_job, inputs=[key, job_id], outputs=outputs,
        concurrency_limit=None, api_visibility="undocumented",
    )  # fmt: skip

    async def cancel(presented: str, jid: str) -> str:
        who = _authenticate(service, presented)
        record = _call(service.get_job, who, jid.strip())
        if record.state in FINAL:
            raise _error(f"job {record.id} has already ended ({record.state})")
        await asyncio.to_thread(service.jobs.cancel, record.id)
        gr.Info(f"cancelling job {record.id}")
        return uijobs.progress_html(service.store.get(record.id) or record)

    cancel_btn.click(cancel, [key, job_id], progress, api_visibility="undocumented")

    def list_jobs(presented: str) -> list[list[Any]]:
        return uijobs.job_rows(_my_jobs(service, _authenticate(service, presented)))

    refresh.click(list_jobs, key, table, api_visibility="undocumented")

    def pick(event: gr.SelectData) -> Any:
        row = event.row_value
        return row[0] if row else gr.skip()

    table.select(pick, None, job_id, api_visibility="undocumented")


async def _follow(service: Service, who: ApiKey, job_id: str) -> AsyncIterator[tuple[Any, ...]]:
    """(job id, progress, summary, results, results note, jobs table) as the job goes, until it ends."""
    record = _call(service.get_job, who, job_id)
    queue = service.job_queue(record)
    no = gr.skip()
    table = uijobs.job_rows(_my_jobs(service, who))
    yield record.id, uijobs.progress_html(record), uijobs.job_summary(record, queue), None, "", table
    async for now in uijobs.follow(service, record.id):
        record = now
        if record.state not in FINAL:
            yield no, uijobs.progress_html(record), uijobs.job_summary(record, queue), no, no, no
    files, note = await asyncio.to_thread(uijobs.package_results, service, record, _scratch())
    table = uijobs.job_rows(_my_jobs(service, who))
    summary = uijobs.job_summary(record, queue)
    yield no, uijobs.progress_html(record), summary, [str(p) for p in files] or None, note, table


def _my_jobs(service: Service, who: ApiKey) -> list[Any]:
    """The key's latest jobs (the REST API pages through all of them)."""
    owner = who.name if service.settings.auth else None
    return service.store.list(key=owner, limit=MY_JOBS)


def _authenticate(service: Service, presented: str | None) -> ApiKey:
    """The key's record, or a ``gr.Error`` the page shows (wrong key, rate limit)."""
    return _call(service.authenticate, (presented or "").strip() or None)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except HttpError as e:
        raise _error(_message(e)) from None


def _error(message: str) -> gr.Error:
    """An error the page shows (a refusal, not a fault of the server: no traceback in its log)."""
    return gr.Error(message, print_exception=False)


def _message(e: HttpError) -> str:
    if e.status == 401:
        if "missing" in e.message:
            return "Enter your API key at the top of the page (make one with `facefleet keys create NAME`)."
        return "Invalid API key: check the key at the top of the page."
    return e.message


def _scratch() -> Path:
    """A fresh folder in Gradio's cache for one action's files: served from there without a copy, and
    deleted with the cache (``delete_cache``)."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / "facefleet" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder
