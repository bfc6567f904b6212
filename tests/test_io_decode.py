"""Image decoding: formats, modes, EXIF orientation and every kind of bad file."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefleet.io.decode import ImageDecodeError, decode_image, read_image


def _save(im: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    im.save(path, format=fmt, **kw)
    return path


@pytest.fixture
def rgb() -> np.ndarray:
    """(48, 64, 3) uint8 with smooth gradients plus a solid block (JPEG-friendly)."""
    yy, xx = np.mgrid[0:48, 0:64]
    a = np.stack([xx * 2, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    a[4:16, 4:20] = (250, 20, 20)
    return a


@pytest.mark.parametrize(
    ("fmt", "ext", "kw", "tol"),
    [
        ("JPEG", "jpg", {"quality": 95}, 8.0),
        ("PNG", "png", {}, 0.0),
        ("WEBP", "webp", {"lossless": True}, 0.0),
        ("BMP", "bmp", {}, 0.0),
        ("TIFF", "tif", {}, 0.0),
    ],
)
def test_decode_rgb_formats(
    tmp_path: Path, rgb: np.ndarray, fmt: str, ext: str, kw: dict, tol: float
) -> None:
    p = _save(Image.fromarray(rgb), tmp_path / f"x.{ext}", fmt, **kw)
    out = read_image(p)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out.flags.writeable and out.flags.c_contiguous
    err = np.abs(out.astype(int) - rgb.astype(int)).mean()
    assert err <= tol
    assert np.array_equal(decode_image(p.read_bytes(), str(p)), out)


def test_png_rgba_is_composited_over_white(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = (10, 100, 200)
    a[0, :, 3] = 255  # opaque row keeps its colour
    a[1, :, 3] = 0  # transparent row becomes the background
    a[2, :, 3] = 128
    out = read_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png", "PNG"))
    assert out.shape == (4, 4, 3)
    assert (out[0] == (10, 100, 200)).all()
    assert (out[1] == 255).all()
    expected = np.round((np.array([10, 100, 200]) * 128 + 255 * 127) / 255)
    assert np.abs(out[2].astype(int) - expected).max() <= 1
    black = decode_image((tmp_path / "a.png").read_bytes(), "a.png", background=(0, 0, 0))
    assert (black[1] == 0).all()


def test_png_16bit_gray_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 1, 128, 129, 257], [1000, 32896, 65280, 65534, 65535]], np.uint16)
    im = Image.fromarray(values)
    assert im.mode.startswith("I;16")
    out = read_image(_save(im, tmp_path / "g16.png", "PNG"))
    expected = np.round(values / 257.0).astype(np.uint8)
    assert out.shape == (2, 5, 3)
    assert np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 0], out[..., 2])
    assert out[1, 4, 0] == 255 and out[0, 0, 0] == 0


def test_32bit_integer_tiff_read_as_16bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 70000]], np.int32)
    im = Image.fromarray(values, "I")
    out = read_image(_save(im, tmp_path / "i32.tif", "TIFF"))
    assert out[0, :, 0].tolist() == [0, 1, 255, 255]


def test_grayscale_la_bilevel_and_palette(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    out = read_image(_save(Image.fromarray(gray, "L"), tmp_path / "l.png", "PNG"))
    assert out.shape == (6, 10, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))

    la = Image.merge(
        "LA", [Image.fromarray(gray), Image.fromarray(np.where(gray > 100, 255, 0).astype(np.uint8))]
    )
    out = read_image(_save(la, tmp_path / "la.png", "PNG"))
    assert np.array_equal(out[..., 0], np.where(gray > 100, gray, 255))

    bits = Image.fromarray(gray > 100).convert("1")
    out = read_image(_save(bits, tmp_path / "b.png", "PNG"))
    assert set(np.unique(out).tolist()) <= {0, 255}
    assert np.array_equal(out[..., 0] == 255, gray > 100)

    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = read_image(_save(pal, tmp_path / "p.png", "PNG"))
    assert np.array_equal(out, np.asarray(pal.convert("RGB")))

    ptrans = pal.copy()
    ptrans.info["transparency"] = int(np.asarray(pal)[0, 0])
    out = read_image(_save(ptrans, tmp_path / "pt.png", "PNG", transparency=ptrans.info["transparency"]))
    assert (out[0, 0] == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = read_image(_save(cmyk, tmp_path / "c.jpg", "JPEG", quality=95))
    assert out.shape == (16, 32, 3)
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_first_frame_of_animation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = read_image(p)
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] > 200).all() and (out[..., 2] < 50).all()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_applied(tmp_path: Path, rgb: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _save(Image.fromarray(rgb), tmp_path / "o.jpg", "JPEG", quality=98, exif=exif.tobytes())
    out = read_image(p)
    k = {1: 0, 3: 2, 6: -1, 8: 1}[orientation]  # 6 = rotate 90 clockwise for display
    expected = np.rot90(rgb, k)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 8
    # the red block in the stored top-left ends up where the rotation puts it
    red = (out[..., 0] > 200) & (out[..., 1] < 80)
    ys, xs = np.nonzero(red)
    h, w = out.shape[:2]
    corner = (ys.mean() < h / 2, xs.mean() < w / 2)
    assert corner == {1: (True, True), 3: (False, False), 6: (True, False), 8: (False, True)}[orientation]


# ----------------------------------------------------------------------------- bad files


def _expect(path_or_data: Path | tuple[bytes, str], word: str, **kw: object) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        if isinstance(path_or_data, tuple):
            decode_image(path_or_data[0], path_or_data[1], **kw)  # type: ignore[arg-type]
        else:
            read_image(path_or_data, **kw)  # type: ignore[arg-type]
    err = info.value
    msg = str(err)
    name = path_or_data.name if isinstance(path_or_data, Path) else path_or_data[1]
    assert name in msg and word in msg.lower(), msg
    assert "\n" not in msg
    assert isinstance(err, ValueError)
    return err


def test_missing_directory_empty(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.jpg", "not found")
    (tmp_path / "dir.jpg").mkdir()
    _expect(tmp_path / "dir.jpg", "directory")
    (tmp_path / "empty.png").write_bytes(b"")
    _expect(tmp_path / "empty.png", "empty")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_permission_denied(tmp_path: Path, rgb: np.ndarray) -> None:
    p = _save(Image.fromarray(rgb), tmp_path / "locked.png", "PNG")
    p.chmod(0)
    try:
        _expect(p, "permission denied")
    finally:
        p.chmod(0o644)


@pytest.mark.parametrize(("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png"), ("TIFF", "tif"), ("BMP", "bmp")])
def test_truncated_files_refused(tmp_path: Path, rgb: np.ndarray, fmt: str, ext: str) -> None:
    data = io.BytesIO()
    Image.fromarray(np.tile(rgb, (4, 4, 1))).save(data, format=fmt)
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data.getvalue()[: len(data.getvalue()) * 2 // 3])
    _expect(p, "truncated")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("these are not the pixels you are looking for\n")
    err = _expect(p, "not an image")
    assert err.source == str(p)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG structure claiming width x height RGB but holding one row's worth of pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_bomb_refused_from_header(tmp_path: Path) -> None:
    # 20000 x 10000 = 200 MP with a ~70-byte file: decoding would need 600 MB and then fail
    # as truncated, so "too large" proves the size check ran before any pixel was decoded.
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(20000, 10000))
    t0 = time.perf_counter()
    err = _expect(p, "too large")
    assert time.perf_counter() - t0 < 1.0
    assert "20000x10000" in str(err)
    # our own limit names the dimensions
    p2 = tmp_path / "big.png"
    p2.write_bytes(_png_header_only(3000, 2000))
    err = _expect(p2, "too large", max_pixels=5_000_000)
    assert "3000x2000" in str(err)
    # within the limit the same header gets to the decoder, which finds no pixel data
    with pytest.raises(ImageDecodeError) as info:
        read_image(p2, max_pixels=None)
    assert "too large" not in str(info.value)


def test_zero_size(tmp_path: Path) -> None:
    p = tmp_path / "zero.png"
    p.write_bytes(_png_header_only(0, 10))
    _expect(p, "zero-size")


def test_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageDecodeError("a.jpg", "truncated file")))
    assert (
        isinstance(err, ImageDecodeError)
        and str(err) == "a.jpg: truncated file"
        and err.reason == "truncated file"
    )
