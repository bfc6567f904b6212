"""The one result sink: where each source's per-image files go, and writing them atomically.

Every runner (``facefleet reconstruct`` and ``demo``, the batch engine's workers, the service to
come) names files through :class:`ResultSink`, so the same input gives the same file names whichever
wrote them. Naming:

- a source below ``root`` mirrors the input tree (``root/x/y/a.jpg`` -> ``x/y/a.jpg.json``); other
  sources (list files, URLs, paths outside the root) get a path made of their components
  (``s3://bucket/p/a.jpg`` -> ``s3_~<hash>/bucket/p/a.jpg.json``: the scheme is a sanitised component);
- the whole file name is kept, extension included (``a.jpg`` and ``a.png`` never share a file);
- a component made only of ``A-Z a-z 0-9 . _ @ + = , -`` is kept as it is; any other is sanitised
  (unsafe characters become ``_``) *and* gets ``~`` and a hash of its original bytes before its
  extension (``with space.jpg`` -> ``with_space~4c0e5f1a2b.jpg``). A kept name never contains
  ``~``, so a sanitised name never equals a kept one, and two names that sanitise alike
  (``with space.jpg``, ``with?space.jpg``) differ by their hashes: no two sources share a file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefleet.types import ImageResult

_SAFE = re.compile(r"[A-Za-z0-9._@+=,-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,-]+")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
MAX_NAME = 160  # characters of a sanitised component before its hash (file systems allow 255 bytes)
HASH_CHARS = 10  # hex digits of the hash (40 bits)


def source_text(source: str) -> str:
    """A source as text any file format takes: a local name that is not valid UTF-8 (decoded with
    ``surrogateescape``, e.g. ``caf\\udce9.jpg``) with its undecodable bytes as ``\\xNN``
    (``caf\\xe9.jpg``); any other source unchanged. Results, the manifest and the JSON files carry
    this form; file names are made from the source as listed (its bytes)."""
    try:
        source.encode("utf-8")
        return source
    except UnicodeEncodeError:
        return source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def with_text_source(result: ImageResult) -> ImageResult:
    """``result`` with its source as :func:`source_text`; ``result`` itself when it is text already."""
    import dataclasses

    text = source_text(result.source)
    return result if text == result.source else dataclasses.replace(result, source=text)


def safe_component(name: str) -> str:
    """``name`` itself when it is safe, else its sanitised form with ``~`` and a hash of its bytes
    (non-UTF-8 names, decoded with ``surrogateescape``, hash their raw bytes)."""
    if _SAFE.fullmatch(name) and not name.startswith(".") and len(name) <= MAX_NAME:
        return name
    digest = hashlib.blake2b(os.fsencode(name), digest_size=8).hexdigest()[:HASH_CHARS]
    clean = _UNSAFE.sub("_", name).lstrip(".") or "_"
    stem, ext = os.path.splitext(clean)
    if not _SAFE.fullmatch(ext) or len(ext) > 16:
        stem, ext = clean, ""
    return f"{stem[:MAX_NAME]}~{digest}{ext}"


def output_location(source: str, root: str | None) -> tuple[str, str]:
    """(relative directory, file name) of a source's per-image files (see the module docstring).
    The files of ``source`` are ``<dir>/<name>.json``, ``<dir>/<name>.glb``, ... under the sink's
    folder."""
    rel: str | None = None
    if root is not None and "://" not in source:
        try:
            r = os.path.relpath(os.path.abspath(source), root)
        except ValueError:  # other drive (Windows)
            r = ""
        if r and not r.startswith(".."):
            rel = r
    if rel is None:
        rel = _SCHEME.sub(lambda m: m.group(1) + ":/", source)  # "s3:" is no local folder name
    parts = [p for p in re.split(r"[/\\]+", rel) if p not in ("", ".", "..")] or ["_"]
    parts = [safe_component(p) for p in parts]
    return "/".join(parts[:-1]), parts[-1]


@dataclass(frozen=True)
class ResultSink:
    """Per-image files of ``formats`` for each result, under ``out_dir`` (``OUT/files`` in a batch
    run, OUT itself for ``reconstruct``), named by :func:`output_location` relative to ``root``
    (the input folder the files mirror; None: sources' own paths). Picklable (process pools)."""

    out_dir: str
    formats: tuple[str, ...] = ("json",)
    root: str | None = None

    def location(self, source: str) -> tuple[Path, str]:
        """(folder, file name) of ``source``'s files."""
        rel, name = output_location(source, self.root)
        return Path(self.out_dir) / rel, name

    def write(self, result: ImageResult, image: Any = None, *, source: str | None = None) -> list[Path]:
        """Write ``result``'s files (each atomically; inside :func:`facefleet.io.atomic.deferred_fsync`
        without their fsyncs) and return their paths. ``image``: (H, W, 3) uint8, for overlays.
        ``source``: the source as listed, to name the files by, when ``result.source`` holds its text
        form (a name that is not UTF-8 is named by its bytes, whatever text its result carries)."""
        from facefleet.outputs import write_outputs

        folder, name = self.location(source if source is not None else result.source)
        return write_outputs(result, image, folder, name, set(self.formats))

    @classmethod
    def of(cls, out_dir: str | os.PathLike[str], formats: Collection[str], root: str | None) -> ResultSink:
        """A sink from loose arguments (formats as any collection, folders as paths)."""
        return cls(os.fspath(out_dir), tuple(sorted(set(formats))), root)
