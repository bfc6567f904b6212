"""Atomic writes: all or nothing, parents created, no temp files left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from facefleet.io.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def test_writes_and_creates_parents(tmp_path: Path) -> None:
    p = atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    t = atomic_write_text(tmp_path / "c" / "y.txt", "héllo\n")
    assert t.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["x.bin"]


def test_failed_writer_leaves_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, "w") as fh:
        fh.write("new partial content")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_failed_writer_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "never.bin"
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as fh:
        fh.write(b"x" * 1000)
        raise KeyboardInterrupt
    assert not target.exists()
    assert os.listdir(tmp_path / "sub") == []


def test_replaces_existing_and_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_rejects_read_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_open(tmp_path / "x", "rb"):
        pass


def test_deferred_fsync_skips_fsyncs_until_one_filesystem_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine writes per-image files without fsyncs and flushes their filesystem once per unit:
    the files are complete and atomic either way; only the fsync calls move."""
    import os

    from facefleet.io import atomic

    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    with atomic.deferred_fsync():
        atomic.atomic_write_bytes(tmp_path / "a" / "x.bin", b"abc")
        atomic.atomic_write_text(tmp_path / "a" / "y.txt", "hello")
    assert calls == []
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"abc" and (
        tmp_path / "a" / "y.txt"
    ).read_text() == "hello"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.bin", "y.txt"]  # no temp files left
    atomic.sync_filesystem(tmp_path)
    atomic.atomic_write_bytes(tmp_path / "z.bin", b"z")
    assert len(calls) >= 1  # outside the block: durable as before
