"""facefleet.io.nvdec: frame-exact NVDEC reading into torch tensors, and its CPU fallback.

CPU tests: the fallback equals ``read_frames``; the NV12 -> RGB conversion in torch matches PyAV's
own ``rgb24`` conversion within a stated tolerance (NV12 frames made by PyAV on the CPU, read through
the same DLPack export the CUDA path uses); the frame-exact walk with that conversion gives the same
frames as ``read_frames``. CUDA tests (skipped without CUDA or PyAV's CUDA hwaccel) compare the NVDEC
reader with ``read_frames`` on the shared clips and on a synthetic clip's chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from facefleet.io import nvdec  # noqa: E402
from facefleet.io.video import VideoError, _open, plan_chunks, probe_video, read_frames, walk_range  # noqa: E402
from facefleet.sources.items import FrameRange  # noqa: E402

# torch's NV12 -> RGB against swscale's (PyAV's to_ndarray("rgb24")): swscale's default fast path sits
# about one level lower on average; chroma edges differ by a few levels
MEAN_TOL = 2.0
MAX_TOL = 8

needs_nvdec = pytest.mark.skipif(not nvdec.nvdec_available(), reason="needs CUDA and PyAV's CUDA hwaccel")


def _clip(
    path: Path, n: int = 48, size: tuple[int, int] = (96, 64), gop: int = 12, colorspace: int = 1
) -> Path:
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = gop
        vs.codec_context.colorspace, vs.codec_context.color_range = colorspace, 1
        vs.codec_context.options = {"bf": "2", "sc_threshold": "0", "keyint_min": str(gop)}
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            img = np.stack([(xx * 3 + i * 5) % 256, (yy * 4 + i * 3) % 256, (xx + yy + i * 7) % 256], -1)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            img[: h // 4] = (i * 37) % 256  # the frame's index in a band
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            dst = "ITU709" if colorspace == 1 else "ITU601"
            f = f.reformat(format="yuv420p", dst_colorspace=dst, dst_color_range="MPEG")
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return path


def _nv12_convert(frame):
    n = frame.reformat(format="nv12")
    y, uv = nvdec._dlpack(n.planes[0]), nvdec._dlpack(n.planes[1])
    return nvdec.nv12_to_rgb(
        y, uv, matrix=nvdec.yuv_matrix(frame.colorspace), full_range=frame.color_range == 2
    )


def _diff(a: torch.Tensor, rgb: np.ndarray) -> torch.Tensor:
    return (a.cpu().int() - torch.from_numpy(rgb).permute(2, 0, 1).int()).abs()


def test_fallback_equals_read_frames(tmp_path: Path) -> None:
    p = str(_clip(tmp_path / "c.mp4"))
    item = FrameRange(p, 7, 20)
    ref = list(read_frames(item))
    got = list(nvdec.frame_reader(item, "cpu"))
    assert [g[0] for g in got] == [r[0] for r in ref] == list(range(7, 27))
    assert [g[1] for g in got] == [r[1] for r in ref]
    for (_, _, t), (_, _, a) in zip(got, ref):
        assert t.shape == (3, 64, 96) and t.dtype == torch.uint8 and t.is_contiguous()
        assert torch.equal(t, torch.from_numpy(a).permute(2, 0, 1))
    whole = list(nvdec.frame_reader(p, "cpu"))
    assert len(whole) == 48
    assert nvdec.choose_backend("cpu") == "cpu"


def test_batches_cover_the_range(tmp_path: Path) -> None:
    p = str(_clip(tmp_path / "c.mp4"))
    got = list(nvdec.read_batches(FrameRange(p, 3, 21), "cpu", batch_size=8))
    assert [len(i) for i, _, _ in got] == [8, 8, 5]
    assert [b.shape[0] for _, _, b in got] == [8, 8, 5]
    ref = [torch.from_numpy(a).permute(2, 0, 1) for _, _, a in read_frames(FrameRange(p, 3, 21))]
    assert torch.equal(torch.cat([b for _, _, b in got]), torch.stack(ref))
    with pytest.raises(ValueError):
        next(nvdec.read_batches(p, "cpu", batch_size=0))


@pytest.mark.parametrize("colorspace", [1, 6])
def test_nv12_to_rgb_matches_pyav(tmp_path: Path, colorspace: int) -> None:
    p = _clip(tmp_path / "c.mp4", size=(98, 66), colorspace=colorspace)  # odd chroma sizes too
    with av.open(str(p)) as con:
        for k, frame in enumerate(con.decode(video=0)):
            assert frame.colorspace == colorspace
            got = _nv12_convert(frame)
            d = _diff(got, frame.to_ndarray(format="rgb24"))
            assert got.shape == (3, 66, 98)
            assert d.float().mean() < MEAN_TOL and d.max() <= MAX_TOL, (k, d.float().mean(), d.max())
            if k == 5:
                break


def test_nv12_to_rgb_known_values() -> None:
    # limited range: Y 16 black, 235 white; BT.709 pure red is Y 63, Cb 102, Cr 240
    y = torch.tensor([[16, 235], [63, 63]], dtype=torch.uint8)
    uv = torch.tensor([[[128, 128]]], dtype=torch.uint8)
    out = nvdec.nv12_to_rgb(y, uv)
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 0, 1].tolist() == [255, 255, 255]
    red = nvdec.nv12_to_rgb(
        torch.full((2, 2), 63, dtype=torch.uint8),
        torch.tensor([[[102, 240]]], dtype=torch.uint8),
        matrix="bt709",
    )
    assert (red[0] >= 253).all() and (red[1:] <= 2).all()
    full = nvdec.nv12_to_rgb(torch.full((2, 2), 200, dtype=torch.uint8), uv, full_range=True)
    assert (full == 200).all()
    p010 = nvdec.nv12_to_rgb(
        (y.to(torch.int32) << 8).to(torch.uint16), (uv.to(torch.int32) << 8).to(torch.uint16)
    )
    assert torch.equal(p010, out)
    buf = torch.empty((3, 2, 2), dtype=torch.uint8)
    assert nvdec.nv12_to_rgb(y, uv, out=buf).data_ptr() == buf.data_ptr()
    assert (
        nvdec.yuv_matrix(1) == "bt709" and nvdec.yuv_matrix(2) == "bt601" and nvdec.yuv_matrix(9) == "bt2020"
    )


def test_exact_walk_with_torch_conversion(tmp_path: Path) -> None:
    """The walk NVDEC uses, here over a software decoder: same indices and times as read_frames,
    pixels within the conversion's tolerance, every chunk of plan_chunks once."""
    p = str(_clip(tmp_path / "c.mp4"))
    info = probe_video(p)
    seen = []
    for ch in plan_chunks(info, 10, keyframes=()):
        ref = list(read_frames(ch))
        got = list(walk_range(ch, _open, _nv12_convert))
        assert [g[:2] for g in got] == [r[:2] for r in ref]
        for (_, _, t), (_, _, a) in zip(got, ref):
            d = _diff(t, a)
            assert d.float().mean() < MEAN_TOL and d.max() <= MAX_TOL
        seen += [g[0] for g in got]
    assert seen == list(range(48))
    with pytest.raises(VideoError):
        list(walk_range(FrameRange(p, 40, 20), _open, _nv12_convert))


