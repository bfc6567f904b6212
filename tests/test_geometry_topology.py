"""The shipped mesh topology, UV layout and 68-point map."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from facefleet.geometry import load_geometry


@pytest.fixture(scope="module")
def geo():  # type: ignore[no-untyped-def]
    return load_geometry()


def _directed_edges(tri: np.ndarray) -> list[tuple[int, int]]:
    return [(int(t[i]), int(t[(i + 1) % 3])) for t in tri for i in range(3)]


def _boundary_loops(tri: np.ndarray) -> list[list[int]]:
    directed = set(_directed_edges(tri))
    nxt = {a: b for a, b in directed if (b, a) not in directed}
    loops, seen = [], set()
    for s in nxt:
        if s in seen:
            continue
        loop = [s]
        seen.add(s)
        while nxt[loop[-1]] != s:
            loop.append(nxt[loop[-1]])
            seen.add(loop[-1])
        loops.append(loop)
    return loops


def test_shapes_and_ranges(geo) -> None:  # type: ignore[no-untyped-def]
    assert geo.canonical.shape == (468, 3) and geo.canonical.dtype == np.float32
    assert geo.uv.shape == (468, 2)
    assert geo.triangles.ndim == 2 and geo.triangles.shape[1] == 3
    assert geo.triangles.min() == 0 and geo.triangles.max() == 467
    assert geo.weights.shape == (468,) and (geo.weights >= 0).all()
    assert abs(float(geo.weights.mean()) - 1.0) < 1e-3
    # every vertex is used, no duplicate or degenerate triangle
    assert len(np.unique(geo.triangles)) == 468
    assert len({tuple(sorted(t)) for t in geo.triangles.tolist()}) == len(geo.triangles)
    assert all(len(set(t)) == 3 for t in geo.triangles.tolist())
    # documented units and frame: centred, face 15 wide, nose tip in front (max z) on the midline
    can = geo.canonical
    assert np.allclose(can.mean(0), 0, atol=1e-3)
    assert np.ptp(can[:, 0]) == pytest.approx(15.0, rel=1e-3)
    tip = int(np.argmax(can[:, 2]))
    assert abs(can[tip, 0]) < 0.2 and abs(can[tip, 1]) < np.ptp(can[:, 1]) / 3


def test_edge_manifold_oriented_connected(geo) -> None:  # type: ignore[no-untyped-def]
    tri = geo.triangles
    directed = Counter(_directed_edges(tri))
    assert max(directed.values()) == 1, "a directed edge used twice: inconsistent orientation"
    undirected = Counter(tuple(sorted(e)) for e in directed)
    assert max(undirected.values()) <= 2, "an edge shared by more than two triangles"
    # one connected component (union-find over triangle edges)
    parent = list(range(468))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in undirected:
        parent[find(a)] = find(b)
    assert len({find(i) for i in range(468)}) == 1
    # Euler characteristic of a disk with three holes
    v, e, f = 468, len(undirected), len(tri)
    assert v - e + f == 1 - 3
    # non-degenerate in 3D, and counter-clockwise seen from the camera (+z) for almost all
    can = geo.canonical.astype(np.float64)
    n = np.cross(can[tri[:, 1]] - can[tri[:, 0]], can[tri[:, 2]] - can[tri[:, 0]])
    area = 0.5 * np.linalg.norm(n, axis=1)
    assert area.min() > 1e-3 * np.median(area)
    assert (n[:, 2] > 0).mean() > 0.97
    # the area-weighted mean normal points at the camera
    mean_n = n.sum(0)
    assert mean_n[2] / np.linalg.norm(mean_n) > 0.9


def test_four_boundary_loops_at_face_outline_eyes_mouth(geo) -> None:  # type: ignore[no-untyped-def]
    loops = _boundary_loops(geo.triangles)
    assert len(loops) == 4
    can = geo.canonical
    outer = max(loops, key=lambda lp: float(np.ptp(can[lp, 0])))
    holes = [lp for lp in loops if lp is not outer]
    assert np.ptp(can[outer, 0]) > 0.95 * np.ptp(can[:, 0])
    cents = {i: can[lp].mean(0) for i, lp in enumerate(holes)}
    mouth = min(cents, key=lambda i: cents[i][1])
    eyes = sorted((i for i in cents if i != mouth), key=lambda i: cents[i][0])
    nose_y = can[int(np.argmax(can[:, 2])), 1]
    # mouth below the nose tip on the midline; eyes above it, one each side, symmetric
    assert cents[mouth][1] < nose_y and abs(cents[mouth][0]) < 0.2
    r, left = cents[eyes[0]], cents[eyes[1]]
    assert r[1] > nose_y and left[1] > nose_y
    assert r[0] < -2.0 and left[0] > 2.0
    assert abs(r[0] + left[0]) < 0.2 and abs(r[1] - left[1]) < 0.2
    # the shipped contour arrays are exactly these loops
    assert sorted(map(sorted, holes)) == sorted(
        sorted(x.tolist()) for x in (geo.eye_right, geo.eye_left, geo.mouth)
    )
    assert can[geo.eye_right, 0].mean() < 0 < can[geo.eye_left, 0].mean()


def test_uv_in_unit_square_without_flips(geo) -> None:  # type: ignore[no-untyped-def]
    uv = geo.uv.astype(np.float64)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    tri = geo.triangles
    a, b, c = uv[tri[:, 0]], uv[tri[:, 1]], uv[tri[:, 2]]
    signed = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    # v points down, so the camera-CCW triangles are all clockwise (negative) in (u, v)
    assert (signed < 0).all()
    # forehead at the top of the texture (small v), chin at the bottom
    can = geo.canonical
    assert uv[np.argmax(can[:, 1]), 1] < 0.2 and uv[np.argmin(can[:, 1]), 1] > 0.8
    # non-overlapping layout: total UV area equals the area of the outline polygon minus holes
    loops = _boundary_loops(tri)

    def poly_area(lp: list[int]) -> float:
        p = uv[lp]
        return 0.5 * float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))

    assert abs(signed).sum() / 2 == pytest.approx(abs(sum(poly_area(lp) for lp in loops)), rel=1e-6)


def test_mirror_pairs(geo) -> None:  # type: ignore[no-untyped-def]
    m = geo.mirror
    assert (m[m] == np.arange(468)).all()
    refl = geo.canonical[m] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(refl - geo.canonical).max() < 1e-4


def test_landmarks68_map(geo) -> None:  # type: ignore[no-untyped-def]
    idx = geo.landmarks68_index
    assert idx.shape == (68,) and idx.min() >= 0 and idx.max() < 468
    assert len(set(idx.tolist())) >= 66
    can = geo.canonical
    pts = can[idx]
    # iBUG left/right pairs map to mirrored vertices; midline points lie on the midline
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    pairs += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]
    for a, b in pairs:
        assert geo.mirror[idx[a]] == idx[b], (a, b)
        assert pts[a, 0] < 0 < pts[b, 0], (a, b)  # iBUG 0-7 etc. are the subject's right (x < 0)
    for i in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert abs(pts[i, 0]) < 1e-4, i
    # vertical order: brows above eyes above nose tip above mouth above chin
    assert pts[17:27, 1].mean() > pts[36:48, 1].mean() > pts[30, 1] > pts[48:68, 1].mean() > pts[8, 1]
    # nose bridge runs down toward the tip, which is the most forward nose point
    assert pts[27, 1] > pts[28, 1] > pts[29, 1] > pts[30, 1]
    # inner-lip points lie on the mouth-opening contour
    assert set(idx[60:68].tolist()) <= set(geo.mouth.tolist())
