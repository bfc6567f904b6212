"""The benchmark corpora: deterministic, right size, manifests (expected faces; the photo each crop is of)."""

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


def _photos(tmp_path: Path) -> list[Path]:
    """Three real photos of different shapes: landscape, square, portrait."""
    from skimage import data

    out = []
    for name, arr in (("coffee.jpg", data.coffee()), ("astronaut.png", data.astronaut())):
        out.append(tmp_path / name)
        Image.fromarray(arr).save(out[-1])
    out.append(tmp_path / "portrait.jpg")
    Image.fromarray(data.astronaut()[:, 96:416]).save(out[-1])  # 320 x 512: upright
    return out


def test_photo_corpus_crops_every_photo_once_per_pass_deterministically(tmp_path: Path) -> None:
    from facefleet.bench.corpus import make_photo_corpus

    photos = _photos(tmp_path)
    a = make_photo_corpus(tmp_path / "a", 6, resolution=(320, 180), seed=3, photos=photos, workers=2)
    b = make_photo_corpus(tmp_path / "b", 6, resolution=(320, 180), seed=3, photos=photos, workers=1)
    c = make_photo_corpus(tmp_path / "c", 6, resolution=(320, 180), seed=4, photos=photos, workers=1)
    assert a.kind == "photos" and len(a) == 6 and a.faces == []
    assert _digest(a.files) == _digest(b.files) and _digest(a.files) != _digest(c.files)
    rows = [line.split("\t") for line in (a.root / "manifest.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == [p.name for p in a.files]
    used = [r[1] for r in rows]
    assert sorted(used[:3]) == sorted(used[3:]) == sorted(p.name for p in photos)  # each once per pass
    for p, src in zip(a.files, used, strict=True):
        with Image.open(p) as im:  # landscape photos give landscape frames, the others upright ones
            assert im.format == "JPEG"
            assert im.size == ((320, 180) if src == "coffee.jpg" else (180, 320))


def test_photo_corpus_without_photos_says_where_to_put_them(tmp_path: Path) -> None:
    from facefleet.bench.corpus import make_photo_corpus

    with pytest.raises(FileNotFoundError, match="FACEFLEET_SHARED_DATA"):
        make_photo_corpus(tmp_path, 2, photos=[])
