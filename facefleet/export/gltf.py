"""Binary glTF 2.0 (``.glb``) writer for textured triangle meshes.

A self-contained writer (~150 lines) rather than a dependency (trimesh, pygltflib): a face mesh
needs one primitive per face with positions, normals, UVs, indices and an embedded PNG, and the
GLB container is a 12-byte header plus two length-prefixed chunks, so owning the code costs less
than pinning and shipping a general-purpose 3D library to every worker.

Layout written: one buffer (the BIN chunk); per mesh bufferViews for POSITION / NORMAL /
TEXCOORD_0 (target ARRAY_BUFFER), indices (ELEMENT_ARRAY_BUFFER) and the PNG image; each view
starts on a 4-byte boundary. One node per mesh in scene 0.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facefleet.export._mesh import prepare_mesh, vertex_normals
from facefleet.export.png import encode_png
from facefleet.io.atomic import atomic_write_bytes

__all__ = ["build_glb", "write_glb"]

_GLB_MAGIC = 0x46546C67  # b"glTF"
_CHUNK_JSON = 0x4E4F534A  # b"JSON"
_CHUNK_BIN = 0x004E4942  # b"BIN\0"
_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071

ArrayOrList = np.ndarray | Sequence[np.ndarray]


class _Bin:
    """Accumulates the BIN chunk and its bufferViews / accessors."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def view(self, payload: bytes, target: int | None = None) -> int:
        self.data.extend(b"\x00" * (-len(self.data) % 4))
        entry: dict[str, Any] = {"buffer": 0, "byteOffset": len(self.data), "byteLength": len(payload)}
        if target is not None:
            entry["target"] = target
        self.data.extend(payload)
        self.views.append(entry)
        return len(self.views) - 1

    def accessor(
        self, array: np.ndarray, component: int, kind: str, target: int, minmax: bool = False
    ) -> int:
        view = self.view(np.ascontiguousarray(array).tobytes(), target)
        entry: dict[str, Any] = {
            "bufferView": view,
            "componentType": component,
            "count": int(array.shape[0]),
            "type": kind,
        }
        if minmax:
            entry["min"] = [float(x) for x in array.min(axis=0)]
            entry["max"] = [float(x) for x in array.max(axis=0)]
        self.accessors.append(entry)
        return len(self.accessors) - 1


def _as_list(x: Any, n: int, what: str) -> list[Any]:
    if x is None or isinstance(x, np.ndarray):
        return [x] * n
    items = list(x)
    if len(items) != n:
        raise ValueError(f"write_glb: {len(items)} {what} for {n} meshes")
    return items


