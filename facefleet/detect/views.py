"""Letterboxing (aspect-preserving resize + centred padding) of image regions, on the device.

A *view* is a rectangle of one source image that is resized to fit a square model input of side ``S``
and padded symmetrically. ``ViewTransform`` maps normalised model coordinates back to source pixels.

Pixel convention (shared with the rest of facefleet): continuous coordinates, origin at the top-left
corner of the top-left pixel, so pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` (this is also what
``interpolate``/``grid_sample`` with ``align_corners=False`` and MediaPipe's normalised coordinates use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from facefleet._device import host_to_device
from facefleet.models import CompileCache

__all__ = [
    "ViewTransform",
    "is_hwc",
    "letterbox",
    "letterbox_params",
    "letterbox_pixels",
    "letterbox_sizes",
    "letterbox_tiles",
    "resize_matrix",
    "stack_images",
    "stack_rows",
    "warm_up_letterbox",
]


@dataclass(frozen=True)
class ViewTransform:
    """Per-view affine map ``(V, 2)`` tensors: ``pixel = offset + normalised * scale`` (x and y)."""

    scale: Tensor  # (V, 2) source pixels per normalised model unit
    offset: Tensor  # (V, 2) source pixel of the model input's top-left corner

    def to_pixels(self, xy: Tensor) -> Tensor:
        """Normalised model coordinates ``(V, ..., 2)`` -> source pixels ``(V, ..., 2)``."""
        shape = (xy.shape[0],) + (1,) * (xy.ndim - 2) + (2,)
        return xy * self.scale.view(shape) + self.offset.view(shape)


def is_hwc(image: Tensor) -> bool:
    """True for a ``(3, H, W)`` / ``(B, 3, H, W)`` tensor whose pixels lie channels-interleaved in memory
    (R, G, B next to each other: a permuted view of an ``(H, W, 3)`` NumPy image, or a channels-last
    batch), rather than as channel planes."""
    if image.ndim not in (3, 4) or image.shape[-3] != 3 or image.shape[-1] < 2:
        return False
    return image.stride(-3) == 1 and image.stride(-1) == 3


def stack_images(images: Sequence[Tensor]) -> Tensor:
    """Stack same-size ``(3, H, W)`` images into ``(B, 3, H, W)``, keeping their memory layout: images
    decoded on the CPU are channels-last views of ``(H, W, 3)`` arrays, and a channels-last batch both
    stacks faster and feeds the fast uint8 resize of the CPU (see ``letterbox_pixels``)."""
    if all(is_hwc(im) for im in images):
        return torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2)
    return torch.stack(list(images))


def stack_rows(items: Sequence[object]) -> tuple[list[object], Tensor | None]:
    """Items (tensors, or anything else for a failed image) as rows of one ``(B, 3, H, W)`` stack
    (:func:`stack_images`) when they are two or more tensors of one shape: ``(rows, stack)``; else
    ``(items, None)``."""
    tensors = [t for t in items if isinstance(t, Tensor)]
    if len(tensors) < 2 or len(tensors) != len(items) or any(t.shape != tensors[0].shape for t in tensors):
        return list(items), None
    stack = stack_images(tensors)
    return list(stack.unbind(0)), stack


def _fit(h: int, w: int, size: int) -> tuple[int, int]:
    s = size / max(h, w)
    return max(1, min(size, round(h * s))), max(1, min(size, round(w * s)))


def letterbox_params(h: int, w: int, size: int) -> tuple[float, float, float, float]:
    """Host-side view map of an ``h x w`` region letterboxed to ``size``: (scale x, scale y, offset x,
    offset y), offsets relative to the region's top-left corner (see :class:`ViewTransform`)."""
    nh, nw = _fit(h, w, size)
    py, px = (size - nh) // 2, (size - nw) // 2
    return size * w / nw, size * h / nh, -px * w / nw, -py * h / nh


