"""Detection on the shared real photos (skipped without ../shared/data): recall, negatives, two people."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from facefleet.detect import FaceDetector


def _load(path: Path) -> torch.Tensor:
    from facefleet.io.decode import read_image

    return torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[tuple[str, str, torch.Tensor]]:
    root = shared_data / "images"
    with open(root / "INDEX.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [(r["file"], r["faces"], _load(root / r["file"])) for r in rows]


def test_recall_on_shared_photos(photos: list[tuple[str, str, torch.Tensor]]) -> None:
    out = FaceDetector(model="auto")([t for _, _, t in photos])
    counts = out.counts()
    found = total = 0
    report = []
    for (name, faces, _), c in zip(photos, counts, strict=True):
        report.append(f"{name}: {c} (index: {faces})")
        if faces.endswith("+"):
            assert c >= 1, f"{name}: crowd photo, no face found"
            continue
        n = int(faces)
        if n == 0:
            assert c == 0, f"{name}: negative image, {c} faces reported"
        else:
            total += n
            found += min(c, n)
    print("\n".join(report))
    print(f"recall on exact-count images: {found}/{total}")
    assert found >= total - 1


def test_two_people_and_negatives(photos: list[tuple[str, str, torch.Tensor]]) -> None:
    pick = {n: t for n, _, t in photos if n == "face_recognition_two_people.jpg" or n.startswith("noface_")}
    names = sorted(pick)
    for model in ("auto", "short", "full"):
        counts = FaceDetector(model=model)([pick[n] for n in names]).counts()
        for n, c in zip(names, counts, strict=True):
            assert c == (2 if n == "face_recognition_two_people.jpg" else 0), (model, n, c)
