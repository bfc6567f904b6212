"""The REST API of ``facefleet serve``: FastAPI routes over a :class:`~.core.Service`.

Routes (``/v1`` needs an API key unless ``[service] auth = false``):

- ``POST /v1/reconstruct`` — one image (raw bytes, or multipart field ``image``) -> the JSON contract
  of DESIGN.md (``?output=glb``: a textured GLB; ``?output=overlay``: a PNG). Concurrent requests are
  batched on the GPU.
- ``POST /v1/jobs`` — uploaded files (multipart ``files``, with ``kind`` and ``formats`` fields) or JSON
  ``{"input": PATH or [PATHS], "kind": "photos"|"video", "formats": [...]}`` with paths under the
  allowed roots -> 202 and the job. ``GET /v1/jobs`` (paged, ``?state=``), ``GET /v1/jobs/{id}``,
  ``GET /v1/jobs/{id}/results`` (its files), ``GET /v1/jobs/{id}/files/{path}``, ``DELETE /v1/jobs/{id}``.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (networks warm), ``GET /metrics``
  (Prometheus), ``/ui`` (the browser UI), ``/docs`` and ``/openapi.json``.

Every error is ``{"error": "..."}`` with its status: 401 (no or wrong key), 403 (a path outside the
roots), 404, 413 (body over the limit), 422 (not an image, bad options), 429 (rate or quota), 503
(warming up). Each request is one JSON log line (route, status, milliseconds, the key's *name*).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from facefleet.entrypoints.service.core import Service
from facefleet.entrypoints.service.keys import ApiKey, key_from_headers
from facefleet.entrypoints.service.store import ACTIVE, FINAL, JobRecord
from facefleet.entrypoints.service.uploads import BodyLimit, HttpError, safe_filename, save_stream

log = logging.getLogger("facefleet.service")

IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif"]
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in [*IMAGE_TYPES, "application/octet-stream"]
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
_JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {
                        "input": {
                            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                        },
                        "kind": {"type": "string", "enum": ["photos", "video"]},
                        "formats": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "kind": {"type": "string", "enum": ["photos", "video"]},
                        "formats": {"type": "string", "description": "comma-separated"},
                    },
                }
            },
        },
    }
}


def create_app(service: Service, *, start: bool = True) -> Any:
    """The ASGI app of ``service`` (started and closed with the app's lifespan when ``start``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start:
            await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            if start:
                await asyncio.to_thread(service.close)

    app = FastAPI(
        title="facefleet",
        version="1",
        lifespan=lifespan,
        description="3D face reconstruction: photos and videos -> meshes, landmarks, head pose.",
    )
    app.state.service = service
    _routes(app, service)

    @app.exception_handler(HttpError)
    async def http_error(request: Request, e: HttpError) -> Response:
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    if service.settings.ui:
        from facefleet.entrypoints.ui import mount_ui

        app = mount_ui(app, service)
    if service.settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    mib = 2**20
    limits = {
        "/v1/reconstruct": int(service.settings.max_request_mb * mib),
        "/v1/jobs": int(service.settings.max_upload_mb * mib),
        "/ui": int(service.settings.max_upload_mb * mib),  # the UI's uploads: photos, and videos for jobs
    }
    return _Observe(BodyLimit(app, limits, default=int(service.settings.max_request_mb * mib)), service)


def _routes(app: FastAPI, service: Service) -> None:
    def view(r: JobRecord) -> dict[str, Any]:
        return r.to_api(service.job_queue(r))

    async def caller(request: Request) -> ApiKey:
        key = service.authenticate(key_from_headers(request.headers))
        request.scope["ff.key"] = key.name
        return key

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1) if service.started else 0}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        """200 once every device's networks are warm, else 503 with the reason."""
        ok, why = service.ready()
        return JSONResponse({"ready": ok, "detail": why}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus metrics (text format 0.0.4)."""
        body = await asyncio.to_thread(service.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/reconstruct", tags=["reconstruct"], openapi_extra=_IMAGE_BODY)
    async def reconstruct(request: Request, output: str = "json", texture: bool = False) -> Response:
        """Reconstruct the faces of one image. ``output``: ``json`` (the per-image JSON contract),
        ``glb`` (the textured meshes of every face) or ``overlay`` (a PNG of the image with mesh, box
        and pose axes drawn)."""
        key = await caller(request)
        if output not in ("json", "glb", "overlay"):
            raise HttpError(422, f"output must be json, glb or overlay, got {output!r}")
        data, name = await _image_body(request)
        service.charge(key, 1)
        future = service.submit_image(
            data, name, texture=texture or output == "glb", keep_image=output == "overlay"
        )
        reply = await asyncio.wrap_future(future)
        service.count_reply(reply)
        result = reply.result
        if result.error:
            raise HttpError(422, result.error)
        if output == "json":
            return Response(_result_json(result), media_type="application/json")
        body, media = await asyncio.to_thread(_render, output, reply)
        return Response(body, media_type=media)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], openapi_extra=_JOB_BODY)
    async def create_job(request: Request) -> Response:
        """Start a job: uploaded photos or videos (multipart), or paths under the server's roots (JSON).
        The job goes through the engine's durable queue: a restarted server resumes it."""
        key = await caller(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            record = await _job_from_uploads(request, service, key)
        elif ctype.startswith("application/json"):
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError as e:
                raise HttpError(422, f"invalid JSON body: {e}") from None
            if not isinstance(body, dict) or "input" not in body:
                raise HttpError(422, 'a JSON job needs "input": a path or a list of paths')
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if not all(isinstance(p, str) and p for p in inputs):
                raise HttpError(422, '"input" must be a path or a list of paths')
            options = {k: v for k, v in body.items() if k not in ("input", "kind")}
            kind = body.get("kind", "photos")
            record = await asyncio.to_thread(service.submit_job, key, str(kind), inputs, options)
        else:
            raise HttpError(415, "send multipart/form-data (files) or application/json (input paths)")
        return JSONResponse(view(record), status_code=202, headers={"Location": f"/v1/jobs/{record.id}"})

    @app.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        request: Request,
        state: str | None = Query(None, description="only jobs in these states, comma-separated"),
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The caller's jobs, newest first: ``limit`` of them from ``offset`` (``total``: how many there
        are), of every state or only those ``state`` names (e.g. ``queued,running``)."""
        key = await caller(request)
        owner = key.name if service.settings.auth else None
        states = tuple(s.strip() for s in state.split(",") if s.strip()) if state else None
        bad = sorted(set(states or ()) - set(ACTIVE + FINAL))
        if bad:
            raise HttpError(422, f"state must be among {', '.join(ACTIVE + FINAL)}, got {', '.join(bad)}")
        records, total = await asyncio.to_thread(
            lambda: (
                service.store.list(owner, states, offset=offset, limit=limit),
                service.store.count(owner, states),
            )
        )
        return {"jobs": [view(r) for r in records], "total": total, "offset": offset}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(request: Request, job_id: str) -> dict[str, Any]:
        """A job's state, progress (0-1), ETA, counts and error."""
        return view(service.get_job(await caller(request), job_id))

    @app.get("/v1/jobs/{job_id}/results", tags=["jobs"])
    async def job_results(
        request: Request,
        job_id: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(1000, ge=1, le=100_000),
    ) -> dict[str, Any]:
        """A job's output files (manifest parts, report, per-image files), each with its download URL, in
        path order: ``limit`` of them from ``offset`` (``total``: how many there are)."""
        record = service.get_job(await caller(request), job_id)
        files = await asyncio.to_thread(_list_outputs, service, record)
        return {
            "id": record.id,
            "state": record.state,
            "total": len(files),
            "offset": offset,
            "files": files[offset : offset + limit],
        }

    @app.get("/v1/jobs/{job_id}/files/{path:path}", tags=["jobs"])
    async def job_file(request: Request, job_id: str, path: str) -> Response:
        """One output file of a job."""
        return FileResponse(service.job_file(await caller(request), job_id, path))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        """Cancel a job: it stops now; what it finished stays in its results."""
        key = await caller(request)
        service.get_job(key, job_id)
        record = await asyncio.to_thread(service.jobs.cancel, job_id)
        await asyncio.to_thread(service.jobs.wait_idle, job_id, 30.0)
        return view(service.store.get(job_id) or record)


async def _image_body(request: Request) -> tuple[bytes, str]:
    """The image of a reconstruct request: a multipart ``image`` field, or the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        item = form.get("image")
        if item is None or isinstance(item, str):
            raise HttpError(422, "multipart body without an 'image' file field")
        return await item.read(), item.filename or "upload"
    return await request.body(), request.headers.get("x-filename", "upload")


async def _job_from_uploads(request: Request, service: Service, key: ApiKey) -> JobRecord:
    """Save a multipart job's ``files`` in its input folder, then start it. The parser spools each file
    to a temporary file as it arrives (1 MiB in memory at most), which is then copied over in chunks:
    no upload is ever whole in memory, and the body limit has refused anything over the limit."""
    form = await request.form(max_files=100_000, max_fields=16)
    uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
    if not uploads:
        raise HttpError(422, "a multipart job needs one or more 'files'")
    kind = str(form.get("kind") or "photos")
    options = {"formats": str(form.get("formats") or "")}
    job_id, folder = service.jobs.new_folder()
    inbox = folder / "input"
    inbox.mkdir()
    try:
        for i, up in enumerate(uploads):
            await save_stream(_chunks(up), inbox / safe_filename(up.filename or "upload", i))
        return await asyncio.to_thread(service.submit_job, key, kind, [str(inbox)], options, job_id=job_id)
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # a refused job leaves no files behind
        raise
    finally:
        await form.close()


async def _chunks(upload: Any, size: int = 1 << 20) -> AsyncIterator[bytes]:
    while chunk := await upload.read(size):
        yield chunk


def _list_outputs(service: Service, record: JobRecord) -> list[dict[str, Any]]:
    out = Path(record.out)
    files = []
    for p in service.output_files(record):
        rel = p.relative_to(out).as_posix()
        files.append({"path": rel, "bytes": p.stat().st_size, "url": f"/v1/jobs/{record.id}/files/{rel}"})
    return files


def _result_json(result: Any) -> bytes:
    from facefleet.export.jsonfile import finite_json

    data = result.to_dict()
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return orjson.dumps(finite_json(data))


def _render(output: str, reply: Any) -> tuple[bytes, str]:
    from facefleet.export import mesh_topology, render_overlay
    from facefleet.export.gltf import build_glb
    from facefleet.export.png import encode_png

    result = reply.result
    if not result.faces:
        raise HttpError(422, f"{result.source}: no face found")
    tri, uv = mesh_topology(len(result.faces[0].landmarks))
    if output == "glb":
        body = build_glb(
            [f.landmarks for f in result.faces],
            tri,
            uv,
            [f.texture for f in result.faces],
            names=[f"face{k}" for k in range(len(result.faces))],
        )
        return body, "model/gltf-binary"
    return encode_png(render_overlay(reply.image, result.faces, tri), compress_level=1), "image/png"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Observe:
    """ASGI middleware: each request's latency into the metrics and one JSON log line (the route's
    template, not its path: ids and file names stay out of the labels; the key's name, never the key)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or (
                "/ui" if scope["path"].startswith("/ui") else "other"
            )
            self.service.metrics.observe_request(route, scope["method"], status, seconds)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    json.dumps(
                        {
                            "event": "request",
                            "method": scope["method"],
                            "route": route,
                            "status": status,
                            "ms": round(seconds * 1000, 2),
                            "key": scope.get("ff.key"),
                        }
                    )
                )