def resize_matrix(n_in: int, n_out: int, pad_before: int = 0, total: int | None = None) -> Tensor:
    """``(total, n_in)`` float64 weights of a 1-D bilinear resize from ``n_in`` to ``n_out`` samples
    (antialiased when shrinking: the triangle filter widened by the scale factor, each row normalised,
    which is what ``F.interpolate(..., mode="bilinear", antialias=True, align_corners=False)`` computes
    along one axis), placed at rows ``pad_before .. pad_before + n_out`` of ``total`` rows (default
    ``n_out``); other rows are zero (letterbox padding)."""
    total = n_out if total is None else total
    scale = n_in / n_out
    support = max(scale, 1.0)  # filter half-width in input samples
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # output sample centres, input coords
    idx = torch.arange(n_in, dtype=torch.float64)
    if scale > 1.0:  # shrinking: triangle filter over input pixel centres
        dist = ((idx + 0.5)[None, :] - centre[:, None]) / support
    else:  # enlarging: plain bilinear, edge samples clamped
        dist = idx[None, :] - (centre - 0.5).clamp(0.0, n_in - 1.0)[:, None]
    wts = (1.0 - dist.abs()).clamp(min=0.0)
    wts = wts / wts.sum(1, keepdim=True)
    out = torch.zeros(total, n_in, dtype=torch.float64)
    out[pad_before : pad_before + n_out] = wts
    return out


_RESIZE_CACHE: dict[tuple[object, ...], tuple[list[Tensor], Tensor]] = {}


def _stream_of(device: torch.device) -> int | None:
    """The current CUDA stream's id on ``device`` (None elsewhere): the weight caches keep one entry per
    stream, so that an entry is only read on the stream it was made on, and dropping it (from any
    thread) cannot hand its memory to another stream's allocations while kernels still read it."""
    return torch.cuda.current_stream(device).stream_id if device.type == "cuda" else None


def _letterbox_weights(
    h: int, w: int, sizes: tuple[int, ...], device: torch.device
) -> tuple[list[Tensor], Tensor]:
    """float16 letterbox weights of an ``h x w`` region to each of ``sizes``: rows ``(S, h)`` per size
    (with the 1/255 scale and the padding rows), and the sizes' transposed column weights side by
    side ``(w, sum S)``."""
    key = (h, w, sizes, str(device), _stream_of(device))
    mats = _RESIZE_CACHE.get(key)
    if mats is None:
        rows, cols = [], []
        for size in sizes:
            nh, nw = _fit(h, w, size)
            py, px = (size - nh) // 2, (size - nw) // 2
            rows.append((resize_matrix(h, nh, py, size) / 255.0).to(device, torch.float16))  # (S, h)
            cols.append(resize_matrix(w, nw, px, size).t())  # (w, S)
        mats = (rows, torch.cat(cols, 1).contiguous().to(device, torch.float16))
        if len(_RESIZE_CACHE) > 64:
            _RESIZE_CACHE.clear()
        _RESIZE_CACHE[key] = mats
    return mats


def _half(flat: Tensor) -> Tensor:
    return flat.to(torch.float16)


def to_half(x: Tensor, compiled: bool | None = None, cache: CompileCache | None = None) -> Tensor:
    """A float16 copy of uint8 frames (the letterbox products' input). torch's own cast from uint8 is its
    generic elementwise kernel with a conversion per element, not vectorised (a sizeable part of a 1080p
    batch's GPU time); the same cast as a ``torch.compile`` (Triton) kernel moves whole vectors.
    ``compiled``: None = on CUDA where :func:`facefleet.models.compile_available`; only contiguous uint8
    tensors take that path. ``cache``: where the compiled cast (key "half") and a compiler failure are
    kept, its owner's (None: this call's)."""
    from facefleet.models import call_compiled, compile_available

    if compiled is None:
        compiled = x.device.type == "cuda" and compile_available()
    if compiled and x.dtype == torch.uint8 and x.is_contiguous() and x.numel() > 1:
        # one flat shape for every frame size and count, and detached: torch.compile guards on the
        # tensor an input is a view of (a batch in a decoder slot)
        calls = {} if cache is None else cache
        out = call_compiled(calls, "half", _half, [x.view(-1).detach()], "letterbox")
        if out is not None:
            return out.view(x.shape)
    return x.to(torch.float16)


def warm_up_letterbox(
    device: torch.device | str, compiled: bool | None = None, cache: CompileCache | None = None
) -> None:
    """Compile :func:`to_half` now rather than on the first batch: called as the detector calls it (frames
    made outside inference mode, sliced and cast in it), twice with sizes unlike each other and the
    code's constants (torch specialises sizes 0 and 1 and ties equal ones), for chunks at the start of
    their memory and after it: torch specialises a storage offset of 0 too (else a batch's first chunk
    recompiles the cast on the engine's first batch: TORCH_LOGS=recompiles shows it)."""
    dev = torch.device(device)
    for b in (5, 7):
        frames = torch.zeros(b + 1, 3, 11 + b, 13 + b, dtype=torch.uint8, device=dev)
        with torch.inference_mode():
            to_half(frames[1:], compiled, cache)
            to_half(frames[:b], compiled, cache)


