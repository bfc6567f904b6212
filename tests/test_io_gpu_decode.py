"""Batched decoding to device tensors: JPEG header parsing, EXIF orientation on tensors, the
decoder routing and fallbacks (with a stand-in batch decoder on CPU), and nvJPEG on CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from facefleet.io.decode import ImageDecodeError, decode_image
from facefleet.io.gpu_decode import (
    apply_exif_orientation,
    decode_batch,
    decode_images,
    jpeg_decoder,
    nvjpeg_available,
)
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
    """Stand-in for a GPU JPEG decoder: decodes with Pillow *without* EXIF orientation, like nvJPEG,
    and refuses progressive files in batch mode to exercise the per-file retry."""

    name = "fake"
    borrowed = False

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, data: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
        self.calls.append(len(data))
        out: list[torch.Tensor | None] = []
        for raw in data:
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
    # one batched call with the two eligible JPEGs (rot, prog; big is refused by size first, cut
    # is incomplete), it fails on the progressive one, then a per-file retry of each.
    assert fake.calls == [2, 1, 1]
    rot, png, cmyk, prog, bigr, cut = out
    assert isinstance(rot, torch.Tensor)
    assert torch.equal(rot.permute(1, 2, 0), torch.from_numpy(decode_image(blobs[0], "rot.jpg")))
    assert rot.shape == (3, 9, 6)
    assert isinstance(png, torch.Tensor) and torch.equal(png.permute(1, 2, 0), torch.from_numpy(img))
    assert isinstance(cmyk, torch.Tensor) and cmyk.shape == (3, 6, 9)
    assert isinstance(prog, torch.Tensor) and prog.shape == (3, 6, 9)  # Pillow fallback
    assert isinstance(bigr, ImageDecodeError) and "40" in str(bigr) and "too large" in str(bigr)
    assert isinstance(cut, ImageDecodeError) and "truncated" in str(cut)


class _BorrowingDecoder(_FakeBatchDecoder):
    """Like nvImageCodec: returns views of its own buffers, overwritten by its next call (garbage
    first), so a caller that keeps them instead of copying them out gets wrong pixels."""

    borrowed = True

    def __init__(self) -> None:
        super().__init__()
        self.buffers: list[torch.Tensor] = []

    def __call__(self, data: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
        out = super().__call__(data, device)
        views: list[torch.Tensor | None] = []
        for k, t in enumerate(out):
            assert t is not None
            if k >= len(self.buffers) or self.buffers[k].numel() < t.numel():
                self.buffers[k : k + 1] = [torch.empty(t.numel(), dtype=torch.uint8)]
            self.buffers[k].fill_(77)
            view = self.buffers[k][: t.numel()].view(t.shape)
            view.copy_(t)
            views.append(view)
        return views


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    from skimage import data

    a = data.astronaut()
    y, x = (seed * 37) % (a.shape[0] - h), (seed * 53) % (a.shape[1] - w)
    return np.ascontiguousarray(a[y : y + h, x : x + w])


def test_stacked_chunked_decode_copies_out_of_a_borrowing_decoder() -> None:
    # five same-size photos, one stored rotated (orientation 6: stored 24x40, shown 40x24)
    arrays = [_photo(40, 24, k) for k in range(4)] + [np.ascontiguousarray(np.rot90(_photo(40, 24, 9)))]
    blobs = [_jpeg(a) for a in arrays[:4]] + [_jpeg(arrays[4], 6)]
    names = [f"{k}.jpg" for k in range(5)]
    fake = _BorrowingDecoder()
    got = decode_images(blobs, names, "cpu", jpeg_decoder_fn=fake, stack=True, chunk=2)
    assert fake.calls == [2, 2, 1]  # chunks of two, decoded straight into the stack
    assert got.stack is not None and tuple(got.stack.shape) == (5, 3, 24, 40)
    for k, (blob, item) in enumerate(zip(blobs, got.items, strict=True)):
        assert isinstance(item, torch.Tensor)
        assert item.data_ptr() == got.stack[k].data_ptr()  # rows of the stack, not copies
        assert torch.equal(item.permute(1, 2, 0), torch.from_numpy(decode_image(blob, names[k])))
    # without a stack the items are owned copies, not views of the decoder's reused buffers
    single = decode_images(blobs[:2], names[:2], "cpu", jpeg_decoder_fn=fake)
    decode_images(blobs[2:4], names[2:4], "cpu", jpeg_decoder_fn=fake)
    assert single.stack is None
    for blob, name, item in zip(blobs[:2], names[:2], single.items, strict=True):
        assert isinstance(item, torch.Tensor)
        assert torch.equal(item.permute(1, 2, 0), torch.from_numpy(decode_image(blob, name)))


class _IntoDecoder(_FakeBatchDecoder):
    """Like nvImageCodec's decode_into: writes straight into the caller's rows; refuses progressive
    files there (they go to the batch call, which refuses them too, then to Pillow)."""

    def __init__(self) -> None:
        super().__init__()
        self.into_calls: list[int] = []

    def decode_into(self, data: list[bytes], targets: list[torch.Tensor], device: torch.device) -> list[bool]:
        self.into_calls.append(len(data))
        done = []
        for raw, t in zip(data, targets, strict=True):
            header = parse_jpeg_header(raw)
            assert header is not None and header.orientation == 1  # upright files only
            if header.sof == 0xC2:
                done.append(False)
                continue
            rgb = np.array(Image.open(io.BytesIO(raw)).convert("RGB"))
            t.copy_(torch.from_numpy(rgb).permute(2, 0, 1))
            done.append(True)
        return done


def test_decode_into_the_stack_with_fallbacks() -> None:
    arrays = [_photo(40, 24, k) for k in range(5)]
    rotated = np.ascontiguousarray(np.rot90(_photo(40, 24, 9)))
    blobs = [_jpeg(arrays[0]), _jpeg(arrays[1], progressive=True), _jpeg(arrays[2]), _jpeg(rotated, 6)]
    blobs += [_jpeg(arrays[3]), _jpeg(arrays[4])]
    names = [f"{k}.jpg" for k in range(len(blobs))]
    fake = _IntoDecoder()
    got = decode_images(blobs, names, "cpu", jpeg_decoder_fn=fake, stack=True, chunk=2)
    # chunk 1 straight in but the progressive file (batch call refuses it, per-file retry refuses it
    # too, then Pillow); chunk 2 holds a rotated file: batch call; chunk 3 straight in
    assert fake.into_calls == [2, 2] and fake.calls == [1, 1, 2]
    assert got.stack is not None and tuple(got.stack.shape) == (6, 3, 24, 40)
    for k, (blob, item) in enumerate(zip(blobs, got.items, strict=True)):
        assert isinstance(item, torch.Tensor) and item.data_ptr() == got.stack[k].data_ptr()
        assert torch.equal(item.permute(1, 2, 0), torch.from_numpy(decode_image(blob, names[k]))), k


def test_decode_straight_into_an_arena() -> None:
    # the decoder process hands its slot (flat shared memory) as the arena of the batch tensor
    arrays = [_photo(40, 24, k) for k in range(3)]
    blobs, names = [_jpeg(a) for a in arrays], [f"{k}.jpg" for k in range(3)]
    pairs = zip(blobs, names, strict=True)
    expected = [torch.from_numpy(decode_image(b, n)).permute(2, 0, 1) for b, n in pairs]
    arena = torch.full((3 * 3 * 24 * 40 + 64,), 5, dtype=torch.uint8)
    got = decode_images(blobs, names, "cpu", jpeg_decoder_fn=_IntoDecoder(), stack=True, chunk=2, arena=arena)
    assert got.stack is not None and got.stack.data_ptr() == arena.data_ptr()  # in place, no copy
    assert all(torch.equal(r, e) for r, e in zip(got.stack, expected, strict=True))
    assert bool((arena[-64:] == 5).all())  # nothing written past the batch
    # a broken file: no stack, and nothing handed back refers to the arena (the caller reuses it)
    broken = decode_images(
        [*blobs, b"junk"], [*names, "x.jpg"], "cpu", jpeg_decoder_fn=_IntoDecoder(), stack=True, arena=arena
    )
    assert broken.stack is None and isinstance(broken.items[3], ImageDecodeError)
    end = arena.data_ptr() + arena.numel()
    for item, e in zip(broken.items[:3], expected, strict=True):
        assert isinstance(item, torch.Tensor) and torch.equal(item, e)
        assert not arena.data_ptr() <= item.data_ptr() < end
    # an arena without room: the batch tensor is the decoder's own
    small = torch.zeros(100, dtype=torch.uint8)
    own = decode_images(blobs, names, "cpu", jpeg_decoder_fn=_IntoDecoder(), stack=True, arena=small)
    assert own.stack is not None and own.stack.data_ptr() != small.data_ptr() and not bool(small.any())


def test_stack_only_when_every_image_has_one_size(img: np.ndarray) -> None:
    a, b = _photo(40, 24, 1), _photo(40, 24, 2)
    fake = _BorrowingDecoder()
    # a PNG of the same size joins the stack (a copy), a failed file means no stack
    mixed = decode_images([_jpeg(a), _png(b)], ["a.jpg", "b.png"], "cpu", jpeg_decoder_fn=fake, stack=True)
    assert mixed.stack is not None and tuple(mixed.stack.shape) == (2, 3, 24, 40)
    assert torch.equal(mixed.stack[1].permute(1, 2, 0), torch.from_numpy(b))
    # a file the GPU decoder refuses goes to Pillow: the stack holds its pixels, not an unwritten row
    progressive = [_jpeg(a), _jpeg(b, progressive=True)]
    refused = decode_images(progressive, ["a.jpg", "p.jpg"], "cpu", jpeg_decoder_fn=fake, stack=True)
    assert refused.stack is not None
    for blob, name, row in zip(progressive, ["a.jpg", "p.jpg"], refused.stack, strict=True):
        assert torch.equal(row.permute(1, 2, 0), torch.from_numpy(decode_image(blob, name)))
    broken = decode_images([_jpeg(a), b"junk"], ["a.jpg", "x.jpg"], "cpu", jpeg_decoder_fn=fake, stack=True)
    assert broken.stack is None and isinstance(broken.items[1], ImageDecodeError)
    assert isinstance(broken.items[0], torch.Tensor)
    assert torch.equal(broken.items[0].permute(1, 2, 0), torch.from_numpy(decode_image(_jpeg(a), "a.jpg")))
    sizes = decode_images([_jpeg(a), _jpeg(img)], ["a.jpg", "i.jpg"], "cpu", jpeg_decoder_fn=fake, stack=True)
    assert sizes.stack is None and [tuple(t.shape) for t in sizes.items] == [(3, 24, 40), (3, 6, 9)]
    # Pillow only, and the decoder names
    cpu = decode_images([_jpeg(a)], ["a.jpg"], "cpu", decoder="cpu")
    assert isinstance(cpu.items[0], torch.Tensor)
    assert jpeg_decoder("cpu") is None
    with pytest.raises(ValueError, match="unknown JPEG decoder"):
        jpeg_decoder("cpu", "turbo")


def _gpu_decoders() -> list[str]:
    names = ["nvjpeg"]
    try:
        import nvidia.nvimgcodec  # noqa: F401

        names.append("nvimgcodec")
    except Exception:
        pass
    return names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decoder", _gpu_decoders())
def test_gpu_decoders_on_cuda(img: np.ndarray, decoder: str) -> None:
    pytest.importorskip("torchvision")
    assert nvjpeg_available("cuda")
    dec = jpeg_decoder("cuda", decoder)
    assert dec is not None and dec.name == decoder
    from skimage import data

    # A real photo: decoders differ in chroma upsampling, which random colour blocks exaggerate.
    smooth = np.ascontiguousarray(data.astronaut()[::4, ::3])
    blobs = [_jpeg(smooth, o) for o in (1, 3, 6, 8)] + [_jpeg(smooth[..., 0]), _png(img)]
    blobs.append(_jpeg(smooth, progressive=True))
    names = [f"{i}.jpg" for i in range(len(blobs))]
    for _ in range(2):  # the second round reuses the decoder's buffers
        out = decode_batch(blobs, names, "cuda", decoder=decoder)
        same = [_jpeg(smooth, 1)] * 5
        stacked = decode_images(
            same, [f"s{i}.jpg" for i in range(5)], "cuda", decoder=decoder, stack=True, chunk=2
        )
        assert stacked.stack is not None and stacked.stack.shape[0] == 5
        ref0 = torch.from_numpy(decode_image(same[0], "s0.jpg")).permute(2, 0, 1)
        for t in stacked.items:
            assert isinstance(t, torch.Tensor)
            assert (t.cpu().int() - ref0.int()).abs().float().mean().item() < 2.0
        for blob, name, t in zip(blobs, names, out, strict=True):
            assert isinstance(t, torch.Tensor) and t.device.type == "cuda" and t.dtype == torch.uint8
            ref = torch.from_numpy(decode_image(blob, name)).permute(2, 0, 1)
            assert t.shape == ref.shape
            diff = (t.cpu().int() - ref.int()).abs().float().mean().item()
            assert diff < 2.0, (name, diff)  # mean |GPU decoder - libjpeg| in 8-bit levels
