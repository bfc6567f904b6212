"""The benchmark corpus generator: deterministic, right size, manifest of expected faces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from facefleet.bench.corpus import make_corpus, read_manifest


def _digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_corpus_is_deterministic_sized_and_has_manifest(tmp_path: Path) -> None:
    a = make_corpus(
        tmp_path / "a", 12, resolution=(320, 180), quality=80, faces_per_image=(0, 3), seed=7, workers=2
    )
    b = make_corpus(
        tmp_path / "b", 12, resolution=(320, 180), quality=80, faces_per_image=(0, 3), seed=7, workers=1
    )
    c = make_corpus(
        tmp_path / "c", 12, resolution=(320, 180), quality=80, faces_per_image=(0, 3), seed=8, workers=1
    )
    assert len(a) == 12 and all(p.is_file() for p in a.files)
    assert _digest(a.files) == _digest(b.files)  # same seed: same bytes, whatever the process count
    assert _digest(a.files) != _digest(c.files)
    for p in a.files:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (320, 180)
    man = read_manifest(a.root)
    assert [p for p, _ in man] == a.files
    assert [k for _, k in man] == a.faces
    assert all(0 <= k <= 3 for k in a.faces) and len(set(a.faces)) > 1
    assert (a.root / "corpus.json").is_file()


def test_faces_are_pasted_where_the_manifest_says(tmp_path: Path) -> None:
    """Images with 0 faces differ from those with faces only by the pasted tiles: check the count
    column matches the per-image source list."""
    c = make_corpus(tmp_path, 10, resolution=(256, 144), faces_per_image=(0, 2), seed=1, workers=1)
    rows = (c.root / "manifest.tsv").read_text().splitlines()[1:]
    for row in rows:
        cols = row.split("\t")
        srcs = [s for s in cols[5].split(",") if s]
        assert int(cols[1]) == len(srcs)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="faces_per_image"):
        make_corpus(tmp_path, 2, faces_per_image=(3, 1))