def test_nvdec_unavailable_without_cuda(tmp_path: Path) -> None:
    if nvdec.nvdec_available():
        pytest.skip("CUDA and NVDEC are here")
    p = str(_clip(tmp_path / "c.mp4", n=5))
    with pytest.raises(nvdec.NvdecUnavailable):
        next(nvdec.read_frames_nvdec(FrameRange(p, 0, 2)))
    with pytest.raises(nvdec.NvdecUnavailable):
        next(nvdec.frame_reader(p, "cpu", backend="nvdec"))
    with pytest.raises(ValueError):
        nvdec.choose_backend("cpu", "gpu")


# ---- CUDA ----------------------------------------------------------------------------------------


@needs_nvdec
def test_nvdec_chunks_equal_cpu(tmp_path: Path) -> None:
    p = str(_clip(tmp_path / "c.mp4", n=60, size=(160, 96)))
    info = probe_video(p)
    seen = []
    for ch in plan_chunks(info, 14, keyframes=()):  # most chunks start between keyframes
        ref = list(read_frames(ch))
        got = list(nvdec.read_frames_nvdec(ch, "cuda"))
        assert [g[:2] for g in got] == [r[:2] for r in ref]
        for (_, _, t), (_, _, a) in zip(got, ref):
            assert t.is_cuda and t.shape == (3, 96, 160) and t.dtype == torch.uint8
            d = _diff(t, a)
            assert d.float().mean() < MEAN_TOL and d.max() <= MAX_TOL
        seen += [g[0] for g in got]
    assert seen == list(range(60))


@needs_nvdec
@pytest.mark.shared_data
def test_nvdec_shared_clips_equal_cpu(shared_data: Path) -> None:
    for name in ("face_recognition_short_hamilton_clip.mp4", "liveportrait_d12.mp4"):
        p = str(shared_data / "videos" / name)
        n = probe_video(p).frames
        for item in (FrameRange(p, 0, 30), FrameRange(p, n // 2 - 7, 40), FrameRange(p, n - 12, 12)):
            ref = list(read_frames(item))
            got = list(nvdec.frame_reader(item, "cuda", backend="nvdec"))
            assert [g[:2] for g in got] == [r[:2] for r in ref], (name, item)
            for (_, _, t), (_, _, a) in zip(got, ref):
                assert t.is_cuda
                d = _diff(t, a)
                assert d.float().mean() < MEAN_TOL and d.max() <= MAX_TOL, (
                    name,
                    item,
                    d.float().mean(),
                    d.max(),
                )
