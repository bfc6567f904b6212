"""``facefleet reconstruct`` reads its inputs with the one safe reader (:mod:`facefleet.io.read`): a
named pipe and a file over ``--max-file-bytes`` are refused unread, each with one line naming it,
while the other files of the call are reconstructed."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_reconstruct_refuses_a_fifo_and_an_oversized_file_and_does_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sizes_only_reconstruct: None
) -> None:
    from facefleet.entrypoints.cli.reconstruct import reconstruct_main

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inp / "good.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(inp / "big.png")  # ~12 kB of noise: over the 4,000-byte cap
    assert (inp / "big.png").stat().st_size > 4000 > (inp / "good.png").stat().st_size
    os.mkfifo(inp / "pipe.jpg")  # no writer: a plain open() would wait forever
    out = tmp_path / "out"
    argv = [str(inp / n) for n in ("pipe.jpg", "good.png", "big.png")]
    argv += ["-o", str(out), "--device", "cpu", "--formats", "json", "--max-file-bytes", "4000"]
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(reconstruct_main(argv)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reconstruct blocked on the named pipe"
    assert rc == [1]  # done, some images failed
    err = capsys.readouterr().err.splitlines()
    pipe = [ln for ln in err if "pipe.jpg" in ln]
    big = [ln for ln in err if "big.png" in ln]
    assert len(pipe) == 1 and "not a regular file: a named pipe" in pipe[0], err
    assert len(big) == 1 and "file too large" in big[0] and "max_file_bytes" in big[0], err
    good = json.loads((out / "good.png.json").read_text())
    assert good["error"] is None and (good["width"], good["height"]) == (30, 20)
    assert "named pipe" in json.loads((out / "pipe.jpg.json").read_text())["error"]
    assert "file too large" in json.loads((out / "big.png.json").read_text())["error"]


def test_read_image_takes_the_cap(tmp_path: Path) -> None:
    """The Python API's reader is the capped one too (default: [run] max_file_bytes' default)."""
    from facefleet.io.decode import ImageDecodeError, read_image
    from facefleet.io.read import MAX_FILE_BYTES

    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    assert read_image(p).shape == (16, 16, 3)
    with pytest.raises(ImageDecodeError, match=r"a\.png: file too large"):
        read_image(p, max_bytes=10)
    assert MAX_FILE_BYTES == 256 << 20
