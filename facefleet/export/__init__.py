"""facefleet.export: writers for meshes (OBJ, GLB), JSON results, PNG images and overlays.

Inputs are plain arrays in image coordinates (pixels after EXIF orientation, origin top-left,
x right, y down, z toward the camera); every file is written atomically.
"""

from facefleet.export.gltf import build_glb, write_glb
from facefleet.export.jsonfile import result_to_json, write_json
from facefleet.export.obj import obj_paths, write_obj
from facefleet.export.overlay import OverlayFace, pose_axes_2d, render_overlay
from facefleet.export.png import encode_png, write_png
from facefleet.export.topology import mesh_topology

__all__ = [
    "OverlayFace",
    "build_glb",
    "encode_png",
    "mesh_topology",
    "obj_paths",
    "pose_axes_2d",
    "render_overlay",
    "result_to_json",
    "write_glb",
    "write_json",
    "write_obj",
    "write_png",
]
