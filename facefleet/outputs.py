"""Per-image output files shared by every runner (``reconstruct``, ``demo``, the batch engine).

Formats: ``json`` (the per-image contract of DESIGN.md), ``obj`` (OBJ + MTL + texture PNG per
face; with ``png`` too, the material references the ``png`` output instead of a copy), ``glb`` (one
binary glTF per image, one textured mesh node per face), ``png`` (the UV texture of each face) and
``overlay`` (mesh wireframe, box and pose axes drawn on the photo).
Every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facefleet.types import ImageResult

TEXTURE_FORMATS = frozenset({"obj", "glb", "png"})


def needs_texture(formats: set[str] | frozenset[str]) -> bool:
    return bool(TEXTURE_FORMATS & set(formats))


def write_outputs(
    result: ImageResult,
    image: np.ndarray | None,
    out_dir: Path,
    stem: str,
    formats: set[str] | frozenset[str],
) -> list[Path]:
    """Write the files of ``formats`` for one image as ``out_dir/stem[...]``; return their paths.

    image: (H, W, 3) uint8, needed only for the overlay. Faces' landmarks are (V, 3) with V from
    their model family (every face of one image comes from one family). Faces carry their texture when the
    reconstructor was asked for one (``texture=True``); without it meshes are written untextured.
    """
    from facefleet.export import mesh_topology, render_overlay, write_glb, write_json, write_obj, write_png

    out_dir = Path(out_dir)
    written: list[Path] = []
    if "json" in formats:
        written.append(write_json(out_dir / f"{stem}.json", result))
    if result.error or not result.faces:
        return written
    # triangles and UVs of the faces' model family (468 points: MediaPipe's mesh; 478: the attention
    # mesh, whose iris points are loose vertices)
    tri, uv = mesh_topology(len(result.faces[0].landmarks))
    for k, face in enumerate(result.faces):
        name = f"{stem}_face{k}"
        tex_file = None
        if face.texture is not None and "png" in formats:
            tex_file = out_dir / f"{name}_texture.png"
            written.append(write_png(tex_file, face.texture))
        if "obj" in formats:  # with png too, the material uses that file: one texture on disk, not two
            written.append(
                write_obj(out_dir / name, face.landmarks, tri, uv, face.texture, texture_file=tex_file)
            )
    if "glb" in formats:
        written.append(
            write_glb(
                out_dir / f"{stem}.glb",
                [f.landmarks for f in result.faces],
                tri,
                uv,
                [f.texture for f in result.faces],
                names=[f"face{k}" for k in range(len(result.faces))],
            )
        )
    if "overlay" in formats and image is not None:
        written.append(write_png(out_dir / f"{stem}_overlay.png", render_overlay(image, result.faces, tri)))
    return written
