"""Input discovery: turn a user's input spec into a stream of image paths or URLs.

:func:`iter_inputs` is a generator with memory bounded by one directory listing per level of
the tree being walked, so it can feed millions of files to a work queue. Order is deterministic:
entries are sorted by name within each directory and visited depth-first.

Accepted specs (a list mixes them freely):

- a directory: walked recursively; files whose extension is an image extension
  (``.jpg .jpeg .png .webp .bmp .tif .tiff .gif``, case-insensitive) are yielded when they are
  regular files (FIFOs, sockets and symlink loops are skipped and reported); hidden entries
  (names starting with ``.``, e.g. macOS ``._x.jpg`` resource forks) are skipped;
- a glob pattern (``*``, ``?``, ``[...]``, ``**`` for any depth), matched with shell semantics;
  matching files are filtered by extension, matching directories are walked;
- a list file (``.txt``/``.lst``/``.list``, or any non-image file whose start is text): one path
  or URL per line, blank lines and ``#`` comment lines ignored, relative paths resolved against
  the list file's directory; entries are yielded as written (not checked, so a missing entry
  becomes a per-file decode error rather than aborting the run);
- a single image file (yielded as is, whatever its extension);
- an fsspec URL (``s3://``, ``gs://``, ``memory://``, ``https://``...) to any of the above;
  ``file://`` URLs are handled as local paths without fsspec.

A missing input raises ``FileNotFoundError("input not found: <spec>")``.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "is_url",
    "iter_inputs",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst", ".list"})

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_GLOB_RE = re.compile(r"[*?\[]")
_IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")

Spec = str | os.PathLike[str]
SkipFn = Callable[[str, str], None]


def _no_skip(path: str, reason: str) -> None:
    log.info("skipping %r: %s", path, reason)


@dataclass
class _Walk:
    """State of one local listing: directories seen (loops), excluded ones, the skip callback."""

    skip: SkipFn = _no_skip
    excluded: frozenset[tuple[int, int]] = frozenset()
    seen: set[tuple[int, int]] = field(default_factory=set)


def _dir_keys(paths: Iterable[str | os.PathLike[str]]) -> frozenset[tuple[int, int]]:
    keys = set()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


def is_url(spec: str) -> bool:
    """True for ``scheme://...`` strings (Windows drive paths such as ``C:\\x`` are not URLs)."""
    return bool(_URL_RE.match(spec))


def _file_url_to_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{url}: file:// URL with a remote host is not supported")
    return unquote(parsed.path)


