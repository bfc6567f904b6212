"""Batched decoding to device tensors: JPEG header parsing, EXIF orientation on tensors, the
decoder routing and fallbacks (with a stand-in batch decoder on CPU), and nvJPEG on CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from facefleet.io.decode import ImageDecodeError, decode_image
from facefleet.io.gpu_decode import apply_exif_orientation, decode_batch, nvjpeg_available
from facefleet.io.jpeg import parse_jpeg_header


def _jpeg(a: np.ndarray, orientation: int | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    extra: dict[str, object] = dict(kw)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    Image.fromarray(a).save(buf, format="JPEG", quality=95, **extra)
    return buf.getvalue()


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def img() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(img: np.ndarray, orientation: int) -> None:
    data = _jpeg(img, orientation)
    header = parse_jpeg_header(data)
    assert header is not None
    assert (header.width, header.height, header.components, header.precision) == (9, 6, 3, 8)
    assert header.orientation == orientation and header.complete and header.nvjpeg_ok
    stored = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    expected = np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = apply_exif_orientation(torch.from_numpy(stored).permute(2, 0, 1), orientation)
    assert torch.equal(got.permute(1, 2, 0), torch.from_numpy(expected))


def test_header_flags_progressive_cmyk_gray_truncated(img: np.ndarray) -> None:
    prog = parse_jpeg_header(_jpeg(img, progressive=True))
    assert prog is not None and prog.sof == 0xC2 and prog.nvjpeg_ok
    buf = io.BytesIO()
    Image.new("CMYK", (8, 4)).save(buf, format="JPEG")
    cmyk = parse_jpeg_header(buf.getvalue())
    assert cmyk is not None and cmyk.components == 4 and not cmyk.nvjpeg_ok
    gray = parse_jpeg_header(_jpeg(img[..., 0]))
    assert gray is not None and gray.components == 1 and gray.nvjpeg_ok
    full = _jpeg(np.tile(img, (20, 20, 1)))
    cut = parse_jpeg_header(full[: len(full) - 200])
    assert cut is not None and not cut.complete and not cut.nvjpeg_ok
    assert parse_jpeg_header(_png(img)) is None
    assert parse_jpeg_header(b"\xff\xd8\xff\xe0\x00") is None


def test_cpu_fallback_matches_decode_image(img: np.ndarray) -> None:
    blobs = [_jpeg(img, 6), _png(img), b"", b"garbage"]
    names = ["a.jpg", "b.png", "c.jpg", "d.jpg"]
    out = decode_batch(blobs, names, "cpu")
    assert len(out) == 4
    a, b, c, d = out
    assert isinstance(a, torch.Tensor) and a.dtype == torch.uint8 and a.shape == (3, 9, 6)
    assert torch.equal(a.permute(1, 2, 0), torch.from_numpy(decode_image(blobs[0], "a.jpg")))
    assert isinstance(b, torch.Tensor) and torch.equal(b.permute(1, 2, 0), torch.from_numpy(img))
    assert b.is_contiguous()
    assert isinstance(c, ImageDecodeError) and "c.jpg" in str(c) and "empty" in str(c)
    assert isinstance(d, ImageDecodeError) and "d.jpg" in str(d)
    assert not nvjpeg_available("cpu")
    with pytest.raises(ValueError):
        decode_batch([b""], [], "cpu")


class _FakeBatchDecoder:
    """Stand-in for nvJPEG: decodes with Pillow *without* EXIF orientation, like nvJPEG, and
    refuses progressive files in batch mode to exercise the per-file retry."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        self.calls.append(len(data))
        out = []
        for t in data:
            raw = t.numpy().tobytes()
            header = parse_jpeg_header(raw)
            assert header is not None and header.nvjpeg_ok  # only eligible JPEGs are sent
            if header.sof == 0xC2:
                raise RuntimeError("progressive not supported")
            arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).to(device))
        return out


def test_batch_decoder_routing_orientation_and_fallbacks(img: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(buf, format="JPEG")
    big = _jpeg(np.zeros((40, 50, 3), np.uint8))
    blobs = [_jpeg(img, 8), _png(img), buf.getvalue(), _jpeg(img, progressive=True), big, _jpeg(img)[:-300]]
    names = ["rot.jpg", "p.png", "cmyk.jpg", "prog.jpg", "big.jpg", "cut.jpg"]
    fake = _FakeBatchDecoder()
    out = decode_batch(blobs, names, "cpu", jpeg_decoder=fake, max_pixels=1000)
    # one batched call with the four eligible JPEGs (rot, prog, big is refused by size first, cut
    # is incomplete), it fails on the progressive one, then a per-file retry of each.
    assert fake.calls[0] == 2 and fake.calls[1:] == [1, 1]
    rot, png, cmyk, prog, bigr, cut = out
    assert isinstance(rot, torch.Tensor)
    assert torch.equal(rot.permute(1, 2, 0), torch.from_numpy(decode_image(blobs[0], "rot.jpg")))
    assert rot.shape == (3, 9, 6)
    assert isinstance(png, torch.Tensor) and torch.equal(png.permute(1, 2, 0), torch.from_numpy(img))
    assert isinstance(cmyk, torch.Tensor) and cmyk.shape == (3, 6, 9)
    assert isinstance(prog, torch.Tensor) and prog.shape == (3, 6, 9)  # Pillow fallback
    assert isinstance(bigr, ImageDecodeError) and "40" in str(bigr) and "too large" in str(bigr)
    assert isinstance(cut, ImageDecodeError) and "truncated" in str(cut)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_on_cuda(img: np.ndarray) -> None:
    pytest.importorskip("torchvision")
    assert nvjpeg_available("cuda")
    from skimage import data

    # A real photo: decoders differ in chroma upsampling, which random colour blocks exaggerate.
    smooth = np.ascontiguousarray(data.astronaut()[::4, ::3])
    blobs = [_jpeg(smooth, o) for o in (1, 3, 6, 8)] + [_jpeg(smooth[..., 0]), _png(img)]
    names = [f"{i}.jpg" for i in range(len(blobs))]
    out = decode_batch(blobs, names, "cuda")
    for blob, name, t in zip(blobs, names, out, strict=True):
        assert isinstance(t, torch.Tensor) and t.device.type == "cuda" and t.dtype == torch.uint8
        ref = torch.from_numpy(decode_image(blob, name)).permute(2, 0, 1)
        assert t.shape == ref.shape
        diff = (t.cpu().int() - ref.int()).abs().float().mean().item()
        assert diff < 2.0, (name, diff)  # mean |nvJPEG - libjpeg| in 8-bit levels
