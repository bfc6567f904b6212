"""The decoder process: reads and decodes batches into slots shared with the worker (CPU shared memory
here; CUDA IPC on GPUs, see the GPU test at the end)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facefleet.engine.worker.decode_proc import DecoderProcess, DecoderProcessError
from facefleet.io.decode import decode_image


def _jpeg(arr: np.ndarray, path: Path) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    path.write_bytes(buf.getvalue())
    return str(path)


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _views(d, slot: torch.Tensor) -> list:  # what the worker makes of an answer
    out = []
    for it in d.items:
        if it[0] == "slot":
            out.append(slot[it[1] : it[1] + math.prod(it[2])].view(it[2]))
        else:
            out.append(it)
    return out


@pytest.fixture
def slots() -> list[torch.Tensor]:
    return [torch.zeros(600_000, dtype=torch.uint8).share_memory_() for _ in range(2)]


def test_batches_land_in_the_shared_slots(tmp_path: Path, astronaut: np.ndarray, slots) -> None:
    a = _jpeg(astronaut[:200, :300], tmp_path / "a.jpg")
    b = _jpeg(astronaut[100:300, 50:350], tmp_path / "b.jpg")
    small = _jpeg(astronaut[:64, :80], tmp_path / "small.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(Path(a).read_bytes()[:300])
    proc = DecoderProcess(slots, decoder="cpu", readers=2).start().wait_ready()
    try:
        proc.read(0, [a, b])
        proc.read(
            1,
            [
                small,
                str(tmp_path / "empty.jpg"),
                str(tmp_path / "missing.jpg"),
                a,
                str(tmp_path / "broken.jpg"),
            ],
        )
        first = proc.decode(0, 0).result(timeout=60)
        second = proc.decode(1, 1).result(timeout=60)
    finally:
        proc.close()
    # same size: one stacked block from the start of the slot, pixels as the in-process decoder has them
    assert first.stacked and first.batch == 0
    for got, path in zip(_views(first, slots[0]), [a, b], strict=True):
        want = decode_image(Path(path).read_bytes(), path)
        assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1))
    assert first.items[1][1] == 3 * 200 * 300
    # mixed sizes and failures: each image on an aligned offset, each failure with its reason
    assert not second.stacked
    kinds = [it[0] for it in second.items]
    assert kinds == ["slot", "error", "error", "slot", "error"]
    assert second.items[3][1] % 512 == 0
    got = _views(second, slots[1])
    assert torch.equal(got[3], torch.from_numpy(decode_image(Path(a).read_bytes(), a)).permute(2, 0, 1))
    assert "empty" in second.items[1][1].reason
    assert "No such file" in second.items[2][1].reason or "not found" in second.items[2][1].reason
    assert second.items[4][1].source.endswith("broken.jpg")


def test_a_batch_waits_for_its_slot_and_lands_in_the_one_placed(
    tmp_path: Path, astronaut: np.ndarray, slots
) -> None:
    # the worker asks for the decoding when the batch is cut and gives a slot once the networks free
    # one: the child answers only then, with the images in that slot, and the slot is untouched before
    a = _jpeg(astronaut[:120, :160], tmp_path / "a.jpg")
    proc = DecoderProcess(slots, decoder="cpu").start().wait_ready()
    try:
        proc.read(0, [a])
        fut = proc.decode(0)
        with pytest.raises(TimeoutError):
            fut.result(timeout=2)
        assert not slots[1].any()
        proc.place(0, 1)
        d = fut.result(timeout=60)
    finally:
        proc.close()
    want = torch.from_numpy(decode_image(Path(a).read_bytes(), a)).permute(2, 0, 1)
    assert torch.equal(_views(d, slots[1])[0], want)
    assert not slots[0].any()
    assert d.slot_wait_seconds > 1 and d.decode_seconds < d.slot_wait_seconds  # its 2 s wait, told apart


def test_two_decode_threads_answer_every_batch_in_its_slot(
    tmp_path: Path, astronaut: np.ndarray, slots
) -> None:
    # [gpu] decode_threads = 2: batches are decoded two at a time; each still lands in the slot placed
    # for it, whatever order the threads finish in
    files = [_jpeg(astronaut[k * 40 : k * 40 + 100, :150], tmp_path / f"{k}.jpg") for k in range(4)]
    proc = DecoderProcess(slots, decoder="cpu", threads=2).start().wait_ready()
    try:
        for b, f in enumerate(files):
            proc.read(b, [f])
        futs = [proc.decode(b) for b in range(4)]
        got = []
        for b in range(4):
            proc.place(b, b % 2)
            d = futs[b].result(timeout=60)
            assert d.batch == b
            got.append(_views(d, slots[b % 2])[0].clone())  # the slot is reused two batches later
    finally:
        proc.close()
    for g, f in zip(got, files, strict=True):
        assert torch.equal(g, torch.from_numpy(decode_image(Path(f).read_bytes(), f)).permute(2, 0, 1))


def test_images_larger_than_the_slot_come_back_encoded(tmp_path: Path, astronaut: np.ndarray) -> None:
    big = _jpeg(astronaut, tmp_path / "big.jpg")  # 786 KB decoded
    small = _jpeg(astronaut[:100, :100], tmp_path / "small.jpg")
    slot = torch.zeros(100_000, dtype=torch.uint8).share_memory_()
    proc = DecoderProcess([slot], decoder="cpu").start().wait_ready()
    try:
        proc.read(5, [small, big])
        d = proc.decode(5, 0).result(timeout=60)
        assert [it[0] for it in d.items] == ["slot", "encoded"]
        assert d.items[1][1] == Path(big).read_bytes()
        assert d.needed == -(-3 * 100 * 100 // 512) * 512 + 3 * 512 * 512  # both images, aligned
        # the worker grows the slot (while it holds it free): the same batch then fits
        bigger = torch.zeros(d.needed, dtype=torch.uint8).share_memory_()
        proc.replace_slot(0, bigger)
        proc.read(6, [small, big])
        again = proc.decode(6, 0).result(timeout=60)
    finally:
        proc.close()
    assert [it[0] for it in again.items] == ["slot", "slot"]
    got = _views(again, bigger)[1]
    assert torch.equal(got, torch.from_numpy(decode_image(Path(big).read_bytes(), big)).permute(2, 0, 1))


def test_a_dead_decoder_process_fails_its_batches(tmp_path: Path, astronaut: np.ndarray, slots) -> None:
    a = _jpeg(astronaut[:50, :50], tmp_path / "a.jpg")
    proc = DecoderProcess(slots, decoder="cpu").start().wait_ready()
    try:
        os.kill(proc._proc.pid, signal.SIGKILL)
        proc._proc.join(10)
        with pytest.raises(DecoderProcessError):
            proc.read(0, [a])
            proc.decode(0, 0).result(timeout=30)
    finally:
        proc.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC needs a GPU")
def test_cuda_slots_are_shared_with_the_decoder_process(shared_data: Path) -> None:
    files = sorted(str(p) for p in (shared_data / "images").rglob("*.jpg"))[:6]
    slot = torch.zeros(64 << 20, dtype=torch.uint8, device="cuda")
    proc = DecoderProcess([slot]).start().wait_ready()
    try:
        proc.read(0, files)
        d = proc.decode(0, 0).result(timeout=120)
    finally:
        proc.close()
    for got, path in zip(_views(d, slot), files, strict=True):
        want = torch.from_numpy(decode_image(Path(path).read_bytes(), path)).permute(2, 0, 1)
        assert got.shape == want.shape
        assert (got.cpu().int() - want.int()).abs().float().mean() < 1.0  # the GPU decoder vs Pillow


@pytest.mark.slow
def test_engine_run_through_a_decoder_process_matches_threads(tmp_path: Path) -> None:
    """The whole worker path (claimer -> decoder process -> device loop -> writer), here on the CPU in
    shared memory: the same manifest as with reading and decoding on threads, failures included, and
    overlays (which keep the images past the batch) drawn from the right pixels."""
    import sys

    from facefleet.engine import read_manifest, run

    sys.path.insert(0, str(Path(__file__).parent))
    from test_engine_support import make_corpus

    inp = tmp_path / "in"
    make_corpus(inp, 20)
    # larger than the slots (sized for batch_size 1080p frames): decoded by the worker, then the slot grows
    big = np.asarray(Image.fromarray(np.ascontiguousarray(_astronaut())).resize((2800, 1800)))
    _jpeg(big, inp / "d2" / "big.jpg")
    (inp / "d0" / "empty.jpg").write_bytes(b"")
    (inp / "d1" / "notes.jpg").write_text("not an image")
    tables = {}
    for mode in (False, True):
        out = tmp_path / f"out{int(mode)}"
        summary = run(
            str(inp), out, devices="cpu", workers=1, batch_size=2, unit_size=12, quiet=True,
            formats=["overlay"], config={"cpu": {"decode_process": mode}},
            log_json=tmp_path / f"{mode}.jsonl",
        )  # fmt: skip
        assert summary.images == 23 and summary.failed == 2
        tables[mode] = {
            (r["source"], r["face_index"]): r for r in read_manifest(out).to_pylist()
        }  # fmt: skip
        events = [json.loads(line) for line in (tmp_path / f"{mode}.jsonl").read_text().splitlines()]
        done = [e for e in events if e["event"] == "unit_done"]
        assert sum(e["images"] for e in done) == 23  # units sized by the engine (a few per worker)
        assert all({"read", "decode", "detect"} <= set(e["stages"]) for e in done)
        rows = json.loads((out / "stats.json").read_text())["batch_stages"]["rows"]  # one per batch of 2
        batches = sum(math.ceil(e["images"] / 2) for e in done)  # batches never span units
        assert len(rows) == batches and all(r[1] > 0 and r[4] > 0 for r in rows)  # decoding, networks
    assert tables[True].keys() == tables[False].keys()
    for key, row in tables[False].items():
        other = tables[True][key]
        assert row["error"] == other["error"]
        if row["landmarks"] is not None:
            assert np.allclose(np.asarray(row["landmarks"]), np.asarray(other["landmarks"]), atol=1e-3)
    a = sorted((tmp_path / "out0" / "files").rglob("*_overlay.png"))
    b = sorted((tmp_path / "out1" / "files").rglob("*_overlay.png"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) >= 8  # images with a face
    for pa_, pb in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(Image.open(pa_)), np.asarray(Image.open(pb)))
