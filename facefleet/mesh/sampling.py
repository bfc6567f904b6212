"""Bilinear sampling of many uint8 images of any sizes at once, without converting whole images to float.

Images are packed into one flat uint8 buffer (a free view when they already form a ``(B, 3, H, W)``
tensor, channels-first or channels-last); each sample point names its image, so one gather serves
every face of every image whatever the sizes, and only the sampled pixels are ever converted to
float. The result equals ``F.grid_sample(img.float(), grid, mode="bilinear", align_corners=False)``
(padding "border" or "zeros") up to float rounding.

Coordinates are facefleet pixels: continuous, origin at the top-left corner of the top-left pixel, so
the centre of pixel ``(row i, col j)`` is ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from facefleet._device import host_to_device
from facefleet.detect.views import is_hwc
from facefleet.models import CompileCache, call_compiled, compile_available

__all__ = ["ImagePack", "grid_points", "pack_images", "sample_bilinear", "sample_grid", "warm_up_gather"]


@dataclass(frozen=True)
class ImagePack:
    """Images ``(3, H_i, W_i)`` uint8 flattened into ``data`` ``(sum 3 H_i W_i,)``; per image ``offset``,
    ``height``, ``width`` ``(B,)`` long on the device, and ``sizes`` ``[(H_i, W_i)]`` on the host.
    ``hwc``: each image is stored pixel by pixel (R, G, B interleaved) rather than plane by plane."""

    data: Tensor
    offset: Tensor
    height: Tensor
    width: Tensor
    sizes: tuple[tuple[int, int], ...]
    hwc: bool = False
    meta: Tensor | None = None  # (3, B): the rows offset, height, width are views of

    def __len__(self) -> int:
        return len(self.sizes)


def pack_images(images: Tensor | Sequence[Tensor], device: torch.device | str | None = None) -> ImagePack:
    """Pack a ``(B, 3, H, W)`` uint8 tensor (no copy when contiguous) or a list of ``(3, H, W)`` uint8
    tensors (one concatenation) into an :class:`ImagePack` on ``device`` (default: the images').

    The pack's tensors are ordinary ones (not inference tensors) even in inference mode: the compiled
    gather's graph is specialised to that, and a batch view and a concatenation must share it."""
    with torch.inference_mode(False):
        return _pack_images(images, device)


def _pack_images(images: Tensor | Sequence[Tensor], device: torch.device | str | None) -> ImagePack:
    hwc = False
    if isinstance(images, Tensor) and images.ndim == 4:
        b, _c, h, w = (int(s) for s in images.shape)
        dev = torch.device(device) if device is not None else images.device
        hwc = is_hwc(images)
        data = (images.permute(0, 2, 3, 1) if hwc else images).to(dev).reshape(-1)
        sizes = ((h, w),) * b
    else:
        ims = list(images)
        if not ims:
            raise ValueError("pack_images: no images")
        dev = torch.device(device) if device is not None else ims[0].device
        for i, im in enumerate(ims):
            if im.ndim != 3 or im.shape[0] != 3:
                raise ValueError(f"pack_images: image {i} must be (3, H, W), got {tuple(im.shape)}")
        hwc = all(is_hwc(im) for im in ims)
        flat = [(im.permute(1, 2, 0) if hwc else im).to(dev).reshape(-1) for im in ims]
        data = torch.cat(flat) if len(flat) > 1 else flat[0]
        sizes = tuple((int(im.shape[1]), int(im.shape[2])) for im in ims)
    if data.dtype != torch.uint8:
        raise ValueError(f"pack_images: expected uint8 images, got {data.dtype}")
    starts = [0]
    for h, w in sizes[:-1]:
        starts.append(starts[-1] + 3 * h * w)
    meta = torch.tensor([starts, [h for h, _ in sizes], [w for _, w in sizes]], dtype=torch.long)
    meta = host_to_device(meta, dev)  # one copy, through pinned memory: the device's queue does not wait
    return ImagePack(data, meta[0], meta[1], meta[2], sizes, hwc, meta)


def sample_bilinear(
    pack: ImagePack,
    image_index: Tensor,
    xy: Tensor,
    padding_mode: str = "border",
    chunk_points: int = 1 << 23,
    *,
    regions: bool = True,
    scale: float = 1.0,
    compiled: bool | None = None,
    cache: CompileCache | None = None,
) -> Tensor:
    """Bilinear samples ``(N, 3, P)`` float32 in [0, 255] (times ``scale``) of the images at pixel
    coordinates ``xy`` ``(N, P, 2)`` (x, y), point set ``n`` taken from image ``image_index[n]``
    (``(N,)`` long).

    ``padding_mode`` "border" clamps to the edge pixels, "zeros" reads black outside the image (as
    ``grid_sample``). Work is split into chunks of about ``chunk_points`` points to bound memory.
    On the CPU each point set is sampled from a float copy of the region its points reach
    (``regions=False``: the gather path every device uses otherwise; same result).
    ``compiled`` (default: on CUDA where :func:`facefleet.models.compile_available`): the gather path
    as one ``torch.compile`` kernel rather than ~30 passes over index and weight tensors (figures in
    docs/benchmarks.md); the same arithmetic, float rounding aside. ``cache``: where the compiled code
    (and a compiler failure) is kept: its owner's :data:`facefleet.models.CompileCache` (None: this call's
    own, compiled anew).
    """
    if padding_mode not in ("border", "zeros"):
        raise ValueError(f"sample_bilinear: padding_mode must be 'border' or 'zeros', got {padding_mode!r}")
    n, p = int(xy.shape[0]), int(xy.shape[1])
    if n == 0 or p == 0:
        return torch.empty(n, 3, p, dtype=torch.float32, device=xy.device)
    if xy.device.type == "cpu" and regions:
        out = torch.empty(n, 3, p, dtype=torch.float32, device=xy.device)
        out = _sample_regions(pack, image_index, xy.float(), padding_mode, out)
        return out.mul_(scale) if scale != 1.0 else out
    if compiled is None:
        compiled = xy.device.type == "cuda" and compile_available()
    calls = {} if cache is None else cache

    def part(s: int, e: int) -> Tensor:
        if compiled:
            return _compiled_sample(pack, image_index[s:e], xy[s:e].float(), padding_mode, scale, calls)
        return _sample(pack, image_index[s:e], xy[s:e].float(), padding_mode, scale)

    got = _in_chunks(n, p, max(1, chunk_points // p), torch.float32, xy.device, part)
    assert got is not None  # the gather paths always give samples
    return got


def _in_chunks(
    n: int,
    p: int,
    step: int,
    dtype: torch.dtype,
    device: torch.device,
    part: Callable[[int, int], Tensor | None],
) -> Tensor | None:
    """``part(s, e)`` ``(e - s, 3, p)`` samples of point sets ``s .. e`` for every chunk of ``step`` sets,
    in one ``(n, 3, p)`` view of ``(n, p, 3)`` memory (pixel by pixel, as a channels-last network input
    wants it; one chunk is returned as it is: no copy); None as soon as a part is None."""
    if step >= n:
        return part(0, n)
    out = torch.empty(n, p, 3, dtype=dtype, device=device).permute(0, 2, 1)
    for s in range(0, n, step):
        got = part(s, min(n, s + step))
        if got is None:
            return None
        out[s : s + step] = got
    return out


def grid_points(m: Tensor, t: Tensor, size: int) -> Tensor:
    """Image pixel coordinates ``(N, size * size, 2)`` of the pixel centres ``(u, v)`` of a ``size x size``
    grid (row-major) under affine maps ``m`` ``(N, 2, 2)``, ``t`` ``(N, 2)``: ``m @ (u, v) + t``."""
    return torch.matmul(_pixel_centres(size, m.device), m.mT) + t[:, None]


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int, device: torch.device) -> Tensor:
    """``(size * size, 2)`` pixel centres (u, v) of a ``size x size`` grid, row-major."""
    c = torch.arange(size, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1).to(device)


def sample_grid(
    pack: ImagePack,
    image_index: Tensor,
    m: Tensor,
    t: Tensor,
    size: int,
    padding_mode: str = "border",
    *,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    chunk_points: int = 1 << 23,
    compiled: bool | None = None,
    cache: CompileCache | None = None,
) -> Tensor:
    """Bilinear samples ``(N, 3, size * size)`` of ``dtype`` at the pixel centres of a ``size x size`` grid
    mapped into image ``image_index[n]`` by ``m[n] @ (u, v) + t[n]`` (``m`` ``(N, 2, 2)``, ``t`` ``(N, 2)``):
    rotated crops. The same samples as :func:`sample_bilinear` at :func:`grid_points`, float rounding
    aside; on the compiled path (as for :func:`sample_bilinear`) the points are computed in the one kernel
    of the call and the samples written in ``dtype`` (the mesh network's input precision), where the
    other path writes every point, then float32 samples, then a converted copy. On the CPU each crop is
    sampled from a float copy of the region its grid reaches, the grid made per crop from its affine map
    (no points; :func:`_sample_grid_regions`). ``cache``: as for :func:`sample_bilinear`."""
    if padding_mode not in ("border", "zeros"):
        raise ValueError(f"sample_grid: padding_mode must be 'border' or 'zeros', got {padding_mode!r}")
    n, p = int(m.shape[0]), size * size
    if compiled is None:
        compiled = m.device.type == "cuda" and compile_available()
    calls = {} if cache is None else cache
    if n and p and compiled:
        affine = torch.cat([m[:, 0], t[:, :1], m[:, 1], t[:, 1:]], 1).float()  # (N, 6)
        flags = (size, pack.hwc, padding_mode == "border", float(scale), dtype)

        def part(s: int, e: int) -> Tensor | None:
            idx = image_index[s:e]
            return _run_compiled(calls, "grid", "sample_grid", _grid_meta, pack, idx, affine[s:e], *flags)

        got = _in_chunks(n, p, max(1, chunk_points // p), dtype, m.device, part)
        if got is not None:
            return got
    if n and p and m.device.type == "cpu":
        out = torch.empty(n, p, 3, dtype=torch.float32).permute(0, 2, 1)  # channels-last, as a network wants
        out = _sample_grid_regions(pack, image_index, m.float(), t.float(), size, padding_mode, out)
        return (out.mul_(scale) if scale != 1.0 else out).to(dtype)
    pts = grid_points(m.float(), t.float(), size)
    out = sample_bilinear(
        pack, image_index, pts, padding_mode, chunk_points, scale=scale, compiled=compiled, cache=calls
    )
    return out.to(dtype)


def warm_up_gather(
    device: torch.device | str,
    compiled: bool | None = None,
    grid: tuple[str, torch.dtype] | None = None,
    cache: CompileCache | None = None,
) -> None:
    """Compile :func:`sample_bilinear`'s ``torch.compile`` path (when ``compiled``, default as there) now
    rather than on a batch: both memory layouts (decoded batches are planar, arrays from the host
    interleaved), both scales (crops, textures). Every size of the two calls per layout differs from the
    others and from the code's constants (2 for x, y; 3 channels; the crops' 6 affine terms): torch ties
    equal sizes together when it traces and then compiles them as fixed, and the first real batch
    recompiled (seconds). Made as the pipeline makes its calls, since the graph is specialised to both:
    the images outside inference mode (decoded frames are ordinary tensors), the rest in it (the mesh and
    texture stages run there); else the engine's first batch recompiles for the grad mode (seconds;
    TORCH_LOGS=recompiles shows it).
    ``grid``: (padding mode, output dtype) of the crops' :func:`sample_grid` calls to compile too.
    ``cache``: the compile cache the later calls will use (their owner's)."""
    dev = torch.device(device)
    calls = {} if cache is None else cache
    for hwc in (False, True):
        for b, n, p, scale in ((5, 7, 8, 1 / 255.0), (9, 10, 11, 1.0)):
            images = torch.zeros(b, 3, 13 + b, 17 + b, dtype=torch.uint8, device=dev)
            if hwc:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                idx = torch.arange(n, device=dev) % b
                xy = torch.rand(n, p, 2, device=dev) * 12
                pack = pack_images(images)
                sample_bilinear(
                    pack, idx, xy, "border", scale=scale, compiled=compiled, regions=False, cache=calls
                )
                if grid is not None:
                    m, t = torch.rand(n, 2, 2, device=dev), torch.rand(n, 2, device=dev) * 9
                    sample_grid(
                        pack, idx, m, t, p, grid[0], scale=1 / 255.0, dtype=grid[1], compiled=compiled,
                        cache=calls,
                    )  # fmt: skip


def _compiled_sample(
    pack: ImagePack, idx: Tensor, xy: Tensor, padding_mode: str, scale: float, cache: CompileCache
) -> Tensor:
    """:func:`_sample` through ``torch.compile`` (dynamic shapes: one compilation serves every number of
    faces and image size); :func:`_sample` from the first compiler failure on, with a warning."""
    flags = (pack.hwc, padding_mode == "border", float(scale))
    out = _run_compiled(cache, "fn", "sample_bilinear", _sample_meta, pack, idx, xy, *flags)
    return _sample(pack, idx, xy, padding_mode, scale) if out is None else out


def _run_compiled(
    cache: CompileCache,
    key: str,
    what: str,
    body: Any,
    pack: ImagePack,
    idx: Tensor,
    per_set: Tensor,
    *flags: Any,
) -> Any:
    """``body(pack.data, meta, idx, per_set, *flags)`` through ``torch.compile`` (made on first use and kept
    in ``cache[key]``: "fn" the gather path, "grid" the grid sampler), or None once the compiler has failed
    for that cache (with a warning naming ``what``)."""
    # Every call must match the one compiled graph (a recompilation takes seconds, mid-run):
    # torch.compile specialises sizes 0 and 1, so below 2 point sets or images the last one is
    # repeated; it guards on the tensors that inputs are views of (a batch in a decoder slot,
    # the warm-up's own images), so the inputs go in detached (same memory, no base); and it
    # guards on inference tensors against ordinary ones, so the pack's tensors (see pack_images)
    # and the meta made here are ordinary ones
    n = int(idx.shape[0])
    meta = pack.meta
    with torch.inference_mode(False):
        if meta is None:
            meta = torch.stack([pack.offset, pack.height, pack.width])
        if meta.shape[1] < 2:
            meta = torch.cat([meta, meta[:, -1:]], 1)
    if n < 2:
        idx, per_set = torch.cat([idx, idx[-1:]]), torch.cat([per_set, per_set[-1:]])
    args = [*(t.detach() for t in (pack.data, meta, idx, per_set)), *flags]
    out = call_compiled(cache, key, body, args, what)
    return out[:n] if out is not None and n < 2 else out


def _region_boxes(pack: ImagePack, idx: Tensor, lo: Tensor, hi: Tensor) -> list[tuple[int, int, int, int]]:
    """Per point set, the pixels its bilinear taps may read: ``lo``, ``hi`` ``(N, 2)`` the points' least
    and greatest (x, y), widened by a 2 px margin, clipped to image ``idx[n]``, at least one pixel:
    [(x0, y0, x1, y1)]. A region edge is an image edge or lies beyond every tap, so sampling the region
    equals sampling the whole image."""
    lo_px = (torch.floor(lo - 0.5).long() - 2).tolist()
    hi_px = (torch.ceil(hi - 0.5).long() + 3).tolist()
    boxes = []
    for i, (x0, y0), (x1, y1) in zip(idx.tolist(), lo_px, hi_px, strict=True):
        h, w = pack.sizes[i]
        x0, x1 = min(max(x0, 0), w - 1), max(min(x1, w), 1)
        y0, y1 = min(max(y0, 0), h - 1), max(min(y1, h), 1)
        boxes.append((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    return boxes


def _float_region(pack: ImagePack, i: int, offset: int, box: tuple[int, int, int, int]) -> Tensor:
    """``(1, 3, y1 - y0, x1 - x0)`` float32 copy of a region of image ``i``, in the pack's own memory
    layout (channels-last for interleaved images: whole rows of pixels are cast, not three strided planes;
    ``grid_sample`` gives the same values for either layout)."""
    x0, y0, x1, y1 = box
    h, w = pack.sizes[i]
    flat = pack.data[offset : offset + 3 * h * w]
    if pack.hwc:
        return flat.view(h, w, 3)[y0:y1, x0:x1].float().permute(2, 0, 1)[None]
    return flat.view(3, h, w)[:, y0:y1, x0:x1].float()[None]


def _sample_grid_regions(
    pack: ImagePack, idx: Tensor, m: Tensor, t: Tensor, size: int, padding_mode: str, out: Tensor
) -> Tensor:
    """CPU path of :func:`sample_grid`: per point set, ``grid_sample`` on the float copy of just the region
    its grid reaches (:func:`_region_boxes`, from the grid's four corner points: the map is affine), with
    the grid made by ``affine_grid`` in the region's normalised coordinates (no ``(N, P, 2)`` pixel
    points). ``out`` ``(N, 3, size * size)``."""
    import torch.nn.functional as F

    offsets = pack.offset.tolist()
    c = torch.tensor([[0.5, 0.5], [size - 0.5, 0.5], [0.5, size - 0.5], [size - 0.5, size - 0.5]])
    corners = torch.matmul(c, m.mT) + t[:, None]  # (N, 4, 2)
    boxes = _region_boxes(pack, idx, corners.amin(1), corners.amax(1))
    b = torch.tensor(boxes, dtype=torch.float64)
    origin, extent = b[:, :2], b[:, 2:] - b[:, :2]  # (N, 2) region top-left and size, pixels
    # output pixel centre (u, v) -> image pixel m @ (u, v) + t -> region coordinate
    # (pixel - origin) / extent * 2 - 1 = a(u) + b(v): per set and axis, a term of the column and one of
    # the row (in float64, ``t - origin`` keeps its digits), so the (N, size, size, 2) grid is one sum
    # of two float32 vectors per element (affine_grid's batched product costs several times that)
    m64, t64 = m.double(), t.double()
    uv = torch.arange(size, dtype=torch.float64) + 0.5  # (size,)
    per_px = (2 / extent)[:, :, None]  # (N, 2, 1)
    cols = (m64[:, :, 0, None] * uv * per_px).float()  # (N, 2, size): the term of u
    rows = ((m64[:, :, 1, None] * uv + (t64 - origin)[:, :, None]) * per_px - 1).float()  # of v
    grids = torch.empty(len(boxes), size, size, 2)
    for a in range(2):
        torch.add(rows[:, a, :, None], cols[:, a, None, :], out=grids[..., a])
    for k, (i, box) in enumerate(zip(idx.tolist(), boxes, strict=True)):
        out[k] = F.grid_sample(
            _float_region(pack, i, offsets[i], box), grids[k, None], mode="bilinear",
            padding_mode=padding_mode, align_corners=False,
        ).view(3, -1)  # fmt: skip
    return out


def _sample_regions(pack: ImagePack, idx: Tensor, xy: Tensor, padding_mode: str, out: Tensor) -> Tensor:
    """CPU path: per point set, ``grid_sample`` on the float copy of just the pixels its points reach
    (:func:`_region_boxes`), ~7x the gather path on a CPU; the same result as on the whole image."""
    import torch.nn.functional as F

    offsets = pack.offset.tolist()
    boxes = _region_boxes(pack, idx, xy.amin(1), xy.amax(1))
    b = torch.tensor(boxes, dtype=xy.dtype)
    grids = (xy - b[:, None, :2]) / (b[:, None, 2:] - b[:, None, :2]) * 2 - 1  # every set's grid at once
    for k, (i, box) in enumerate(zip(idx.tolist(), boxes, strict=True)):
        out[k] = F.grid_sample(
            _float_region(pack, i, offsets[i], box), grids[k, None, None], mode="bilinear",
            padding_mode=padding_mode, align_corners=False,
        )[0, :, 0]  # fmt: skip
    return out


def _sample(
    pack: ImagePack,
    idx: Tensor,
    xy: Tensor,
    padding_mode: str,
    scale: float = 1.0,
) -> Tensor:
    """Gather path: the four taps of every point as one ``(n, P, 2, 2)`` pixel index and one gather, then
    a weighted sum over the taps; ~30 operations per call (each a host call and a kernel launch)
    whatever the number of points. Returns a ``(n, 3, P)`` view of ``(n, P, 3)`` memory (pixel by
    pixel, as a channels-last network input wants it)."""
    return _sample_tensors(
        pack.data, pack.offset, pack.height, pack.width, idx, xy, pack.hwc, padding_mode == "border", scale
    )


def _sample_meta(
    data: Tensor, meta: Tensor, idx: Tensor, xy: Tensor, hwc: bool, border: bool, scale: float
) -> Tensor:
    """The compiled gather: :func:`_bilinear` at points ``xy`` ``(n, P, 2)``, float32."""
    return _bilinear(data, meta, idx, xy[..., 0], xy[..., 1], hwc, border, scale, torch.float32)


def _grid_meta(
    data: Tensor,
    meta: Tensor,
    idx: Tensor,
    affine: Tensor,
    size: int,
    hwc: bool,
    border: bool,
    scale: float,
    dtype: torch.dtype,
) -> Tensor:
    """The compiled grid sampler: :func:`_bilinear` at the pixel centres ``(u, v)`` of a ``size x size``
    grid (row-major) mapped by ``affine`` ``(n, 6)`` rows ``(m00, m01, t0, m10, m11, t1)``: ``x = m00 u +
    m01 v + t0``, ``y = m10 u + m11 v + t1``. The points are computed in the kernel, never stored."""
    p = torch.arange(size * size, device=data.device)
    u = (p % size).float() + 0.5
    v = torch.div(p, size, rounding_mode="floor").float() + 0.5
    a = affine[:, :, None]  # (n, 6, 1)
    x = a[:, 0] * u + a[:, 1] * v + a[:, 2]
    y = a[:, 3] * u + a[:, 4] * v + a[:, 5]
    return _bilinear(data, meta, idx, x, y, hwc, border, scale, dtype)


def _bilinear(
    data: Tensor,
    meta: Tensor,
    idx: Tensor,
    x: Tensor,
    y: Tensor,
    hwc: bool,
    border: bool,
    scale: float,
    dtype: torch.dtype,
) -> Tensor:
    """Bilinear samples ``(n, 3, P)`` of ``dtype`` (a view of ``(n, P, 3)`` memory) at pixel coordinates
    ``x``, ``y`` ``(n, P)`` of the packed images ``idx`` ``(n,)`` (``meta``: the pack's offsets, heights
    and widths as rows), as :func:`_sample_tensors` computes them, written for ``torch.compile``: each tap
    of each channel is a plain indexed read and the sum is elementwise, so that Inductor makes one
    kernel of the whole call (the tap-stacked form of :func:`_sample_tensors`, few operations for the
    eager path, compiles into four kernels)."""
    offset, height, width = meta[0][idx][:, None], meta[1][idx][:, None], meta[2][idx][:, None]
    qx, qy = x - 0.5, y - 0.5  # pixel-centre index coordinates (grid_sample, align_corners=False)
    if border:  # clamped into the image: both taps inside (the second weighs 0 at an edge)
        qx = torch.minimum(qx.clamp(min=0.0), width - 1)
        qy = torch.minimum(qy.clamp(min=0.0), height - 1)
    fx0, fy0 = torch.floor(qx), torch.floor(qy)
    fx, fy = qx - fx0, qy - fy0
    x0, y0 = fx0.long(), fy0.long()
    x1, y1 = x0 + 1, y0 + 1
    wx0, wx1, wy0, wy1 = 1 - fx, fx, (1 - fy) * scale, fy * scale
    if not border:  # zeros: taps outside the image read black: zero weight, any index inside
        wx0 = wx0 * ((x0 >= 0) & (x0 < width))
        wx1 = wx1 * ((x1 >= 0) & (x1 < width))
        wy0 = wy0 * ((y0 >= 0) & (y0 < height))
        wy1 = wy1 * ((y1 >= 0) & (y1 < height))
    x0, x1 = (torch.minimum(c.clamp(min=0), width - 1) for c in (x0, x1))
    y0, y1 = (torch.minimum(c.clamp(min=0), height - 1) for c in (y0, y1))
    if hwc:  # interleaved pixels: channel c of pixel k at 3 k + c
        plane: Tensor | int = 1
        r0, r1, c0, c1 = offset + 3 * width * y0, offset + 3 * width * y1, 3 * x0, 3 * x1
    else:  # channel planes: offset + c H W + pixel
        plane = height * width
        r0, r1, c0, c1 = offset + width * y0, offset + width * y1, x0, x1
    chans = []
    for c in range(3):
        top = data[r0 + c0 + c * plane].float() * wx0 + data[r0 + c1 + c * plane].float() * wx1
        bottom = data[r1 + c0 + c * plane].float() * wx0 + data[r1 + c1 + c * plane].float() * wx1
        chans.append((top * wy0 + bottom * wy1).to(dtype))
    return torch.stack(chans, -1).permute(0, 2, 1)


def _sample_tensors(
    data: Tensor,
    offset: Tensor,
    height: Tensor,
    width: Tensor,
    idx: Tensor,
    xy: Tensor,
    hwc: bool,
    border: bool,
    scale: float,
) -> Tensor:
    """:func:`_sample` on the fields of an :class:`ImagePack` (tensors and flags: ``torch.compile`` input)."""
    size = torch.stack([width[idx], height[idx]], 1)[:, None]  # (n, 1, 2) long: x, y
    q = xy - 0.5  # pixel-centre index coordinates (grid_sample, align_corners=False)
    if border:  # clamped into the image: both taps inside (the second weighs 0 at an edge)
        q = torch.minimum(q.clamp(min=0.0), size - 1)
    q0 = torch.floor(q)
    f = q - q0
    i0 = q0.long()
    i = torch.stack([i0, i0 + 1], -1)  # (n, P, 2 [x, y], 2 [tap])
    wt = torch.stack([1 - f, f], -1)  # the same layout: weight of each tap along each axis
    del q, q0, f, i0
    if not border:  # zeros: taps outside the image read black: zero weight, any index inside
        wt = wt * ((i >= 0) & (i < size[..., None]))
    i = i.clamp_(min=0).clamp_(max=size[..., None] - 1)
    # (n, P, 2 [y tap], 2 [x tap]): pixel index within the image, and the weight of the tap
    lin = i[:, :, 1, :, None] * size[..., 0, None, None] + i[:, :, 0, None, :]
    wt = wt[:, :, 1, :, None] * (wt[:, :, 0, None, :] * scale)
    del i
    if hwc:  # interleaved pixels: one row of 3 bytes per index
        lin += (offset[idx] // 3)[:, None, None, None]  # first pixel of each image
        px = data.view(-1, 3)[lin]  # (n, P, 2, 2, 3) uint8
    else:  # channel planes: offset + c H W + pixel
        plane = (height[idx] * width[idx])[:, None, None, None, None]
        lin = lin[..., None] + torch.arange(3, device=xy.device) * plane
        px = data[lin + offset[idx][:, None, None, None, None]]
    del lin
    out = px[:, :, 0, 0].float().mul_(wt[:, :, 0, 0, None])  # (n, P, 3)
    for a, b in ((0, 1), (1, 0), (1, 1)):
        out.addcmul_(px[:, :, a, b].float(), wt[:, :, a, b, None])
    return out.permute(0, 2, 1)
