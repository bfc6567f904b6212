"""Batched image decoding straight to device tensors, with the GPU's JPEG decoders on CUDA.

:func:`decode_images` (and :func:`decode_batch`, its list form) turns encoded blobs into ``(3, H, W)``
uint8 RGB tensors on ``device``, EXIF orientation applied like :func:`facefleet.io.decode.decode_image`:

- on CUDA, plain 8-bit baseline/progressive JPEGs (1 or 3 components, complete up to the EOI marker,
  within ``max_pixels``) are decoded in batched calls of a GPU JPEG decoder (:func:`jpeg_decoder`):
  NVIDIA nvImageCodec when ``nvidia-nvimgcodec`` is installed (it drives the hardware JPEG engines of
  A100/H100/H200-class GPUs, which take no SM time: about twice the next option's rate,
  docs/benchmarks.md), else torchvision's nvJPEG call. The EXIF orientation
  is parsed from the APP1 segment without decoding pixels and applied on the GPU;
- everything else (PNG, WebP..., CMYK, 12-bit or arithmetic-coded JPEGs, files the GPU decoder
  refuses, no CUDA, no decoder) is decoded per file on the CPU with Pillow and copied to ``device``.

Same-size batches can be decoded chunk by chunk straight into one ``(B, 3, H, W)`` tensor
(``stack=True, chunk=N``): the decoder then holds at most ``chunk`` images of its own at a time.

Errors are returned in place (an :class:`ImageDecodeError`), never raised, so one bad file does not
sink a batch. torchvision and nvImageCodec are imported lazily; this module imports without them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from facefleet.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, check_image_size, decode_image
from facefleet.io.jpeg import JpegHeader, parse_jpeg_header
from facefleet.platforms import GPU_DECODERS, parse_jpeg_backends

__all__ = [
    "DECODER_NAMES",
    "DecodedBatch",
    "JpegBatchDecoder",
    "JpegHeader",
    "apply_exif_orientation",
    "configure_nvimgcodec",
    "decode_batch",
    "decode_images",
    "decoder_memory_bytes",
    "jpeg_decoder",
    "nvjpeg_available",
    "parse_jpeg_backends",
    "parse_jpeg_header",
]

# "auto": nvImageCodec when it works on this machine, else torchvision's nvJPEG call
DECODER_NAMES = GPU_DECODERS


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to ``(..., H, W)`` so it displays upright.

    Same result as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip vertical,
    5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    h, w = image.dim() - 2, image.dim() - 1
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip((h, w))
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return image.transpose(h, w).flip(w)
    if orientation == 7:
        return image.transpose(h, w).flip((h, w))
    if orientation == 8:
        return image.transpose(h, w).flip(h)
    return image


class JpegBatchDecoder(Protocol):
    """Decodes a batch of JPEG blobs to ``(C, H, W)`` uint8 tensors on ``device`` (C = 1 or 3), without
    EXIF orientation. ``None`` marks a file it refused; raising means the whole call failed (the
    files are then retried one by one). ``borrowed`` decoders return views of their own buffers,
    valid until the same thread calls them again (callers copy them out first).

    A decoder may also offer ``decode_into(blobs, targets, device) -> list[bool]``: decode each blob
    straight into its ``(3, H, W)`` uint8 target (a view of device memory, the image's size, upright
    files only), True where it did; what it could not decode is left to the batch call."""

    name: str
    borrowed: bool

    def __call__(self, blobs: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]: ...


class _TorchvisionDecoder:
    """torchvision's batched ``decode_jpeg(device=cuda)`` (nvJPEG on the SMs). torchvision keeps one
    nvJPEG handle per process, so calls from several threads are serialised."""

    name = "nvjpeg"
    borrowed = False

    def __init__(self) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self._decode = decode_jpeg
        self._mode = ImageReadMode.RGB
        self._lock = threading.Lock()

    def __call__(self, blobs: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        with self._lock:
            out = self._decode(data, mode=self._mode, device=device)
        return list(out) if isinstance(out, (list, tuple)) else [out]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[io.StringIO]:
    """Silence file descriptor 2 (C libraries print there) and hand back what was written."""
    captured = io.StringIO()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.write(tmp.read().decode("utf-8", "replace"))


class _NvImgCodecDecoder:
    """NVIDIA nvImageCodec: one ``Decoder`` per thread, which picks the hardware JPEG engine where the
    GPU has one (then its CUDA decoder, then the CPU). Output images are planar RGB in two
    alternating pools of reused buffers (no allocation per batch): the views returned by a call stay
    valid until the next call on the same thread, and a pool is reused only after the work queued on
    the stream since its last call (the caller's copies out of it) has finished."""

    name = "nvimgcodec"
    borrowed = True

    def __init__(self, nv: Any, cpu_threads: int, backends: Sequence[tuple[str, float]] = ()) -> None:
        self._nv = nv
        self._cpu_threads = cpu_threads
        kinds = {
            "hw": nv.BackendKind.HW_GPU_ONLY,
            "gpu": nv.BackendKind.GPU_ONLY,
            "hybrid": nv.BackendKind.HYBRID_CPU_GPU,
            "cpu": nv.BackendKind.CPU_ONLY,
        }
        # empty: nvImageCodec's own choice (every backend, its default shares)
        self._backends = [nv.Backend(kinds[k], load_hint=load) for k, load in backends]
        self._params = nv.DecodeParams(
            apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB, sample_format=nv.SampleFormat.P_RGB
        )
        self._local = threading.local()
        # every live thread's state (for memory_bytes); a state goes with its thread
        self._states: weakref.WeakSet[_NvThreadState] = weakref.WeakSet()
        self._states_lock = threading.Lock()

    def _state(self, device: torch.device) -> Any:
        st = getattr(self._local, "state", None)
        if st is None or st.device != device:
            kw: dict[str, Any] = {"max_num_cpu_threads": self._cpu_threads}
            if self._backends:
                kw["backends"] = self._backends
            decoder = self._nv.Decoder(device_id=device.index or 0, **kw)
            st = self._local.state = _NvThreadState(device, decoder)
            with self._states_lock:
                self._states.add(st)
        return st

    def forget_thread(self) -> None:
        """Drop this thread's decoder: the next call on it makes a fresh one."""
        st = getattr(self._local, "state", None)
        if st is not None:
            self._local.state = None
            with self._states_lock:
                self._states.discard(st)

    def memory_bytes(self) -> int:
        with self._states_lock:
            return sum(st.pool_bytes() for st in self._states)

    def __call__(self, blobs: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
        nv = self._nv
        st = self._state(device)
        stream = torch.cuda.current_stream(device)
        # the caller's copies out of the previous call's pool were queued before this call
        if st.last is not None:
            st.done[st.last].record(stream)
        p = 1 - st.last if st.last is not None else 0
        st.done[p].synchronize()  # the pool of the call before last is free again
        pool = st.pools[p]
        srcs = [nv.CodeStream(bytes(b)) for b in blobs]
        n = len(srcs)
        if len(pool) >= n:
            images = st.decoder.decode(
                srcs, images=pool[:n], params=self._params, cuda_stream=stream.cuda_stream
            )
        else:
            images = st.decoder.decode(srcs, params=self._params, cuda_stream=stream.cuda_stream)
            fresh = [im for im in images if im is not None]
            if len(fresh) > len(pool):
                st.pools[p] = fresh
        st.last = p
        return [None if im is None else torch.as_tensor(im, device=device) for im in images]

    def decode_into(
        self, blobs: Sequence[bytes], targets: Sequence[torch.Tensor], device: torch.device
    ) -> list[bool]:
        """Decode straight into the targets (views of the caller's batch tensor): no pool of the
        decoder's own (~0.2 GB per worker), no copy out of it, no torch call per image on the
        decoder thread (each one holds the GIL the networks' thread needs). The decode itself takes
        as long either way (docs/benchmarks.md, fifth session)."""
        nv = self._nv
        st = self._state(device)
        stream = torch.cuda.current_stream(device)
        images = [nv.as_image(t) for t in targets]
        srcs = [nv.CodeStream(bytes(b)) for b in blobs]
        got = st.decoder.decode(srcs, images=images, params=self._params, cuda_stream=stream.cuda_stream)
        done = {id(im) for im in got if im is not None}  # failed images are left out of the list
        return [id(im) in done for im in images]


class _NvThreadState:
    def __init__(self, device: torch.device, decoder: Any) -> None:
        self.device = device
        self.decoder = decoder
        self.pools: list[list[Any]] = [[], []]
        self.done = [torch.cuda.Event(), torch.cuda.Event()]
        self.last: int | None = None

    def pool_bytes(self) -> int:
        total = 0
        for pool in self.pools:
            for im in pool:
                cap = getattr(im, "capacity", None)
                total += int(cap) if cap else int(im.height) * int(im.width) * 3
        return total


@functools.lru_cache(maxsize=1)
def _torchvision_decoder() -> JpegBatchDecoder | None:
    try:
        return _TorchvisionDecoder()
    except Exception:  # not installed, or a broken build without the image extension
        return None


# nvImageCodec's JPEG 2000 and TIFF extensions complain when their libraries are absent: not our concern
_NV_NOISE = ("nvjpeg2k", "nvJPEG2000", "nvtiff", "nvTIFF")
_nv_decoders: dict[torch.device, _NvImgCodecDecoder] = {}


_NV_INIT = threading.Lock()

_nv_options: dict[str, Any] = {"backends": (), "cpu_threads": 0}


def configure_nvimgcodec(backends: str = "auto", cpu_threads: int = 0) -> None:
    """How this process's nvImageCodec decoders are made from now on: ``backends`` as
    :func:`parse_jpeg_backends` reads it, ``cpu_threads`` host threads per decoder (0: up to 4; they
    parse the files for the JPEG engine and run the ``cpu`` backend). Set before the first decode."""
    opts = {"backends": parse_jpeg_backends(backends), "cpu_threads": max(0, int(cpu_threads))}
    with _NV_INIT:
        if opts != _nv_options:
            _nv_options.update(opts)
            _nvimgcodec_setup.cache_clear()
            _nv_decoders.clear()


def _nvimgcodec_decoder(device: torch.device) -> JpegBatchDecoder | None:
    """nvImageCodec, if importable and it decodes a test JPEG on ``device`` (else None, with the
    reason on stderr once). Decoder threads that ask at once wait for one set-up."""
    with _NV_INIT:
        return _nvimgcodec_setup(device, _nv_options["backends"], _nv_options["cpu_threads"])


@functools.lru_cache(maxsize=8)
def _nvimgcodec_setup(
    device: torch.device, backends: tuple[tuple[str, float], ...] = (), cpu_threads: int = 0
) -> JpegBatchDecoder | None:
    with _quiet_stderr() as noise:
        try:
            from nvidia import nvimgcodec as nv
        except Exception:
            nv = None
        ok, error = False, "not installed"
        if nv is not None:
            try:
                threads = cpu_threads or min(4, os.cpu_count() or 1)
                dec = _NvImgCodecDecoder(nv, cpu_threads=threads, backends=backends)
                with torch.cuda.device(device):
                    out = dec([_probe_jpeg()], device)
                    torch.cuda.current_stream(device).synchronize()
                ok = out[0] is not None and tuple(out[0].shape) == (3, 8, 16)
                error = "" if ok else "it could not decode a test JPEG"
                if ok and not _decodes_into_tensors(dec, out[0], device):
                    _warn_once("into-setup", "nvImageCodec cannot decode into torch tensors here: copying")
                    dec.decode_into = None  # type: ignore[assignment,method-assign]
                # the set-up thread may decode batches later: not with the decoder that saw the tiny
                # test JPEG (such a decoder ran at less than half a fresh one's rate)
                dec.forget_thread()
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
    # stderr of every thread went to `noise` meanwhile: give back what is not the extensions' noise
    lines = noise.getvalue().splitlines()
    rest = [ln for ln in lines if not any(k in ln for k in _NV_NOISE)]
    if rest and (ok or nv is None):
        print("\n".join(rest), file=sys.stderr)
    if nv is None:
        return None
    if not ok:
        detail = "; ".join(ln.strip() for ln in lines if ln.strip())
        _warn_once(
            "nvimgcodec", f"nvImageCodec unusable ({error}){': ' + detail if detail else ''}; using nvJPEG"
        )
        return None
    _nv_decoders[device] = dec
    return dec


def _decodes_into_tensors(
    dec: _NvImgCodecDecoder, expected: torch.Tensor | None, device: torch.device
) -> bool:
    """Whether ``dec.decode_into`` writes the test JPEG's planes, as ``expected``, into a view of a
    torch tensor (and nothing beside it)."""
    try:
        into = torch.zeros((2, 3, 8, 16), dtype=torch.uint8, device=device)
        with torch.cuda.device(device):
            done = dec.decode_into([_probe_jpeg()], [into[1]], device)
            torch.cuda.current_stream(device).synchronize()
        same = expected is not None and torch.equal(into[1], expected)
        return done == [True] and same and not bool(into[0].any())
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def _probe_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def jpeg_decoder(device: torch.device | str, name: str = "auto") -> JpegBatchDecoder | None:
    """The GPU JPEG decoder ``name`` ("auto", "nvimgcodec", "nvjpeg") for ``device``, or None when
    ``device`` is not CUDA or that decoder is not usable here ("auto" falls back to nvjpeg)."""
    if name not in DECODER_NAMES:
        raise ValueError(f"unknown JPEG decoder {name!r}: use one of {', '.join(DECODER_NAMES)}")
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if name in ("auto", "nvimgcodec"):
        nvd = _nvimgcodec_decoder(dev)
        if nvd is not None or name == "nvimgcodec":
            return nvd
    return _torchvision_decoder()


def decoder_memory_bytes() -> int:
    """Device memory held by the JPEG decoders' own buffers in this process (outside torch's
    allocator, so ``torch.cuda.max_memory_allocated`` does not count it)."""
    return sum(d.memory_bytes() for d in list(_nv_decoders.values()))


def nvjpeg_available(device: torch.device | str) -> bool:
    """True when ``device`` is CUDA and a GPU JPEG decoder is usable."""
    return jpeg_decoder(device) is not None


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """A slow path taken on a GPU is worth one line on stderr per process (throughput depends on it)."""
    if key not in _warned:
        _warned.add(key)
        print(f"facefleet: {message}", file=sys.stderr)


def _gpu_decode(decoder: Any, blobs: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """One batched call; if it fails, retry file by file. None marks a file the decoder refused."""
    results: list[torch.Tensor | None]
    try:
        results = list(decoder(blobs, device))
        if len(results) != len(blobs):
            raise RuntimeError("decoder returned a wrong number of images")
    except Exception as exc:
        _warn_once(
            "batch", f"batched GPU JPEG decode failed ({type(exc).__name__}: {exc}); decoding file by file"
        )
        results = []
        for b in blobs:
            try:
                results.append(decoder([b], device)[0])
            except Exception:
                results.append(None)
            if results[-1] is not None and getattr(decoder, "borrowed", False):
                results[-1] = results[-1].clone()  # the next call reuses the decoder's buffer
    return results


def _cpu_decode(data: bytes, source: str, device: torch.device, max_pixels: int | None) -> torch.Tensor:
    rgb = decode_image(data, source, max_pixels=max_pixels)
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).contiguous()


@dataclass
class DecodedBatch:
    """``items``: one ``(3, H, W)`` uint8 tensor or :class:`ImageDecodeError` per blob, in order.
    ``stack``: when every item decoded to the same size, the ``(B, 3, H, W)`` tensor whose rows the
    items are (no copy of it is needed to batch them), else None."""

    items: list[torch.Tensor | ImageDecodeError]
    stack: torch.Tensor | None = None


def _oriented_size(h: JpegHeader) -> tuple[int, int]:
    return (h.width, h.height) if h.orientation in (5, 6, 7, 8) else (h.height, h.width)


def decode_images(
    blobs: Sequence[bytes],
    sources: Sequence[str],
    device: torch.device | str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decoder: str = "auto",
    jpeg_decoder_fn: JpegBatchDecoder | Any | None = None,
    stack: bool = False,
    chunk: int | None = None,
    arena: torch.Tensor | None = None,
) -> DecodedBatch:
    """Decode encoded images to ``(3, H, W)`` uint8 RGB tensors on ``device``, EXIF-oriented.

    ``decoder`` names the GPU JPEG decoder (see :func:`jpeg_decoder`; "cpu": Pillow for every file);
    ``jpeg_decoder_fn`` replaces it with any :class:`JpegBatchDecoder`-like callable (e.g. for tests;
    used on any device).
    ``stack=True`` also returns the batch as one ``(B, 3, H, W)`` tensor when every image has the same
    size; when the JPEG headers already say so, the GPU decoder writes ``chunk`` images at a time
    (default: all) straight into it, so at most ``chunk`` decoded images exist outside it. ``arena``: a
    flat uint8 tensor on ``device`` that batch tensor is made in (from its start) when it has room; the
    result refers to ``arena`` only when the whole batch landed there (``stack`` is then a view of it).
    """
    if len(blobs) != len(sources):
        raise ValueError(f"decode_images: {len(blobs)} blobs but {len(sources)} sources")
    dev = torch.device(device)
    n = len(blobs)
    out: list[torch.Tensor | ImageDecodeError | None] = [None] * n
    dec: Any = jpeg_decoder_fn
    if dec is None and decoder != "cpu":
        dec = jpeg_decoder(dev, decoder)
    gpu_items: list[tuple[int, JpegHeader]] = []
    cpu_items: list[int] = []
    for i, data in enumerate(blobs):
        if dec is not None and len(data) > 0:
            header = parse_jpeg_header(data)
            if header is not None and header.nvjpeg_ok:
                try:
                    check_image_size(str(sources[i]), header.width, header.height, max_pixels)
                except ImageDecodeError as exc:
                    out[i] = exc
                    continue
                gpu_items.append((i, header))
                continue
        cpu_items.append(i)
    buf: torch.Tensor | None = None
    in_buf: list[tuple[int, int]] = []  # (item, row of buf) written by the GPU decoder
    if gpu_items:
        assert dec is not None
        borrowed = bool(getattr(dec, "borrowed", False))
        sizes = {_oriented_size(h) for _, h in gpu_items}
        if stack and len(sizes) == 1 and len(gpu_items) > 1:
            (hh, ww) = sizes.pop()
            shape = (len(gpu_items), 3, hh, ww)
            need = len(gpu_items) * 3 * hh * ww
            if (
                arena is not None
                and arena.dtype == torch.uint8
                and arena.device == dev
                and arena.numel() >= need
            ):
                buf = arena.view(-1)[:need].view(shape)
            else:
                buf = torch.empty(shape, dtype=torch.uint8, device=dev)
        step = max(1, chunk or len(gpu_items))
        into = getattr(dec, "decode_into", None) if buf is not None else None
        for s in range(0, len(gpu_items), step):
            part = gpu_items[s : s + step]
            at = list(range(s, s + len(part)))
            if into is not None and buf is not None and all(h.orientation == 1 for _, h in part):
                # straight into the batch tensor's at; what the decoder could not do goes below
                try:
                    done = into([blobs[i] for i, _ in part], [buf[r] for r in at], dev)
                except Exception as exc:  # the batch call below tries them again
                    _warn_once("into", f"GPU JPEG decode into the batch failed ({type(exc).__name__}: {exc})")
                    done = [False] * len(part)
                in_buf += [(i, r) for (i, _), r, d in zip(part, at, done, strict=True) if d]
                left = [(p, r) for p, r, d in zip(part, at, done, strict=True) if not d]
                if not left:
                    continue
                part, at = [p for p, _ in left], [r for _, r in left]
            decoded = _gpu_decode(dec, [blobs[i] for i, _ in part], dev)
            if (
                buf is not None
                and at == list(range(at[0], at[0] + len(at)))
                and all(
                    t is not None and h.orientation == 1 and t.shape == buf.shape[1:]
                    for (_, h), t in zip(part, decoded, strict=True)
                )
            ):
                # the usual chunk: one copy into its at (torch calls on this thread hold the GIL,
                # which the networks' thread needs for each of its own calls)
                torch.stack(decoded, out=buf[at[0] : at[0] + len(at)])  # type: ignore[arg-type]
                in_buf += [(i, r) for (i, _), r in zip(part, at, strict=True)]
                del decoded
                continue
            for row, (i, header), tensor in zip(at, part, decoded, strict=True):
                if tensor is None:
                    cpu_items.append(i)
                    continue
                if tensor.shape[0] == 1:  # grayscale
                    tensor = tensor.expand(3, -1, -1)
                tensor = apply_exif_orientation(tensor, header.orientation)
                if buf is not None and tuple(tensor.shape[1:]) == tuple(buf.shape[2:]):
                    buf[row].copy_(tensor)
                    in_buf.append((i, row))
                elif borrowed or not tensor.is_contiguous():
                    out[i] = tensor.clone(memory_format=torch.contiguous_format)
                else:
                    out[i] = tensor
            del decoded
    if in_buf:
        assert buf is not None
        buf_rows = buf.unbind(0)
        for i, row in in_buf:
            out[i] = buf_rows[row]
    if dec is not None and cpu_items:
        _warn_once(
            "cpu",
            f"{len(cpu_items)} of {n} files of a batch decoded by Pillow on the CPU, not the GPU decoder",
        )
    for i in sorted(cpu_items):
        try:
            out[i] = _cpu_decode(blobs[i], str(sources[i]), dev, max_pixels)
        except ImageDecodeError as exc:
            out[i] = exc
    items: list[torch.Tensor | ImageDecodeError] = []
    for item in out:
        assert item is not None
        items.append(item)
    result = DecodedBatch(items)
    if stack:
        if buf is not None and len(in_buf) == len(buf) == n:
            result.stack = buf  # every image decoded on the GPU, in its row
        else:
            from facefleet.detect.views import stack_rows

            rows, result.stack = stack_rows(items)  # a stack of its own: its rows are copies
            if (
                result.stack is None
                and arena is not None
                and buf is not None
                and buf.data_ptr() == arena.data_ptr()
            ):
                # not the whole batch in ``arena``: nothing handed back may refer to it
                rows = [t.clone() if isinstance(t, torch.Tensor) and _within(t, arena) else t for t in rows]
            result.items = rows  # type: ignore[assignment]
    return result


def _within(t: torch.Tensor, buf: torch.Tensor) -> bool:
    """Whether ``t``'s memory starts inside ``buf``'s."""
    start = buf.data_ptr()
    return start <= t.data_ptr() < start + buf.numel() * buf.element_size()


def decode_batch(
    blobs: Sequence[bytes],
    sources: Sequence[str],
    device: torch.device | str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    use_nvjpeg: bool = True,
    jpeg_decoder: JpegBatchDecoder | Any | None = None,
    decoder: str = "auto",
) -> list[torch.Tensor | ImageDecodeError]:
    """Decode encoded images to ``(3, H, W)`` uint8 RGB tensors on ``device``, EXIF-oriented.

    Returns one entry per blob, in order: a tensor, or the :class:`ImageDecodeError` for that
    file. ``use_nvjpeg=False`` forces the Pillow path even on CUDA. ``jpeg_decoder`` replaces the
    GPU batch decoder (a :class:`JpegBatchDecoder`-like callable), e.g. for tests; when given it is
    used on any device.
    """
    if len(blobs) != len(sources):
        raise ValueError(f"decode_batch: {len(blobs)} blobs but {len(sources)} sources")
    if not use_nvjpeg and jpeg_decoder is None:
        decoder = "cpu"
    return decode_images(
        blobs, sources, device, max_pixels=max_pixels, decoder=decoder, jpeg_decoder_fn=jpeg_decoder
    ).items