def _letterbox_matmuls(
    regions: Tensor, sizes: Sequence[int], compiled: bool | None = None, cache: CompileCache | None = None
) -> list[Tensor]:
    """The letterboxes of :func:`letterbox_pixels` to each of ``sizes`` as matrix products, in float16
    on the GPU's tensor cores: one column product for all sizes, then one row product per size. The
    antialiased ``interpolate`` kernel these replace is slow on GPUs (the largest kernel of a 1080p batch);
    the padding and the 1/255 scale come free with the weights."""
    _, _, h, w = regions.shape
    rows, cols_t = _letterbox_weights(h, w, tuple(sizes), regions.device)
    cols = to_half(regions, compiled, cache) @ cols_t  # (V, 3, h, sum S)
    outs, at = [], 0
    for size, wy16 in zip(sizes, rows, strict=True):
        outs.append((wy16 @ cols[..., at : at + size]).float().clamp_(0.0, 1.0))  # (V, 3, S, S)
        at += size
    return outs


def _letterbox_matmul(
    regions: Tensor, size: int, compiled: bool | None = None, cache: CompileCache | None = None
) -> Tensor:
    """:func:`_letterbox_matmuls` to one size."""
    return _letterbox_matmuls(regions, (size,), compiled, cache)[0]


def letterbox_pixels(
    regions: Tensor, size: int, compiled: bool | None = None, cache: CompileCache | None = None
) -> Tensor:
    """Same-sized regions ``(V, 3, h, w)`` (uint8 or float in [0, 255], may be a strided view) ->
    letterboxed float32 ``(V, 3, S, S)`` in [0, 1]; no host-device transfer. ``compiled``: as for
    :func:`to_half` (on CUDA the float16 conversion of the matrix products)."""
    _, _, h, w = regions.shape
    nh, nw = _fit(h, w, size)
    shrink = nh < h or nw < w
    if regions.device.type == "cuda" and shrink:
        return _letterbox_matmul(regions, size, compiled, cache)
    py, px = (size - nh) // 2, (size - nw) // 2
    if regions.dtype == torch.uint8 and regions.device.type == "cpu" and shrink:
        # the CPU has a fast uint8 antialiased resize (channels-last): ~15x the float path on 1080p
        # frames; the result differs from it by rounding to whole levels (< 1/255). Scaled into the
        # padded output in one pass (channels-last, as the CPU networks take it): the same values as
        # the float conversion, scale, clamp and pad below
        small = F.interpolate(
            regions.contiguous(memory_format=torch.channels_last),
            size=(nh, nw),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        out = torch.zeros(regions.shape[0], size, size, 3).permute(0, 3, 1, 2)
        torch.div(small, 255.0, out=out[:, :, py : py + nh, px : px + nw])
        return out
    x = regions.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=shrink)
    x = (x / 255.0).clamp(0.0, 1.0)
    return F.pad(x, (px, size - nw - px, py, size - nh - py), value=0.0)


def letterbox_sizes(
    regions: Tensor, sizes: Sequence[int], compiled: bool | None = None, cache: CompileCache | None = None
) -> list[Tensor]:
    """:func:`letterbox_pixels` of the same regions to several sizes: one float32 ``(V, 3, S, S)`` per
    size. On CUDA, when every size shrinks the regions, one float16 conversion and one column product
    (the sizes' column weights side by side) serve all sizes: the two detectors' letterboxes of a
    1080p batch then read the frames once instead of twice. ``compiled``: as for :func:`to_half`."""
    _, _, h, w = regions.shape
    fits = [_fit(h, w, size) for size in sizes]
    if len(sizes) < 2 or regions.device.type != "cuda" or not all(nh < h or nw < w for nh, nw in fits):
        return [letterbox_pixels(regions, size, compiled, cache) for size in sizes]
    return _letterbox_matmuls(regions, sizes, compiled, cache)


_TILE_CACHE: dict[tuple[object, ...], tuple[Tensor, Tensor]] = {}


