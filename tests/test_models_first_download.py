"""The first model download says what it fetches, from where and to where (on stderr), then what it stored."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from facefleet.models import cache_dir, fetch


def _models_present() -> bool:
    return (cache_dir() / "face_landmark.tflite").is_file()


@pytest.mark.skipif(not _models_present(), reason="MediaPipe .tflite files not in the model cache")
def test_first_download_prints_size_source_and_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = fetch.get_spec("face_landmark")
    wheel = tmp_path / "dl" / "mediapipe-0.10.21-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:  # a stand-in for the pip download: the real member, verified
        zf.write(cache_dir() / spec.filename, spec.wheel_member)
    monkeypatch.setenv("FACEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEFLEET_MODEL_DIR", raising=False)
    monkeypatch.setattr(fetch, "_download_wheel", lambda dest, *a: wheel)
    paths = fetch.fetch_models(["face_landmark"])
    err = capsys.readouterr().err
    dest = tmp_path / "cache" / "models"
    assert paths["face_landmark"] == dest / spec.filename
    assert "face_landmark.tflite" in err and "mediapipe==0.10.21" in err and "MB" in err
    assert str(dest) in err and "stored 1 model file(s)" in err
    fetch.fetch_models(["face_landmark"])  # cached now: silent
    assert capsys.readouterr().err == ""