def _norm_exts(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _looks_like_list(head: bytes) -> bool:
    """Content sniffing for list files: text, not an image signature."""
    if not head or head.startswith(_IMAGE_MAGICS) or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte char cut at the end of the sniffed block is fine
        if exc.start < len(head) - 4:
            return False
    return True


def _is_list_file(name: str, head_reader: Any, exts: frozenset[str]) -> bool:
    ext = _ext(name)
    if ext in LIST_EXTENSIONS:
        return True
    if ext in exts or ext in IMAGE_EXTENSIONS:
        return False
    return _looks_like_list(head_reader())


def _iter_list_lines(lines: Iterable[str]) -> Iterator[str]:
    for raw in lines:
        line = raw.strip()
        if line.startswith("\ufeff"):
            line = line[1:].strip()
        if line and not line.startswith("#"):
            yield line


# ----------------------------------------------------------------------------- local filesystem


def _walk_local(root: str, exts: frozenset[str], include_hidden: bool, ctx: _Walk) -> Iterator[str]:
    """Depth-first walk, entries sorted by name; follows directory symlinks without looping;
    yields regular files only (FIFOs, sockets, devices and loops go to ``ctx.skip``)."""
    try:
        st = os.stat(root)
        key = (st.st_dev, st.st_ino)
        if key in ctx.seen:
            ctx.skip(root, "symlink loop or repeated directory")
            return
        if key in ctx.excluded:
            return  # the run's own output folder
        ctx.seen.add(key)
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            ctx.skip(root, "symlink loop")
        else:
            log.warning("skipping unreadable directory %s: %s", root, exc.strerror or exc)
            ctx.skip(root, f"unreadable directory ({exc.strerror or exc})")
        return
    for entry in entries:
        if not include_hidden and entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk_local(entry.path, exts, include_hidden, ctx)
            continue
        if _ext(entry.name) not in exts:
            continue
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as exc:
            why = (
                "symlink loop"
                if exc.errno == errno.ELOOP
                else "dangling symlink"
                if entry.is_symlink()
                else (f"unreadable ({exc.strerror or exc})")
            )
            ctx.skip(entry.path, why)
            continue
        if stat.S_ISREG(mode):
            yield entry.path
        else:
            ctx.skip(entry.path, "not a regular file (FIFO, socket or device)")


def _glob_local(pattern: str) -> Iterator[str]:
    """Shell-style glob (``**`` = any depth) yielding matches in sorted, depth-first order."""
    drive, rest = os.path.splitdrive(pattern)
    absolute = rest.startswith(("/", os.sep))
    parts = [p for p in re.split(r"[/\\]+" if os.sep == "\\" else r"/+", rest) if p]
    start = drive + (os.sep if absolute else "")
    # Literal leading components need no listing.
    i = 0
    while i < len(parts) and not _GLOB_RE.search(parts[i]):
        i += 1
    base = os.path.join(start, *parts[:i]) if i else (start or os.curdir)
    prefix_given = bool(i or start)

    def show(path: str) -> str:
        if prefix_given:
            return path
        return os.path.relpath(path, os.curdir) if path != os.curdir else path

    def match(path: str, k: int) -> Iterator[str]:
        if k == len(parts):
            if os.path.exists(path):
                yield show(path)
            return
        part = parts[k]
        if part == "**":
            yield from match(path, k + 1)  # zero directories
            for name in _sorted_listdir(path):
                sub = os.path.join(path, name)
                if not name.startswith(".") and os.path.isdir(sub):
                    yield from match(sub, k)
            return
        if not _GLOB_RE.search(part):
            yield from match(os.path.join(path, part), k + 1)
            return
        for name in _sorted_listdir(path):
            if name.startswith(".") and not part.startswith("."):
                continue
            if fnmatch.fnmatchcase(name, part):
                sub = os.path.join(path, name)
                if k + 1 == len(parts) or os.path.isdir(sub):
                    yield from match(sub, k + 1)

    if i == len(parts):
        if os.path.exists(base):
            yield base
        return
    yield from match(base, i)


def _sorted_listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _iter_local(
    path: str, exts: frozenset[str], include_hidden: bool, spec: str, ctx: _Walk
) -> Iterator[str]:
    if os.path.isdir(path):
        yield from _walk_local(path, exts, include_hidden, ctx)
        return
    if os.path.isfile(path):

        def head() -> bytes:
            with open(path, "rb") as fh:
                return fh.read(4096)

        if _is_list_file(path, head, exts):
            base = os.path.dirname(os.path.abspath(path))
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:  # names as the OS has them
                for line in _iter_list_lines(fh):
                    if is_url(line) or os.path.isabs(line):
                        yield line
                    else:
                        yield os.path.normpath(os.path.join(base, line))
        else:
            yield path
        return
    if os.path.lexists(path):  # dangling symlink, socket, ...
        raise FileNotFoundError(f"input not found or unreadable: {spec}")
    if _GLOB_RE.search(path):
        found = False
        for match in _glob_local(path):
            found = True
            if os.path.isdir(match):
                yield from _walk_local(match, exts, include_hidden, ctx)
            elif _ext(match) in exts:
                if os.path.isfile(match):
                    yield match
                else:
                    ctx.skip(match, "not a regular file (FIFO, socket or device)")
        if not found:
            raise FileNotFoundError(f"no files match the pattern: {spec}")
        return
    raise FileNotFoundError(f"input not found: {spec}")


# ----------------------------------------------------------------------------- fsspec URLs


def _fsspec_fs(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a declared dependency
        raise ImportError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from exc
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _walk_fs(fs: Any, root: str, exts: frozenset[str], include_hidden: bool) -> Iterator[str]:
    try:
        entries = fs.ls(root, detail=True)
    except OSError as exc:
        log.warning("skipping unreadable directory %s: %s", root, exc)
        return
    for info in sorted(entries, key=lambda e: str(e["name"])):
        name = str(info["name"]).rstrip("/")
        base = name.rsplit("/", 1)[-1]
        if name == root.rstrip("/") or (not include_hidden and base.startswith(".")):
            continue
        if info.get("type") == "directory":
            yield from _walk_fs(fs, name, exts, include_hidden)
        elif _ext(base) in exts:
            yield fs.unstrip_protocol(name)


def _iter_fs(url: str, exts: frozenset[str], include_hidden: bool) -> Iterator[str]:
    fs, path = _fsspec_fs(url)
    if fs.isdir(path):
        yield from _walk_fs(fs, path, exts, include_hidden)
        return
    if fs.isfile(path):

        def head() -> bytes:
            with fs.open(path, "rb") as fh:
                return bytes(fh.read(4096))

        if _is_list_file(path, head, exts):
            parent = fs.unstrip_protocol(path.rsplit("/", 1)[0] if "/" in path else "")
            with fs.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                for line in _iter_list_lines(fh):
                    if is_url(line):
                        yield line
                    elif line.startswith("/"):
                        yield fs.unstrip_protocol(line)
                    else:
                        yield parent.rstrip("/") + "/" + line
        else:
            yield fs.unstrip_protocol(path)
        return
    if _GLOB_RE.search(path):
        matches = sorted(fs.glob(path))
        if not matches:
            raise FileNotFoundError(f"no files match the pattern: {url}")
        for m in matches:
            if fs.isdir(m):
                yield from _walk_fs(fs, m, exts, include_hidden)
            elif _ext(m) in exts:
                yield fs.unstrip_protocol(m)
        return
    raise FileNotFoundError(f"input not found: {url}")


# ----------------------------------------------------------------------------- public API


def iter_inputs(
    spec: Spec | Iterable[Spec],
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    include_hidden: bool = False,
    on_skip: SkipFn | None = None,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> Generator[str, None, None]:
    """Yield image paths/URLs for ``spec`` (see the module docstring), lazily and in a stable order.

    ``extensions`` filters files found by walking directories or globs (not explicit files or
    list entries). Walks yield regular files only: ``on_skip(path, reason)`` hears of every entry
    left out for another reason than its extension (FIFOs, sockets, devices, dangling symlinks,
    symlink loops, unreadable directories). Directories of ``exclude`` (e.g. the run's own output
    folder inside INPUT) are never walked. Raises ``FileNotFoundError`` with a one-line message
    for a missing input. Local names that are not valid UTF-8 come as ``str`` with
    ``surrogateescape`` characters (``os.fsencode`` gives the bytes back).
    """
    ctx = _Walk(skip=on_skip or _no_skip, excluded=_dir_keys(exclude))
    yield from _iter_spec(spec, _norm_exts(extensions), include_hidden, ctx)


def _iter_spec(
    spec: Spec | Iterable[Spec], exts: frozenset[str], include_hidden: bool, ctx: _Walk
) -> Iterator[str]:
    if not isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, (bytes, bytearray)) or not isinstance(spec, Iterable):
            raise TypeError(f"iter_inputs: expected a path, URL or list of them, got {type(spec).__name__}")
        for item in spec:
            yield from _iter_spec(item, exts, include_hidden, ctx)
        return
    text = os.fspath(spec)
    if is_url(text):
        if text.lower().startswith("file://"):
            yield from _iter_local(_file_url_to_path(text), exts, include_hidden, text, ctx)
        else:
            yield from _iter_fs(text, exts, include_hidden)
        return
    yield from _iter_local(os.path.expanduser(text), exts, include_hidden, text, ctx)