def _tile_weights(
    h: int,
    w: int,
    xs: tuple[int, ...],
    ys: tuple[int, ...],
    side: int,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Block weights of a tile grid: rows ``(len(ys) * S, h)`` (with the 1/255 scale) and columns
    ``(w, len(xs) * S)``; block ``j`` / ``i`` letterboxes the tile starting at ``ys[j]`` / ``xs[i]``."""
    key = (h, w, xs, ys, side, size, str(device), dtype, _stream_of(device))
    mats = _TILE_CACHE.get(key)
    if mats is None:
        nh, nw = _fit(side, side, size)
        py, px = (size - nh) // 2, (size - nw) // 2
        wy = torch.zeros(len(ys) * size, h, dtype=torch.float64)
        for j, y0 in enumerate(ys):
            wy[j * size : (j + 1) * size, y0 : y0 + side] = resize_matrix(side, nh, py, size)
        wx = torch.zeros(len(xs) * size, w, dtype=torch.float64)
        for i, x0 in enumerate(xs):
            wx[i * size : (i + 1) * size, x0 : x0 + side] = resize_matrix(side, nw, px, size)
        mats = ((wy / 255.0).to(device, dtype), wx.t().contiguous().to(device, dtype))
        if len(_TILE_CACHE) > 64:
            _TILE_CACHE.clear()
        _TILE_CACHE[key] = mats
    return mats


def letterbox_tiles(
    images: Tensor,
    origins: Sequence[tuple[int, int]],
    side: int,
    size: int,
    *,
    budget: int = 1 << 26,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Square ``side x side`` tiles at ``origins`` (x, y) of same-size images ``(n, 3, H, W)`` uint8 ->
    letterboxed float32 ``(T * n, 3, S, S)`` in [0, 1], tile-major (every image's first tile, then
    every image's second tile...), as :func:`letterbox_pixels` of each tile would give.

    On CUDA a whole grid of tiles comes from two matrix products over the images (block weights,
    one per tile row and tile column), so each image is converted to float16 once instead of once
    per tile through a strided view (28 tiles of a 1080p frame: 28 slow conversions, 56 products and
    their launches, then). ``budget``: most image elements converted at once. ``dtype``: of the
    products (default float16 on CUDA; elsewhere the tiles go one by one through letterbox_pixels
    unless a dtype is given)."""
    n, _, h, w = images.shape
    if not origins or n == 0:
        return images.new_zeros((0, 3, size, size), dtype=torch.float32)
    if dtype is None:
        if images.device.type != "cuda" or side <= size:
            return torch.cat(
                [letterbox_pixels(images[:, :, y0 : y0 + side, x0 : x0 + side], size) for x0, y0 in origins]
            )
        dtype = torch.float16
    xs = tuple(sorted({x0 for x0, _ in origins}))
    ys = tuple(sorted({y0 for _, y0 in origins}))
    wy, wx = _tile_weights(h, w, xs, ys, side, size, images.device, dtype)
    # (T,) positions of the requested tiles in the (len(ys), len(xs)) grid
    pick = host_to_device([ys.index(y0) * len(xs) + xs.index(x0) for x0, y0 in origins], images.device)
    step = max(1, budget // (3 * h * w))
    parts = []
    for s in range(0, n, step):
        x = images[s : s + step].to(dtype)
        grid = wy @ (x @ wx)  # (m, 3, len(ys) * S, len(xs) * S)
        m = grid.shape[0]
        grid = grid.view(m, 3, len(ys), size, len(xs), size).permute(2, 4, 0, 1, 3, 5)
        parts.append(grid.reshape(len(ys) * len(xs), m, 3, size, size).index_select(0, pick))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # (T, n, 3, S, S)
    return out.reshape(len(origins) * n, 3, size, size).float().clamp_(0.0, 1.0)


def letterbox(regions: Tensor, size: int, origins: Tensor | None = None) -> tuple[Tensor, ViewTransform]:
    """Letterbox same-sized regions ``(V, 3, h, w)`` (uint8 or float in [0, 255]) to ``(V, 3, S, S)``.

    Resizing is bilinear, antialiased when shrinking. Padding is black. Returns the float32 images in
    [0, 1] and the affine map of each view back to source pixels; ``origins``
    ``(V, 2)`` (x, y) is the top-left source pixel of each region (default 0).
    """
    v, _, h, w = regions.shape
    out = letterbox_pixels(regions, size)
    sx, sy, ox, oy = letterbox_params(h, w, size)
    dev = regions.device
    scale = torch.tensor([sx, sy], device=dev).expand(v, 2)
    off = torch.tensor([ox, oy], device=dev).expand(v, 2)
    if origins is not None:
        off = off + origins.to(dev, torch.float32)
    return out, ViewTransform(scale.contiguous(), off.contiguous())
