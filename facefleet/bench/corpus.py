"""Reproducible benchmark corpora of JPEGs, two kinds.

``make_photo_corpus`` (the default of ``facefleet bench`` where the shared photos are present): 1080p
crops of the real photos of ``../shared/data/images`` (group photos, crowds, portraits, photos without
a face, low light, grayscale...): 0 to many faces per image, a realistic photo folder. Each image is one
photo (taken in a seeded order, every photo once per pass) scaled to cover the frame at a random zoom,
a frame-sized window cropped from it and flipped at random, JPEG-encoded; landscape photos give
1920x1080 frames, portraits and squares 1080x1920. The number of faces of a crop
is not known beforehand (the window may cut some): the bench counts what it finds.

``make_corpus`` (synthetic, any machine): each image is a real background photo (non-face images of
scikit-image, plus the ``noface_*`` photos of the shared data folder when present) cropped and scaled
to ``resolution``, with 0..N real portrait photos (``skimage.data.astronaut()`` plus single-face photos
of the shared data) pasted as tiles at varied scales and positions, never overlapping, JPEG-encoded at
``quality``. Everything derives from ``seed`` and the image index, so the same arguments give
byte-identical files on any machine with the same sources and Pillow version.

Its ``manifest.tsv`` lists ``file, faces, width, height, background, sources`` per image (``faces`` =
faces pasted = expected detections); ``corpus.json`` records the parameters of either kind.

>>> c = make_corpus("/tmp/corpus", 1000, resolution=(1920, 1080), faces_per_image=(1, 1))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Corpus", "make_corpus", "make_photo_corpus", "photo_files", "shared_data_dir"]

_FACE_SKIMAGE = ["astronaut"]
_BG_SKIMAGE = [
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "brick",
    "grass",
    "gravel",
    "coins",
    "moon",
    "clock",
]
_SKIP_TAGS = ("partial", "low resolution", "profile", "crop")  # faces too hard to count on as "expected"


@dataclass(frozen=True)
class Corpus:
    """A generated corpus of ``kind`` "synthetic" (``files[i]`` has ``faces[i]`` pasted faces) or "photos"
    (crops of real photos: ``faces`` is empty, the count of a crop is not known beforehand)."""

    root: Path
    files: list[Path]
    faces: list[int]
    resolution: tuple[int, int]
    quality: int
    seed: int
    seconds: float = 0.0
    sources: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "synthetic"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.tsv"

    def __len__(self) -> int:
        return len(self.files)


def shared_data_dir() -> Path | None:
    """$FACEFLEET_SHARED_DATA, else ``../shared/data`` beside the repository (None if absent)."""
    env = os.environ.get("FACEFLEET_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    for c in cands:
        if (c / "images").is_dir():
            return c
    return None


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3].astype(np.uint8))


def _load_file(path: Path) -> np.ndarray | None:
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            upright = ImageOps.exif_transpose(im)
            return _rgb(np.asarray(upright.convert("RGB")))
    except (OSError, ValueError):
        return None


def _source_names(use_shared: bool) -> tuple[list[str], list[str]]:
    """(face source ids, background ids): "sk:<name>" or "file:<path>"."""
    faces = [f"sk:{n}" for n in _FACE_SKIMAGE]
    bgs = [f"sk:{n}" for n in _BG_SKIMAGE]
    d = shared_data_dir() if use_shared else None
    if d is not None:
        idx = d / "images" / "INDEX.tsv"
        if idx.is_file():
            with open(idx, encoding="utf-8") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    name, n, tags = row.get("file", ""), row.get("faces", ""), row.get("tags", "").lower()
                    if n.strip() == "1" and not any(t in tags for t in _SKIP_TAGS):
                        faces.append(f"file:{d / 'images' / name}")
        bgs += [f"file:{p}" for p in sorted((d / "images").glob("noface_*")) if p.is_file()]
    return faces, bgs


def _load(src: str) -> np.ndarray | None:
    if src.startswith("sk:"):
        from skimage import data

        return _rgb(getattr(data, src[3:])())
    return _load_file(Path(src[5:]))


# per-process state (filled by _init in every worker)
_STATE: dict[str, Any] = {}


def _init(face_ids: list[str], bg_ids: list[str], resolution: tuple[int, int]) -> None:
    w, h = resolution
    faces, bgs = [], []
    for s in face_ids:
        a = _load(s)
        if a is not None and min(a.shape[:2]) >= 96:
            im = Image.fromarray(a)
            if im.height > h or im.width > w:  # tiles are never larger than the canvas: resize once here
                im.thumbnail((w, h), Image.Resampling.LANCZOS)
            faces.append((s, im))
    for s in bg_ids:
        a = _load(s)
        if a is None:
            continue
        im = Image.fromarray(a)
        # pre-scale once so the background just covers the canvas
        scale = max(w / im.width, h / im.height)
        bgs.append(
            (
                s,
                im.resize(
                    (max(w, round(im.width * scale)), max(h, round(im.height * scale))),
                    Image.Resampling.LANCZOS,
                ),
            )
        )
    if not faces or not bgs:
        raise RuntimeError("corpus: no usable face or background source images")
    _STATE.update(faces=faces, bgs=bgs, resolution=resolution)


def _make_one(i: int, seed: int, kmin: int, kmax: int, quality: int) -> tuple[bytes, int, str, list[str]]:
    """Image ``i`` of the corpus: (JPEG bytes, faces pasted, background id, face source ids)."""
    w, h = _STATE["resolution"]
    rng = np.random.default_rng([seed, i])
    k = int(rng.integers(kmin, kmax + 1))
    bg_id, bg = _STATE["bgs"][int(rng.integers(len(_STATE["bgs"])))]
    zoom = rng.uniform(1.0, 1.5)  # crop a (w, h) / zoom window and scale it up to (w, h)
    cw, ch = round(w / zoom), round(h / zoom)
    x0, y0 = int(rng.integers(0, bg.width - cw + 1)), int(rng.integers(0, bg.height - ch + 1))
    canvas = bg.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    used: list[str] = []
    if k > 0:
        cols = max(1, min(k, math.ceil(math.sqrt(k * w / h))))
        rows = math.ceil(k / cols)
        cells = rng.permutation(rows * cols)[:k]
        gw, gh = w / cols, h / rows
        for c in cells:
            r, q = divmod(int(c), cols)
            fid, face = _STATE["faces"][int(rng.integers(len(_STATE["faces"])))]
            frac = rng.uniform(0.6, 0.98) if k == 1 else rng.uniform(0.55, 0.95)
            s = min(gw * frac / face.width, gh * frac / face.height)
            tw, th = max(8, round(face.width * s)), max(8, round(face.height * s))
            tile = face.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=2.0)
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            px = round(q * gw + rng.uniform(0, max(0.0, gw - tw)))
            py = round(r * gh + rng.uniform(0, max(0.0, gh - th)))
            canvas.paste(tile, (px, py))
            used.append(fid)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue(), k, bg_id, used


def _work(args: tuple[list[int], int, int, int, int, list[str]]) -> list[tuple[int, int, str, list[str]]]:
    idx, seed, kmin, kmax, quality, paths = args
    out = []
    for i, p in zip(idx, paths, strict=True):
        data, k, bg, used = _make_one(i, seed, kmin, kmax, quality)
        tmp = f"{p}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
        out.append((i, k, bg, used))
    return out


def _short(src: str) -> str:
    return src[3:] if src.startswith("sk:") else Path(src[5:]).name


def make_corpus(
    out_dir: str | os.PathLike[str],
    n: int,
    *,
    resolution: tuple[int, int] = (1920, 1080),
    quality: int = 90,
    faces_per_image: tuple[int, int] = (1, 1),
    seed: int = 0,
    workers: int | None = None,
    use_shared_data: bool = True,
    shard: int = 10_000,
) -> Corpus:
    """Write ``n`` JPEGs of ``resolution`` (W, H) to ``out_dir`` (+ ``manifest.tsv``, ``corpus.json``).

    ``faces_per_image``: inclusive (min, max) faces pasted per image, drawn uniformly.
    ``workers``: processes (default: all cores). With more than ``shard`` images the files go to
    subfolders of ``shard`` images each. Re-running with the same arguments rewrites identical files.
    """
    w, h = (int(resolution[0]), int(resolution[1]))
    kmin, kmax = (int(faces_per_image[0]), int(faces_per_image[1]))
    if n < 0 or w < 64 or h < 64 or not 1 <= quality <= 100 or not 0 <= kmin <= kmax:
        raise ValueError(
            f"make_corpus: bad arguments n={n} resolution={resolution} quality={quality} "
            f"faces_per_image={faces_per_image}"
        )
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    face_ids, bg_ids = _source_names(use_shared_data)
    digits = max(6, len(str(max(n - 1, 0))))
    paths = []
    for i in range(n):
        sub = f"{i // shard:04d}/" if n > shard else ""
        paths.append(root / f"{sub}img_{i:0{digits}d}.jpg")
    for d in {p.parent for p in paths}:
        d.mkdir(parents=True, exist_ok=True)
    nproc = max(1, min(workers or os.cpu_count() or 1, max(1, n // 16)))
    chunk = max(1, min(256, math.ceil(n / (nproc * 4))))
    jobs = [
        (
            list(range(a, min(n, a + chunk))),
            seed,
            kmin,
            kmax,
            quality,
            [str(p) for p in paths[a : min(n, a + chunk)]],
        )
        for a in range(0, n, chunk)
    ]
    rows: list[tuple[int, int, str, list[str]]] = []
    if nproc == 1:
        _init(face_ids, bg_ids, (w, h))
        for j in jobs:
            rows.extend(_work(j))
    else:
        ctx = mp_context()
        with ctx.Pool(nproc, initializer=_init, initargs=(face_ids, bg_ids, (w, h))) as pool:
            for part in pool.imap_unordered(_work, jobs):
                rows.extend(part)
    rows.sort()
    faces = [k for _, k, _, _ in rows]
    from facefleet.io.atomic import atomic_open

    with atomic_open(root / "manifest.tsv", "w") as fh:
        fh.write("file\tfaces\twidth\theight\tbackground\tsources\n")
        for (_, k, bg, used), p in zip(rows, paths, strict=True):
            fh.write(
                f"{p.relative_to(root).as_posix()}\t{k}\t{w}\t{h}\t{_short(bg)}\t"
                f"{','.join(_short(u) for u in used)}\n"
            )
    seconds = time.perf_counter() - t0
    meta = {
        "n": n,
        "resolution": [w, h],
        "quality": quality,
        "faces_per_image": [kmin, kmax],
        "seed": seed,
        "face_sources": [_short(s) for s in face_ids],
        "backgrounds": [_short(s) for s in bg_ids],
        "total_faces": int(sum(faces)),
        "seconds": round(seconds, 3),
        "workers": nproc,
    }
    with atomic_open(root / "corpus.json", "w") as fh:
        json.dump(meta, fh, indent=1)
    return Corpus(
        root=root,
        files=paths,
        faces=faces,
        resolution=(w, h),
        quality=quality,
        seed=seed,
        seconds=seconds,
        sources={"faces": face_ids, "backgrounds": bg_ids},
    )


_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_files(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The photos of ``data_dir/images`` (default :func:`shared_data_dir`), sorted; [] when absent."""
    d = Path(data_dir) if data_dir is not None else shared_data_dir()
    if d is None or not (d / "images").is_dir():
        return []
    return sorted(p for p in (d / "images").iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES and p.is_file())


