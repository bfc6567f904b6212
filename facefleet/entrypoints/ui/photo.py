"""The UI's photo tab without the widgets: one uploaded photo through the service's batchers (the same
path as ``POST /v1/reconstruct``) -> its overlay, a textured GLB for the 3D viewer, a per-face summary
and the files to download (GLB, the per-image JSON, the OBJ meshes zipped with their materials and
textures).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facefleet.entrypoints.service.keys import ApiKey
from facefleet.entrypoints.service.uploads import HttpError
from facefleet.types import ImageResult

if TYPE_CHECKING:
    from facefleet.entrypoints.service.core import Service

#: columns of the per-face summary table
FACE_COLUMNS = ["face", "score", "yaw °", "pitch °", "roll °", "box x0, y0, x1, y1", "landmarks"]


@dataclass(frozen=True)
class PhotoView:
    """What the photo tab shows for one photo. ``overlay``: (H, W, 3) uint8 (the photo itself when no
    face was found); ``glb``: the textured meshes of every face (None without faces); ``downloads``:
    GLB, JSON and the OBJ zip; ``rows``: one row of :data:`FACE_COLUMNS` per face; ``note``: a line for
    the user (faces found, or why none)."""

    overlay: np.ndarray
    glb: Path | None
    downloads: list[Path]
    rows: list[list[Any]]
    note: str


def reconstruct_photo(service: Service, key: ApiKey, path: str | Path, scratch: Path) -> PhotoView:
    """Reconstruct the faces of the photo at ``path`` for ``key`` (charged one image, as the REST route
    is) and write its files into ``scratch`` (a fresh folder). Raises the service's ``HttpError`` for a
    photo it refuses (not an image, too many pixels, quota, warming up)."""
    path = Path(path)
    stem = _stem(path.name)
    service.charge(key, 1)
    reply = service.reconstruct(path.read_bytes(), path.name, texture=True, keep_image=True)
    result: ImageResult = reply.result
    if result.error:
        raise HttpError(422, result.error)
    image = reply.image
    assert image is not None  # keep_image=True
    if not result.faces:
        downloads = _write(result, image, scratch, stem, {"json"})
        return PhotoView(image, None, downloads, [], f"{path.name}: no face found")
    written = _write(result, image, scratch, stem, {"json", "obj", "glb"})
    glb = next(p for p in written if p.suffix == ".glb")
    json_file = next(p for p in written if p.suffix == ".json")
    objs = _zip_objs([p for p in written if p.suffix == ".obj"], scratch / f"{stem}_obj.zip")
    n = len(result.faces)
    note = f"{path.name}: {n} face{'s' if n != 1 else ''}, {result.width}x{result.height} pixels"
    return PhotoView(_overlay(image, result), glb, [glb, json_file, objs], face_rows(result), note)


def face_rows(result: ImageResult) -> list[list[Any]]:
    """One row of :data:`FACE_COLUMNS` per face: score, pose in degrees, box in pixels, landmark count."""
    rows = []
    for k, f in enumerate(result.faces):
        box = ", ".join(f"{v:.0f}" for v in np.asarray(f.bbox, dtype=float))
        pose = [round(float(a), 1) for a in (f.pose.yaw, f.pose.pitch, f.pose.roll)]
        rows.append([k, round(float(f.score), 3), *pose, box, len(f.landmarks)])
    return rows


def _write(result: ImageResult, image: np.ndarray, folder: Path, stem: str, formats: set[str]) -> list[Path]:
    from facefleet.outputs import write_outputs

    folder.mkdir(parents=True, exist_ok=True)
    return write_outputs(result, image, folder, stem, formats)


def _zip_objs(objs: list[Path], target: Path) -> Path:
    """Zip each OBJ with the MTL and texture PNG it references (files named after the OBJ)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for obj in objs:
            for suffix in (".obj", ".mtl", ".png"):
                part = obj.with_suffix(suffix)
                if part.is_file():
                    z.write(part, part.name)
    return target


def _overlay(image: np.ndarray, result: ImageResult) -> np.ndarray:
    """The photo with each face's mesh, box and pose axes drawn: (H, W, 3) uint8."""
    from facefleet.export import mesh_topology, render_overlay

    tri, _ = mesh_topology(len(result.faces[0].landmarks))
    return render_overlay(image, result.faces, tri)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _stem(name: str) -> str:
    """A file stem for a photo's outputs: its name without suffix or odd characters."""
    return _UNSAFE.sub("_", Path(name).stem).strip("._") or "photo"
