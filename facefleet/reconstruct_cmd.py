"""``facefleet reconstruct`` and ``facefleet demo``: the in-process runner on one device.

Files are named by the one :class:`~facefleet.export.sink.ResultSink` of every runner, so
``reconstruct DIR --out O`` writes the same names under ``O`` as ``facefleet run DIR O`` writes
under ``O/files``: the input tree mirrored, each file's whole name kept (``x.jpg.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from facefleet.io.read import MAX_FILE_BYTES


def _iter_paths(paths: list[str]) -> Iterator[tuple[str, str | None]]:
    """(image path, the folder its outputs mirror) for each input: a folder's or a glob's images
    mirror it as ``facefleet run`` does (:func:`~facefleet.engine.layout.input_root`); an explicit
    file (taken whatever its extension and kind: a named pipe or an over-size file gets an error) sits
    at the top."""
    from facefleet.engine.layout import input_root
    from facefleet.io.discover import iter_inputs

    for p in paths:
        if os.path.lexists(p) and not os.path.isdir(p) and not _is_list_file(p):
            yield p, os.path.dirname(os.path.abspath(p))
        else:
            root = input_root(p)
            for found in iter_inputs(p):
                yield found, root


def _is_list_file(p: str) -> bool:
    from facefleet.io.discover import LIST_EXTENSIONS

    return os.path.splitext(p)[1].lower() in LIST_EXTENSIONS


def _make_reconstructor(args: argparse.Namespace) -> Any:
    """The pipeline of ``args`` (``args.model``: the ``[model]`` settings, a
    :class:`~facefleet.config.ModelConfig` built by the command line from :mod:`facefleet.config`;
    None: the defaults)."""
    from facefleet.pipeline import Reconstructor

    model = getattr(args, "model", None)
    return Reconstructor(
        device=args.device,
        precision=args.precision,
        model_dir=args.model_dir,
        texture_size=args.texture_size,
        **(model.arguments() if model is not None else {}),
    )


def _process(
    rec: Any,
    items: list[tuple[str, np.ndarray | str, str | None]],
    out: Path,
    formats: set[str],
    max_bytes: int = MAX_FILE_BYTES,
) -> tuple[int, int]:
    """Reconstruct ``items`` ((name, image or path, root its outputs mirror)) as one batch and write
    their files; returns (faces, failed images). Paths are read by the one input reader (regular files
    of at most ``max_bytes`` bytes: ``[run] max_file_bytes``); one it refuses fails alone."""
    from facefleet.export.sink import ResultSink, source_text, with_text_source
    from facefleet.io.decode import ImageDecodeError, read_image
    from facefleet.outputs import needs_texture
    from facefleet.types import ImageResult

    arrays: list[np.ndarray] = []
    names: list[str] = []
    results: dict[str, ImageResult] = {}
    for name, src, _ in items:
        try:
            arrays.append(read_image(src, max_bytes=max_bytes) if isinstance(src, str) else src)
            names.append(name)
        except ImageDecodeError as e:
            results[name] = ImageResult(source=name, width=0, height=0, error=str(e))
    if arrays:
        for name, res in zip(names, rec(arrays, sources=names, texture=needs_texture(formats))):
            results[name] = res
    images = dict(zip(names, arrays))
    n_faces = n_failed = 0
    for name, _, root in items:
        res = with_text_source(results[name])  # printable; the files are named by the name's bytes
        try:
            written = ResultSink.of(out, formats, root).write(res, images.get(name), source=name)
        except OSError as e:
            print(f"facefleet: {res.source}: cannot write outputs: {e}", file=sys.stderr)
            n_failed += 1
            continue
        if res.error:
            n_failed += 1
            print(f"facefleet: {source_text(res.error)}", file=sys.stderr)
        else:
            n_faces += len(res.faces)
            files = ", ".join(source_text(str(p)) for p in written)
            print(f"{res.source}: {len(res.faces)} face(s) -> {files}")
    return n_faces, n_failed


def reconstruct_paths(args: argparse.Namespace) -> int:
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"facefleet: cannot create output folder {out}: {e}", file=sys.stderr)
        return 2
    try:
        rec = _make_reconstructor(args)
    except Exception as e:  # model missing, CUDA missing: one clear line
        print(f"facefleet: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    n_img = n_faces = n_failed = 0
    batch: list[tuple[str, np.ndarray | str, str | None]] = []
    try:
        for p, root in _iter_paths(args.paths):
            batch.append((p, p, root))
            if len(batch) >= args.batch_size:
                nf, ne = _process(rec, batch, out, args.formats, args.max_file_bytes)
                n_img, n_faces, n_failed = n_img + len(batch), n_faces + nf, n_failed + ne
                batch = []
        if batch:
            nf, ne = _process(rec, batch, out, args.formats, args.max_file_bytes)
            n_img, n_faces, n_failed = n_img + len(batch), n_faces + nf, n_failed + ne
    except FileNotFoundError as e:
        print(f"facefleet: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"{n_img} image(s), {n_faces} face(s), {n_failed} failed in {dt:.1f} s -> {out}")
    return 1 if n_failed else 0


def demo(args: argparse.Namespace) -> int:
    """Reconstruct the astronaut portrait shipped by scikit-image (public domain, NASA)."""
    from skimage import data

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rec = _make_reconstructor(args)
    image = np.ascontiguousarray(data.astronaut())
    n_faces, n_failed = _process(rec, [("astronaut", image, None)], out, args.formats)
    print(f"demo: {n_faces} face(s) reconstructed on {rec.device}; outputs in {out.resolve()}")
    return 1 if n_failed or n_faces == 0 else 0