def _init_photos(paths: list[str], resolution: tuple[int, int]) -> None:
    photos = []
    for p in paths:
        a = _load_file(Path(p))
        if a is not None:
            photos.append((Path(p).name, Image.fromarray(a)))
    if not photos:
        raise RuntimeError("photo corpus: none of the photos could be read")
    _STATE.update(photos=photos, resolution=resolution)


def _photo_of(i: int, seed: int, n: int) -> int:
    """Which of ``n`` photos image ``i`` crops: a seeded order per pass, every photo once per pass."""
    return int(np.random.default_rng([seed, 1 << 20, i // n]).permutation(n)[i % n])


def _crop_one(i: int, seed: int, quality: int) -> tuple[bytes, str]:
    """Image ``i`` of a photo corpus: (JPEG bytes, source photo name). Landscape photos give a landscape
    frame (``resolution``), the others (portraits, squares) the same frame turned upright, as a camera
    held either way would: a portrait cropped to a landscape frame loses the face's top or bottom."""
    w, h = _STATE["resolution"]
    photos = _STATE["photos"]
    name, im = photos[_photo_of(i, seed, len(photos))]
    if (im.width > im.height) != (w > h):
        w, h = h, w
    rng = np.random.default_rng([seed, i])
    zoom = rng.uniform(1.0, 1.2)  # the photo covers the frame, then up to 1.2x closer
    scale = max(w / im.width, h / im.height) * zoom
    cw, ch = w / scale, h / scale  # the window in photo pixels
    # faces sit in the upper part of most photos: the window's top in the upper 60 % of its free range
    x0 = rng.uniform(0, im.width - cw)
    y0 = rng.uniform(0, 0.6) * (im.height - ch)
    frame = im.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    if rng.random() < 0.5:
        frame = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    frame.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue(), name


def _crop_work(args: tuple[list[int], int, int, list[str]]) -> list[tuple[int, str]]:
    idx, seed, quality, paths = args
    out = []
    for i, p in zip(idx, paths, strict=True):
        data, name = _crop_one(i, seed, quality)
        tmp = f"{p}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
        out.append((i, name))
    return out


def make_photo_corpus(
    out_dir: str | os.PathLike[str],
    n: int,
    *,
    resolution: tuple[int, int] = (1920, 1080),
    quality: int = 90,
    seed: int = 0,
    photos: list[Path] | None = None,
    workers: int | None = None,
) -> Corpus:
    """Write ``n`` JPEG crops (``resolution`` W, H) of real photos to ``out_dir`` (+ ``manifest.tsv``: file,
    source photo; ``corpus.json``). ``photos``: default :func:`photo_files` (the shared data); raises
    ``FileNotFoundError`` when there are none. Same arguments and photos: byte-identical files."""
    w, h = (int(resolution[0]), int(resolution[1]))
    if n < 0 or w < 64 or h < 64 or not 1 <= quality <= 100:
        raise ValueError(f"make_photo_corpus: bad arguments n={n} resolution={resolution} quality={quality}")
    srcs = [str(p) for p in (photos if photos is not None else photo_files())]
    if not srcs:
        raise FileNotFoundError(
            "make_photo_corpus: no photos (set FACEFLEET_SHARED_DATA to a folder with images/)"
        )
    t0 = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(max(n - 1, 0))))
    paths = [root / f"photo_{i:0{digits}d}.jpg" for i in range(n)]
    nproc = max(1, min(workers or os.cpu_count() or 1, max(1, n // 16)))
    chunk = max(1, min(256, math.ceil(n / (nproc * 4))))
    jobs = [
        (list(range(a, min(n, a + chunk))), seed, quality, [str(p) for p in paths[a : a + chunk]])
        for a in range(0, n, chunk)
    ]
    rows: list[tuple[int, str]] = []
    if nproc == 1:
        _init_photos(srcs, (w, h))
        for j in jobs:
            rows.extend(_crop_work(j))
    else:
        with mp_context().Pool(nproc, initializer=_init_photos, initargs=(srcs, (w, h))) as pool:
            for part in pool.imap_unordered(_crop_work, jobs):
                rows.extend(part)
    rows.sort()
    from facefleet.io.atomic import atomic_open

    with atomic_open(root / "manifest.tsv", "w") as fh:
        fh.write("file\tphoto\n")
        for (_, name), p in zip(rows, paths, strict=True):
            fh.write(f"{p.name}\t{name}\n")
    seconds = time.perf_counter() - t0
    meta = {"kind": "photos", "n": n, "resolution": [w, h], "quality": quality, "seed": seed}
    meta |= {"photos": [Path(s).name for s in srcs], "seconds": round(seconds, 3), "workers": nproc}
    with atomic_open(root / "corpus.json", "w") as fh:
        json.dump(meta, fh, indent=1)
    return Corpus(
        root=root,
        files=paths,
        faces=[],
        resolution=(w, h),
        quality=quality,
        seed=seed,
        seconds=seconds,
        sources={"photos": srcs},
        kind="photos",
    )


def mp_context() -> Any:
    """Process start method for the bench's CPU-only pools: fork on Linux (fast, and works when
    ``__main__`` is not a file, e.g. ``python -`` or a notebook, where spawn cannot start
    workers); the children never touch CUDA, so a parent that already uses torch is fine.
    Elsewhere spawn (the pool functions are importable module-level functions)."""
    return mp.get_context("fork" if sys.platform == "linux" else "spawn")


def read_manifest(root: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """[(file path, expected faces)] from ``root/manifest.tsv``."""
    r = Path(root)
    with open(r / "manifest.tsv", encoding="utf-8") as fh:
        return [(r / row["file"], int(row["faces"])) for row in csv.DictReader(fh, delimiter="\t")]
