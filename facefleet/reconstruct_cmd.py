"""``facefleet reconstruct`` and ``facefleet demo``: the in-process runner on one device."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _iter_paths(paths: list[str]) -> Iterator[str]:
    from facefleet.io.discover import iter_inputs

    for p in paths:
        if Path(p).is_file():
            yield p  # an explicit file is taken whatever its extension (bad ones get an error)
        else:
            yield from iter_inputs(p)


def _stem_for(path: str, seen: dict[str, int]) -> str:
    stem = Path(path).stem or "image"
    n = seen.get(stem, 0)
    seen[stem] = n + 1
    return stem if n == 0 else f"{stem}_{n}"


def _make_reconstructor(args: argparse.Namespace) -> Any:
    from facefleet.cli import pipeline_kwargs
    from facefleet.pipeline import Reconstructor

    return Reconstructor(
        device=args.device,
        precision=args.precision,
        model_dir=args.model_dir,
        texture_size=args.texture_size,
        **pipeline_kwargs(args),  # type: ignore[arg-type]
    )


def _process(
    rec: Any, items: list[tuple[str, np.ndarray | str]], out: Path, formats: set[str], seen: dict[str, int]
) -> tuple[int, int]:
    from facefleet.io.decode import ImageDecodeError, read_image
    from facefleet.outputs import needs_texture, write_outputs
    from facefleet.types import ImageResult

    arrays: list[np.ndarray] = []
    names: list[str] = []
    results: dict[str, ImageResult] = {}
    order = [name for name, _ in items]
    for name, src in items:
        try:
            arrays.append(read_image(src) if isinstance(src, str) else src)
            names.append(name)
        except ImageDecodeError as e:
            results[name] = ImageResult(source=name, width=0, height=0, error=str(e))
    if arrays:
        for name, res in zip(names, rec(arrays, sources=names, texture=needs_texture(formats))):
            results[name] = res
    images = dict(zip(names, arrays))
    n_faces = n_failed = 0
    for name in order:
        res = results[name]
        stem = _stem_for(name, seen)
        try:
            written = write_outputs(res, images.get(name), out, stem, formats)
        except OSError as e:
            print(f"facefleet: {name}: cannot write outputs: {e}", file=sys.stderr)
            n_failed += 1
            continue
        if res.error:
            n_failed += 1
            print(f"facefleet: {res.error}", file=sys.stderr)
        else:
            n_faces += len(res.faces)
            print(
                f"{name}: {len(res.faces)} face(s) -> {', '.join(str(p) for p in written[:3])}"
                + (" ..." if len(written) > 3 else "")
            )
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
    seen: dict[str, int] = {}
    n_img = n_faces = n_failed = 0
    batch: list[tuple[str, np.ndarray | str]] = []
    try:
        for p in _iter_paths(args.paths):
            batch.append((p, p))
            if len(batch) >= args.batch_size:
                nf, ne = _process(rec, batch, out, args.formats, seen)
                n_img, n_faces, n_failed = n_img + len(batch), n_faces + nf, n_failed + ne
                batch = []
        if batch:
            nf, ne = _process(rec, batch, out, args.formats, seen)
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
    n_faces, n_failed = _process(rec, [("astronaut", image)], out, args.formats, {})
    print(f"demo: {n_faces} face(s) reconstructed on {rec.device}; outputs in {out.resolve()}")
    return 1 if n_failed or n_faces == 0 else 0
