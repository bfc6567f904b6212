"""OBJ and GLB export: files parse back (by hand and with trimesh) with the right counts,
coordinates, UV conventions, winding and embedded texture."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefleet.export import build_glb, obj_paths, write_glb, write_obj


def _dome(n: int = 9, cx: float = 300.0, cy: float = 200.0, r: float = 80.0, flip: bool = False):
    """A face-like dome in image coordinates: (V, 3) vertices (z toward camera), (F, 3) triangles,
    (V, 2) uv (origin top-left), (32, 32, 4) RGBA texture."""
    s = np.linspace(-1.0, 1.0, n)
    gx, gy = np.meshgrid(s, s)  # gy grows downward like image rows
    z = np.sqrt(np.clip(1.5 - gx**2 - gy**2, 0, None))
    verts = np.stack([cx + r * gx, cy + r * gy, r * z], axis=-1).reshape(-1, 3)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    if flip:
        tris = tris[:, [0, 2, 1]]
    uv = np.stack([(gx + 1) / 2, (gy + 1) / 2], axis=-1).reshape(-1, 2)
    tex = np.zeros((32, 32, 4), np.uint8)
    tex[..., 0] = np.arange(32)[None, :] * 8
    tex[..., 1] = np.arange(32)[:, None] * 8
    tex[..., 3] = 255
    tex[:4, :4, 3] = 0
    return verts, tris.astype(np.int32), uv, tex


def _front_area(v_yup: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v_yup[f[:, 0]], v_yup[f[:, 1]], v_yup[f[:, 2]]
    return float(np.cross(b - a, c - a)[:, 2].sum())


def _parse_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    v, vt, f, other = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0] == "#":
            continue
        if parts[0] == "v":
            v.append([float(x) for x in parts[1:]])
        elif parts[0] == "vt":
            vt.append([float(x) for x in parts[1:]])
        elif parts[0] == "f":
            f.append([[int(i) for i in p.split("/")] for p in parts[1:]])
        else:
            other.append(line)
    return np.array(v), np.array(vt), np.array(f), other


@pytest.mark.parametrize("flip", [False, True])
def test_obj_roundtrip_by_hand(tmp_path: Path, flip: bool) -> None:
    verts, tris, uv, tex = _dome(flip=flip)
    obj = write_obj(tmp_path / "out" / "face", verts, tris, uv, tex)
    obj_p, mtl_p, png_p = obj_paths(tmp_path / "out" / "face.obj")
    assert obj == obj_p and obj_p.exists() and mtl_p.exists() and png_p.exists()
    v, vt, f, other = _parse_obj(obj_p)
    assert v.shape == verts.shape and f.shape == (len(tris), 3, 2)
    np.testing.assert_allclose(v, verts * [1, -1, 1], atol=1e-5)
    np.testing.assert_allclose(vt[:, 0], uv[:, 0], atol=1e-6)
    np.testing.assert_allclose(vt[:, 1], 1.0 - uv[:, 1], atol=1e-6)
    assert f.min() == 1 and f.max() == len(verts)  # 1-based
    assert (f[..., 0] == f[..., 1]).all()  # v and vt indices agree
    faces0 = f[..., 0] - 1
    assert sorted(map(tuple, np.sort(faces0, axis=1))) == sorted(map(tuple, np.sort(tris, axis=1)))
    assert _front_area(v, faces0) > 0  # counter-clockwise seen from +z, whatever the input order
    assert "mtllib face.mtl" in other and "usemtl face" in other
    assert "map_Kd face.png" in mtl_p.read_text().splitlines()
    assert np.array_equal(np.asarray(Image.open(png_p)), tex)


def test_obj_sections_of_several_meshes_in_one_process(tmp_path: Path) -> None:
    """The UV and face sections are formatted once per distinct mesh layout and reused: writing
    meshes of other layouts in between must not mix them up."""
    meshes = [_dome(n=5), _dome(n=7), _dome(n=5, flip=True), _dome(n=5)]
    for k, (verts, tris, uv, tex) in enumerate(meshes):
        obj = write_obj(tmp_path / f"m{k}", verts * (k + 1), tris, uv if k != 1 else uv[::-1], tex)
        v, vt, f, _ = _parse_obj(obj)
        np.testing.assert_allclose(v, verts * (k + 1) * [1, -1, 1], atol=1e-4)
        np.testing.assert_allclose(vt[:, 1], 1.0 - (uv if k != 1 else uv[::-1])[:, 1], atol=1e-6)
        faces0 = f[..., 0] - 1
        assert sorted(map(tuple, np.sort(faces0, axis=1))) == sorted(map(tuple, np.sort(tris, axis=1)))


def test_obj_loads_in_trimesh(tmp_path: Path) -> None:
    trimesh = pytest.importorskip("trimesh")
    verts, tris, uv, tex = _dome()
    obj = write_obj(tmp_path / "face.obj", verts, tris, uv, tex)
    mesh = trimesh.load(obj, process=False, maintain_order=True)
    assert len(mesh.vertices) == len(verts) and len(mesh.faces) == len(tris)
    np.testing.assert_allclose(mesh.vertices, verts * [1, -1, 1], atol=1e-5)
    np.testing.assert_allclose(mesh.visual.uv[:, 1], 1.0 - uv[:, 1], atol=1e-6)
    image = mesh.visual.material.image
    assert image is not None and image.size == (32, 32)


def test_obj_material_can_use_an_existing_texture_file(tmp_path: Path) -> None:
    """With ``texture_file`` (the png output of the same face) no second copy of the texture is written
    and the material points at that file; viewers load it."""
    trimesh = pytest.importorskip("trimesh")
    verts, tris, uv, tex = _dome()
    Image.fromarray(tex).save(tmp_path / "face_texture.png")
    obj = write_obj(tmp_path / "face", verts, tris, uv, tex, texture_file=tmp_path / "face_texture.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face_texture.png"]
    assert "map_Kd face_texture.png" in (tmp_path / "face.mtl").read_text().splitlines()
    mesh = trimesh.load(obj, process=False, maintain_order=True)
    assert mesh.visual.material.image is not None and mesh.visual.material.image.size == (32, 32)


def test_obj_without_texture(tmp_path: Path) -> None:
    verts, tris, _, _ = _dome()
    obj = write_obj(tmp_path / "plain", verts, tris)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.obj"]
    _, vt, f, other = _parse_obj(obj)
    assert len(vt) == 0 and f.shape == (len(tris), 3, 1) and not any(o.startswith("mtllib") for o in other)


def test_obj_validation(tmp_path: Path) -> None:
    verts, tris, uv, _ = _dome()
    with pytest.raises(ValueError, match="out of range"):
        write_obj(tmp_path / "bad", verts, tris + len(verts))
    with pytest.raises(ValueError, match="uv"):
        write_obj(tmp_path / "bad", verts, tris, uv[:-1])
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- GLB


def _read_glb(data: bytes) -> tuple[dict, bytes]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    gltf = json.loads(data[20 : 20 + jlen])
    blen, btype = struct.unpack_from("<II", data, 20 + jlen)
    assert btype == 0x004E4942 and blen % 4 == 0
    binary = data[28 + jlen : 28 + jlen + blen]
    assert 28 + jlen + blen == len(data)
    assert gltf["buffers"][0]["byteLength"] == blen
    return gltf, binary


_DTYPES = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}


def _accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    assert view["byteOffset"] % 4 == 0
    dtype = np.dtype(_DTYPES[acc["componentType"]])
    width = _WIDTH[acc["type"]]
    raw = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    arr = np.frombuffer(raw, dtype=dtype).reshape(-1, width)
    assert len(arr) == acc["count"]
    return arr


def test_glb_structure(tmp_path: Path) -> None:
    verts, tris, uv, tex = _dome()
    path = write_glb(tmp_path / "face.glb", verts, tris, uv, tex)
    gltf, binary = _read_glb(path.read_bytes())
    assert gltf["asset"]["version"] == "2.0"
    prim = gltf["meshes"][0]["primitives"][0]
    pos = _accessor(gltf, binary, prim["attributes"]["POSITION"])
    np.testing.assert_allclose(pos, verts * [1, -1, 1], rtol=1e-6, atol=1e-4)
    acc = gltf["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_allclose(acc["min"], pos.min(axis=0))
    np.testing.assert_allclose(acc["max"], pos.max(axis=0))
    np.testing.assert_allclose(_accessor(gltf, binary, prim["attributes"]["TEXCOORD_0"]), uv, atol=1e-6)
    normals = _accessor(gltf, binary, prim["attributes"]["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    faces = _accessor(gltf, binary, prim["indices"]).reshape(-1, 3).astype(np.int64)
    assert faces.shape == tris.shape and faces.max() < len(verts)
    assert _front_area(pos, faces) > 0
    assert normals[len(verts) // 2, 2] > 0.9  # the dome's apex faces the camera (+z)
    material = gltf["materials"][prim["material"]]
    assert material["alphaMode"] in ("MASK", "BLEND") and material["doubleSided"] is True
    tex_index = material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    image = gltf["images"][gltf["textures"][tex_index]["source"]]
    assert image["mimeType"] == "image/png"
    view = gltf["bufferViews"][image["bufferView"]]
    png = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), tex)


def test_glb_several_faces_and_trimesh(tmp_path: Path) -> None:
    v1, tris, uv, tex = _dome()
    v2 = v1 + np.array([200.0, 50.0, 0.0])
    path = write_glb(tmp_path / "two.glb", [v1, v2], tris, [uv, uv], [tex, None], alpha_mode="BLEND")
    gltf, _ = _read_glb(path.read_bytes())
    assert len(gltf["nodes"]) == 2 and len(gltf["meshes"]) == 2 and gltf["scenes"][0]["nodes"] == [0, 1]
    assert len(gltf["images"]) == 1
    assert "baseColorTexture" not in gltf["materials"][1]["pbrMetallicRoughness"]
    assert gltf["materials"][0]["alphaMode"] == "BLEND"
    trimesh = pytest.importorskip("trimesh")
    scene = trimesh.load(path, process=False)
    geoms = list(scene.geometry.values())
    assert len(geoms) == 2
    assert sorted(len(g.vertices) for g in geoms) == [len(v1)] * 2
    assert all(len(g.faces) == len(tris) for g in geoms)
    textured = [g for g in geoms if getattr(g.visual, "uv", None) is not None]
    assert textured
    mat = textured[0].visual.material
    img = getattr(mat, "baseColorTexture", None)
    assert img is not None and img.size == (32, 32)


def test_glb_uint32_indices_for_large_meshes() -> None:
    n = 300
    verts, tris, uv, _ = _dome(n=n)  # 90000 vertices > 65535
    gltf, binary = _read_glb(build_glb(verts, tris, uv, normals=False))
    prim = gltf["meshes"][0]["primitives"][0]
    assert gltf["accessors"][prim["indices"]]["componentType"] == 5125
    assert "NORMAL" not in prim["attributes"]
    faces = _accessor(gltf, binary, prim["indices"]).reshape(-1, 3)
    assert faces.max() == len(verts) - 1


def test_glb_scale_and_errors(tmp_path: Path) -> None:
    verts, tris, uv, tex = _dome()
    gltf, binary = _read_glb(build_glb(verts, tris, uv, tex, scale=0.001))
    pos = _accessor(gltf, binary, gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    np.testing.assert_allclose(pos, verts * [0.001, -0.001, 0.001], rtol=1e-5)
    with pytest.raises(ValueError, match="meshes"):
        build_glb([verts, verts], [tris], uv)
    with pytest.raises(ValueError, match="triangles"):
        build_glb(verts, tris.astype(np.float32), uv)
