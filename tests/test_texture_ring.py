"""Textures to the writer processes through shared memory (facefleet.engine.worker.texture_ring)."""

from __future__ import annotations

import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facefleet.engine.worker.texture_ring import TextureRef, TextureRing, resolve


def _checksum(ref: TextureRef) -> tuple[int, tuple[int, ...]]:
    arr = resolve(ref)
    return int(arr.astype(np.int64).sum()), arr.shape


def test_slots_are_read_by_writer_processes() -> None:
    ring = TextureRing(2, 3 * 8 * 8 * 4)
    try:
        a, b = ring.take(1.0), ring.take(1.0)
        assert {a, b} == {0, 1} and ring.take(0.01) is None  # both taken: none free
        tex = ring.views[b][: 3 * 8 * 8 * 4].reshape(3, 8, 8, 4)
        tex[:] = np.arange(tex.size, dtype=np.int64).reshape(tex.shape) % 251
        refs = [ring.ref(tex[k]) for k in range(3)]
        assert all(r is not None for r in refs) and refs[1].offset == 8 * 8 * 4  # type: ignore[union-attr]
        assert ring.ref(np.zeros((8, 8, 4), np.uint8)) is None  # not in a slot: sent as it is
        assert ring.ref(tex[:, :, :4]) is None  # not contiguous
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            got = list(pool.map(_checksum, refs))
        assert got == [(int(tex[k].astype(np.int64).sum()), (8, 8, 4)) for k in range(3)]
        ring.release(b)
        assert ring.take(1.0) == b
    finally:
        del tex
        ring.close()


def test_reconstructor_copies_textures_into_the_given_buffer(astronaut: np.ndarray) -> None:
    from facefleet.pipeline import Reconstructor

    rec = Reconstructor(device="cpu", texture_size=64)
    img = torch.from_numpy(astronaut).permute(2, 0, 1)
    plain = rec.reconstruct_tensors([img], ["a"], texture=True)[0].faces[0].texture
    out = np.zeros(2 * 64 * 64 * 4, np.uint8)
    face = rec.reconstruct_tensors([img], ["a"], texture=True, texture_out=out)[0].faces[0]
    assert np.array_equal(face.texture, plain) and np.shares_memory(face.texture, out)
    small = np.zeros(100, np.uint8)  # too small: the textures get memory of their own
    face = rec.reconstruct_tensors([img], ["a"], texture=True, texture_out=small)[0].faces[0]
    assert np.array_equal(face.texture, plain) and not np.shares_memory(face.texture, small)
    # room for one texture of two images' faces: the first goes in, the second gets its own memory
    one = np.zeros(64 * 64 * 4 + 10, np.uint8)
    a, b = rec.reconstruct_tensors([img, img.flip(2)], ["a", "b"], texture=True, texture_out=one)
    assert np.shares_memory(a.faces[0].texture, one) and not np.shares_memory(b.faces[0].texture, one)
    assert np.array_equal(a.faces[0].texture, plain)


@pytest.mark.slow
def test_engine_writes_the_same_textures_through_the_ring(tmp_path: Path) -> None:
    """Per-image OBJ + PNG written by processes (as GPU workers do), textures through the ring: the same
    files as with writer threads."""
    from facefleet.engine import run

    sys.path.insert(0, str(Path(__file__).parent))
    from test_engine_support import make_corpus

    inp = tmp_path / "in"
    make_corpus(inp, 12)
    outs = {}
    for procs in (False, True):
        out = outs[procs] = tmp_path / f"out{int(procs)}"
        summary = run(
            str(inp), out, devices="cpu", workers=1, batch_size=4, quiet=True, formats=["obj", "png"],
            texture_size=64, config={"run": {"file_processes": procs}},
        )  # fmt: skip
        assert summary.images == 12 and summary.failed == 0
    a = sorted((outs[False] / "files").rglob("*.png"))
    b = sorted((outs[True] / "files").rglob("*.png"))
    assert [p.relative_to(outs[False]) for p in a] == [p.relative_to(outs[True]) for p in b] and len(a) >= 4
    for pa, pb in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    objs = sorted((outs[True] / "files").rglob("*.obj"))
    assert len(objs) == len(a)


@pytest.mark.slow
@pytest.mark.shared_data
def test_faces_beyond_a_slot_go_pickled(tmp_path: Path, shared_data: Path) -> None:
    """A slot holds one texture per image of a batch; a photo with two faces in a batch of one sends the
    first face's texture through the slot and the second pickled: both written, as with writer threads."""
    import shutil

    from facefleet.engine import run

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(shared_data / "images" / "face_recognition_two_people.jpg", inp / "two.jpg")
    pngs = {}
    for procs in (False, True):
        out = tmp_path / f"out{int(procs)}"
        run(
            str(inp), out, devices="cpu", workers=1, batch_size=1, quiet=True, formats=["png"],
            texture_size=64, config={"run": {"file_processes": procs}},
        )  # fmt: skip
        pngs[procs] = sorted((out / "files").rglob("*.png"))
    assert (
        [p.name for p in pngs[True]]
        == [p.name for p in pngs[False]]
        == [
            "two.jpg_face0_texture.png",
            "two.jpg_face1_texture.png",
        ]
    )
    for pa, pb in zip(pngs[False], pngs[True], strict=True):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