def build_glb(
    vertices: ArrayOrList,
    triangles: ArrayOrList,
    uv: ArrayOrList | None = None,
    texture: np.ndarray | Sequence[np.ndarray | None] | None = None,
    *,
    names: Sequence[str] | None = None,
    alpha_mode: Literal["MASK", "BLEND", "OPAQUE"] = "MASK",
    alpha_cutoff: float = 0.5,
    normals: bool = True,
    scale: float = 1.0,
    fix_winding: bool = True,
    png_compress_level: int = 6,
) -> bytes:
    """GLB bytes for one mesh or several (see :func:`write_glb`)."""
    multi = not isinstance(vertices, np.ndarray)
    verts: list[np.ndarray] = list(vertices) if multi else [np.asarray(vertices)]
    n = len(verts)
    if n == 0:
        raise ValueError("write_glb: no meshes given")
    tris = _as_list(triangles, n, "triangle arrays")
    uvs = _as_list(uv, n, "uv arrays")
    texs = _as_list(texture, n, "textures")
    mesh_names = (
        list(names) if names is not None else ([f"face_{i}" for i in range(n)] if multi else ["face"])
    )
    if len(mesh_names) != n:
        raise ValueError(f"write_glb: {len(mesh_names)} names for {n} meshes")
    if alpha_mode not in ("MASK", "BLEND", "OPAQUE"):
        raise ValueError(f"write_glb: alpha_mode must be MASK, BLEND or OPAQUE, got {alpha_mode!r}")

    b = _Bin()
    gltf: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "facefleet"},
        "scene": 0,
        "scenes": [{"name": "facefleet", "nodes": list(range(n))}],
        "nodes": [],
        "meshes": [],
        "materials": [],
    }
    images: list[dict[str, Any]] = []
    textures: list[dict[str, Any]] = []
    for i in range(n):
        m = prepare_mesh(verts[i], tris[i], uvs[i], texs[i], fix_winding=fix_winding)
        pos = (m.vertices * np.float32(scale)).astype(np.float32)
        attributes: dict[str, int] = {"POSITION": b.accessor(pos, _FLOAT, "VEC3", _ARRAY_BUFFER, minmax=True)}
        if normals and m.triangles.size:
            attributes["NORMAL"] = b.accessor(vertex_normals(pos, m.triangles), _FLOAT, "VEC3", _ARRAY_BUFFER)
        if m.uv is not None:
            attributes["TEXCOORD_0"] = b.accessor(m.uv.astype(np.float32), _FLOAT, "VEC2", _ARRAY_BUFFER)
        flat = m.triangles.reshape(-1)
        if pos.shape[0] < 65535:
            idx = b.accessor(flat.astype(np.uint16), _USHORT, "SCALAR", _ELEMENT_ARRAY_BUFFER)
        else:
            idx = b.accessor(flat.astype(np.uint32), _UINT, "SCALAR", _ELEMENT_ARRAY_BUFFER)
        material: dict[str, Any] = {
            "name": f"{mesh_names[i]}_material",
            "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0},
            "doubleSided": True,
        }
        if m.texture is not None and m.uv is not None:
            png = encode_png(m.texture, compress_level=png_compress_level)
            images.append(
                {"bufferView": b.view(png), "mimeType": "image/png", "name": f"{mesh_names[i]}_texture"}
            )
            textures.append({"sampler": 0, "source": len(images) - 1})
            material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": len(textures) - 1}
            material["alphaMode"] = alpha_mode
            if alpha_mode == "MASK":
                material["alphaCutoff"] = float(alpha_cutoff)
        gltf["materials"].append(material)
        gltf["meshes"].append(
            {
                "name": mesh_names[i],
                "primitives": [{"attributes": attributes, "indices": idx, "material": i, "mode": 4}],
            }
        )
        gltf["nodes"].append({"name": mesh_names[i], "mesh": i})
    if images:
        gltf["images"] = images
        gltf["textures"] = textures
        gltf["samplers"] = [
            {
                "magFilter": _LINEAR,
                "minFilter": _LINEAR_MIPMAP_LINEAR,
                "wrapS": _CLAMP_TO_EDGE,
                "wrapT": _CLAMP_TO_EDGE,
            }
        ]
    b.data.extend(b"\x00" * (-len(b.data) % 4))
    gltf["buffers"] = [{"byteLength": len(b.data)}]
    gltf["bufferViews"] = b.views
    gltf["accessors"] = b.accessors

    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(b.data)
    out = bytearray(struct.pack("<III", _GLB_MAGIC, 2, total))
    out += struct.pack("<II", len(js), _CHUNK_JSON) + js
    out += struct.pack("<II", len(b.data), _CHUNK_BIN) + b.data
    return bytes(out)


def write_glb(
    path: str | os.PathLike[str],
    vertices: ArrayOrList,
    triangles: ArrayOrList,
    uv: ArrayOrList | None = None,
    texture: np.ndarray | Sequence[np.ndarray | None] | None = None,
    *,
    names: Sequence[str] | None = None,
    alpha_mode: Literal["MASK", "BLEND", "OPAQUE"] = "MASK",
    alpha_cutoff: float = 0.5,
    normals: bool = True,
    scale: float = 1.0,
    fix_winding: bool = True,
    png_compress_level: int = 6,
) -> Path:
    """Write a binary glTF 2.0 file with one textured mesh per face; return the path.

    vertices: (V, 3) image coordinates (x right, y down, z toward the camera, pixels), or a list
    of such arrays for several faces (one node + mesh each); triangles: (F, 3) int, one array
    shared by all meshes or a list; uv: (V, 2) in [0, 1], origin top-left (glTF's own
    convention, written unchanged), shared or a list; texture: (T, T, 4) RGBA uint8, shared, a
    list (entries may be None) or None.

    Positions are converted to glTF's right-handed y-up frame as ``(x, -y, z) * scale`` (glTF
    units are metres; ``scale`` lets you go from pixels to something smaller), triangles are
    counter-clockwise seen from the front (+z, the camera side; see ``prepare_mesh``), and
    per-vertex NORMALs are added unless ``normals=False``. Textured materials use
    ``baseColorTexture`` with the given ``alpha_mode`` (MASK with ``alpha_cutoff`` by default,
    so texels never seen in the photo are cut out) and are double-sided.
    """
    data = build_glb(
        vertices,
        triangles,
        uv,
        texture,
        names=names,
        alpha_mode=alpha_mode,
        alpha_cutoff=alpha_cutoff,
        normals=normals,
        scale=scale,
        fix_winding=fix_winding,
        png_compress_level=png_compress_level,
    )
    return atomic_write_bytes(path, data)
