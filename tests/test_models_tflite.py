"""The TFLite -> PyTorch port against the official LiteRT interpreter.

Tolerance (fp32): every output must satisfy ``max|torch - litert| <= 1e-4 * max(1, max|litert|)``.
Measured on this machine: about 1e-4 absolute on outputs of magnitude ~150 (relative ~1e-6), i.e.
float32 summation-order noise; a wrong padding, layout or weight shows up as errors of order 1-100.
Half precision is checked against a looser bound (2e-2 relative) in ``test_low_precision``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest
import tflite
import torch

from facefleet.models import MODELS, ModelNotFoundError, load_model, model_path
from facefleet.models.specs import TFLITE_MODELS
from facefleet.models.tflite_torch import UnsupportedOperatorError, load_tflite

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

RTOL_FP32 = 1e-4
# the models LiteRT runs as they are (the attention mesh's custom operators: tests/test_mediapipe_ops.py)
NAMES = [name for name in TFLITE_MODELS if not MODELS[name].custom_ops]


@pytest.fixture(scope="module", autouse=True)
def _weights() -> None:
    try:
        for name in NAMES:
            model_path(name, download=False)
    except ModelNotFoundError as exc:
        pytest.skip(f"model weights not available offline: {exc}")


def _litert(source: str | bytes, x_nhwc: np.ndarray) -> list[np.ndarray]:
    """Run the official interpreter on each image of ``x_nhwc`` (B, H, W, C); outputs stacked on dim 0.

    One image per invoke: the reference must not depend on LiteRT's batch resizing.
    """
    it = Interpreter(model_path=source) if isinstance(source, str) else Interpreter(model_content=source)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    per_image = []
    for img in x_nhwc:
        it.set_tensor(inp["index"], np.ascontiguousarray(img[None], dtype=np.float32))
        it.invoke()
        per_image.append([it.get_tensor(d["index"]).copy() for d in it.get_output_details()])
    return [np.concatenate(outs) for outs in zip(*per_image, strict=True)]


def _assert_close(ours: torch.Tensor, ref: np.ndarray, rtol: float, what: str) -> None:
    assert tuple(ours.shape) == ref.shape, f"{what}: shape {tuple(ours.shape)} != {ref.shape}"
    err = float(np.abs(ours.detach().float().cpu().numpy() - ref).max())
    bound = rtol * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"{what}: max |diff| {err:.3g} > {bound:.3g}"


def _face_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The astronaut's face (rows 20-240, cols 140-360 of the portrait) resized: (H, W, 3) in [0, 1]."""
    from skimage.transform import resize

    return resize(img[20:240, 140:360], size, anti_aliasing=True).astype(np.float32)


def _inputs(name: str, astronaut: np.ndarray) -> np.ndarray:
    """(4, H, W, 3) NHWC: the face, the whole portrait, two noise images; normalised for the model."""
    from skimage.transform import resize

    h, w = MODELS[name].input_size
    rng = np.random.default_rng(0)
    batch = np.stack(
        [
            _face_crop(astronaut, (h, w)),
            resize(astronaut, (h, w), anti_aliasing=True).astype(np.float32),
            rng.uniform(0, 1, (h, w, 3)).astype(np.float32),
            rng.normal(0.5, 0.3, (h, w, 3)).astype(np.float32),
        ]
    )
    return batch * 2 - 1 if name.startswith("face_detection") else batch


@pytest.mark.parametrize("name", NAMES)
def test_matches_litert_on_real_and_noise_inputs(
    name: str, device: str, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # exact fp32 on CUDA too: cuDNN convolutions use TF32 by default (~3e-4 relative error)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    net = load_model(name, device=device)
    x = _inputs(name, astronaut)
    refs = _litert(str(model_path(name)), x)
    outs = net(torch.from_numpy(x).permute(0, 3, 1, 2).to(device))
    assert len(outs) == len(refs) == 2
    for k, (o, r) in enumerate(zip(outs, refs, strict=True)):
        _assert_close(o, r, RTOL_FP32, f"{name} output {k}")


def test_outputs_are_meaningful_on_the_astronaut(astronaut: np.ndarray) -> None:
    """The detector fires on the face crop and the mesh model says 'face' there (not only numerics)."""
    det = load_model("face_detection_short_range")
    x = torch.from_numpy(_face_crop(astronaut, (128, 128)) * 2 - 1).permute(2, 0, 1)[None]
    _, logits = det(x)
    assert torch.sigmoid(logits).max() > 0.9
    mesh = load_model("face_landmark")
    crop = torch.from_numpy(_face_crop(astronaut, (192, 192))).permute(2, 0, 1)[None]
    lm, presence = mesh(crop)
    assert torch.sigmoid(presence).item() > 0.9
    pts = lm.reshape(468, 3)
    assert pts[:, 0].min() > 0 and pts[:, 0].max() < 192 and pts[:, 1].min() > 0 and pts[:, 1].max() < 192


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_four_equals_four_singles(name: str, astronaut: np.ndarray) -> None:
    net = load_model(name)
    x = torch.from_numpy(_inputs(name, astronaut)).permute(0, 3, 1, 2)
    batched = net(x)
    for i in range(x.shape[0]):
        single = net(x[i : i + 1])
        for b, s in zip(batched, single, strict=True):
            torch.testing.assert_close(b[i : i + 1], s, rtol=1e-5, atol=1e-4)


def test_fixed_batch_sizes_pad_chunk_and_slice_back(astronaut: np.ndarray) -> None:
    """The CUDA default (networks run only at fixed batch sizes, so cuDNN plans are built once): any
    batch gives the outputs of the plain module, sized to the real batch, and only the fixed sizes
    reach the network."""
    net = load_model("face_landmark")
    crop = torch.from_numpy(_inputs("face_landmark", astronaut)).permute(0, 3, 1, 2)
    x = crop[torch.arange(7) % crop.shape[0]] * torch.linspace(0.6, 1.0, 7)[:, None, None, None]
    plain = net(x)
    seen: list[int] = []
    net.steps[0].register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    net.use_fixed_batches((2, 4))
    for n in (1, 3, 4, 7):
        out = net(x[:n])
        for p, q in zip(plain, out, strict=True):
            assert q.shape == (n, *p.shape[1:])
            torch.testing.assert_close(q, p[:n], rtol=1e-5, atol=1e-4)
    net.warmup()
    assert set(seen) == {2, 4} and net.batch_sizes == (2, 4)
    net.use_fixed_batches(None)
    assert net(x[:3])[0].shape[0] == 3 and net.batch_sizes == ()


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision(dtype: torch.dtype, device: str, astronaut: np.ndarray) -> None:
    """bf16 on every device (fp16 on CUDA): same outputs within low-precision tolerance."""
    dtypes = [dtype] + ([torch.float16] if device == "cuda" else [])
    for dt in dtypes:
        for name in NAMES:
            x = _inputs(name, astronaut)[:2]
            refs = _litert(str(model_path(name)), x)
            net = load_model(name, device=device, dtype=dt)
            outs = net(torch.from_numpy(x).permute(0, 3, 1, 2).to(device))
            # the body in dt, the output heads in float32 (TFLiteModule's _head_steps)
            assert all(o.dtype == torch.float32 and o.device.type == device for o in outs)
            body = [s for k, s in enumerate(net.steps) if k not in net._head]
            assert all(p.dtype == dt for s in body for p in s.parameters())
            tol = 0.05 if dt == torch.bfloat16 else 0.02
            for k, (o, r) in enumerate(zip(outs, refs, strict=True)):
                _assert_close(o, r, tol, f"{name} {dt} output {k}")


@pytest.mark.parametrize(("dtype", "most"), [(torch.float16, 0.045), (torch.bfloat16, 0.36)])
def test_output_heads_keep_landmarks_precise_in_low_precision(
    dtype: torch.dtype, most: float, astronaut: np.ndarray
) -> None:
    """In float16 / bfloat16 the face mesh's last convolutions run in float32: its landmark coordinates
    (0-192 crop pixels) would otherwise come out in steps of 0.125 px above 128 (bfloat16: 1 px). On the
    astronaut's face crop the largest x/y difference against float32 is 0.023 / 0.26 px with float32
    heads, 0.070 / 0.48 px without (CPU)."""
    net32, net = load_model("face_landmark"), load_model("face_landmark", dtype=dtype)
    assert net._head and all(p.dtype == torch.float32 for k in net._head for p in net.steps[k].parameters())
    x = torch.from_numpy(_inputs("face_landmark", astronaut)[:1]).permute(0, 3, 1, 2)
    ref = net32(x)[0].reshape(468, 3)[:, :2]
    got = net(x)[0].float().reshape(468, 3)[:, :2]
    assert float((got - ref).abs().max()) < most


def test_input_shape_error_names_model() -> None:
    net = load_model("face_landmark")
    with pytest.raises(ValueError, match=r"face_landmark.tflite: expected input \(B, 3, 192, 192\)"):
        net(torch.zeros(1, 192, 192, 3))


def test_module_is_frozen_eval_and_scriptable_shapes() -> None:
    net = load_model("face_detection_full_range")
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert net.input_shape == (3, 192, 192)
    assert net.output_shapes == [(-1, 2304, 16), (-1, 2304, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", TFLITE_MODELS)  # the attention mesh's custom operators included
def test_torch_compile_fullgraph_matches_eager(name: str) -> None:
    """One graph, no breaks, no data-dependent guards; a second batch size reuses it (dynamic batch)."""
    import torch._dynamo

    try:
        model_path(name, download=False)
    except ModelNotFoundError as exc:
        pytest.skip(f"{name}: weights not available offline: {exc}")

    torch._dynamo.reset()
    net = load_model(name)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    for batch in (2, 5):
        x = torch.rand(batch, *net.input_shape) * 2 - 1
        with torch.inference_mode():
            for e, c in zip(net(x), compiled(x), strict=True):
                torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-3)


@pytest.mark.shared_data
def test_real_photo_from_shared_data(shared_data: Path) -> None:
    """A real photo with one face: port == LiteRT on the detector input and on a mesh crop."""
    from PIL import Image

    lines = (shared_data / "images" / "INDEX.tsv").read_text().splitlines()
    rows = [dict(zip(lines[0].split("\t"), ln.split("\t"), strict=False)) for ln in lines[1:] if ln.strip()]
    fname = next(r["file"] for r in rows if r.get("faces") == "1")
    img = np.asarray(Image.open(shared_data / "images" / fname).convert("RGB"))
    for name in NAMES:
        h, w = MODELS[name].input_size
        x = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), dtype=np.float32)[None] / 255.0
        if name.startswith("face_detection"):
            x = x * 2 - 1
        refs = _litert(str(model_path(name)), x)
        outs = load_model(name)(torch.from_numpy(x).permute(0, 3, 1, 2))
        for k, (o, r) in enumerate(zip(outs, refs, strict=True)):
            _assert_close(o, r, RTOL_FP32, f"{fname} {name} output {k}")


# ------------------------------------------------------------------ single-operator models vs LiteRT


def _tiny_model(
    opcode: int,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    consts: tuple[np.ndarray, ...] = (),
    options: Callable[[flatbuffers.Builder], tuple[int, int]] | None = None,
    custom_code: str | None = None,
) -> bytes:
    """A one-operator TFLite model: input tensor 0, constant inputs 1.., output tensor last."""
    b = flatbuffers.Builder(1024)
    type_of = {np.dtype(np.float32): 0, np.dtype(np.int32): 2}
    specs = [(in_shape, 0, None), *((c.shape, type_of[c.dtype], c) for c in consts), (out_shape, 0, None)]
    tflite.BufferStart(b)
    buffers = [tflite.BufferEnd(b)]  # buffer 0 is the empty sentinel
    buf_ids = []
    for _, _, data in specs:
        if data is None:
            buf_ids.append(0)
            continue
        vec = b.CreateNumpyVector(np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8))
        tflite.BufferStart(b)
        tflite.BufferAddData(b, vec)
        buffers.append(tflite.BufferEnd(b))
        buf_ids.append(len(buffers) - 1)
    tensors = []
    for k, ((shape, ttype, _), bid) in enumerate(zip(specs, buf_ids, strict=True)):
        name = b.CreateString(f"t{k}")
        shp = b.CreateNumpyVector(np.asarray(shape, np.int32))
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shp)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, bid)
        tflite.TensorAddName(b, name)
        tensors.append(tflite.TensorEnd(b))
    opts = options(b) if options else None
    op_in = b.CreateNumpyVector(np.arange(len(specs) - 1, dtype=np.int32))
    op_out = b.CreateNumpyVector(np.asarray([len(specs) - 1], np.int32))
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_in)
    tflite.OperatorAddOutputs(b, op_out)
    if opts:
        tflite.OperatorAddBuiltinOptionsType(b, opts[0])
        tflite.OperatorAddBuiltinOptions(b, opts[1])
    operator = tflite.OperatorEnd(b)

    def vector(start: Callable[[flatbuffers.Builder, int], None], items: list[int]) -> int:
        start(b, len(items))
        for it in reversed(items):
            b.PrependUOffsetTRelative(it)
        return b.EndVector()

    t_vec = vector(tflite.SubGraphStartTensorsVector, tensors)
    o_vec = vector(tflite.SubGraphStartOperatorsVector, [operator])
    g_in = b.CreateNumpyVector(np.asarray([0], np.int32))
    g_out = b.CreateNumpyVector(np.asarray([len(specs) - 1], np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, t_vec)
    tflite.SubGraphAddInputs(b, g_in)
    tflite.SubGraphAddOutputs(b, g_out)
    tflite.SubGraphAddOperators(b, o_vec)
    subgraph = tflite.SubGraphEnd(b)
    custom = b.CreateString(custom_code) if custom_code else None
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddBuiltinCode(b, opcode)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(opcode, 127))
    tflite.OperatorCodeAddVersion(b, 1)
    if custom is not None:
        tflite.OperatorCodeAddCustomCode(b, custom)
    opcode_off = tflite.OperatorCodeEnd(b)
    codes_vec = vector(tflite.ModelStartOperatorCodesVector, [opcode_off])
    subs_vec = vector(tflite.ModelStartSubgraphsVector, [subgraph])
    bufs_vec = vector(tflite.ModelStartBuffersVector, buffers)
    desc = b.CreateString("facefleet test model")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subs_vec)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, bufs_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _conv(depthwise: bool, padding: int, stride: int, mult: int = 1) -> Callable[..., tuple[int, int]]:
    def build(b: flatbuffers.Builder) -> tuple[int, int]:
        if depthwise:
            tflite.DepthwiseConv2DOptionsStart(b)
            tflite.DepthwiseConv2DOptionsAddPadding(b, padding)
            tflite.DepthwiseConv2DOptionsAddStrideH(b, stride)
            tflite.DepthwiseConv2DOptionsAddStrideW(b, stride)
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, mult)
            tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, 1)
            return tflite.BuiltinOptions.DepthwiseConv2DOptions, tflite.DepthwiseConv2DOptionsEnd(b)
        tflite.Conv2DOptionsStart(b)
        tflite.Conv2DOptionsAddPadding(b, padding)
        tflite.Conv2DOptionsAddStrideH(b, stride)
        tflite.Conv2DOptionsAddStrideW(b, stride)
        tflite.Conv2DOptionsAddFusedActivationFunction(b, 3)  # RELU6
        return tflite.BuiltinOptions.Conv2DOptions, tflite.Conv2DOptionsEnd(b)

    return build


def _pool(padding: int, k: int, stride: int) -> Callable[..., tuple[int, int]]:
    def build(b: flatbuffers.Builder) -> tuple[int, int]:
        tflite.Pool2DOptionsStart(b)
        tflite.Pool2DOptionsAddPadding(b, padding)
        tflite.Pool2DOptionsAddFilterHeight(b, k)
        tflite.Pool2DOptionsAddFilterWidth(b, k)
        tflite.Pool2DOptionsAddStrideH(b, stride)
        tflite.Pool2DOptionsAddStrideW(b, stride)
        return tflite.BuiltinOptions.Pool2DOptions, tflite.Pool2DOptionsEnd(b)

    return build


def _resize(align: bool, half: bool) -> Callable[..., tuple[int, int]]:
    def build(b: flatbuffers.Builder) -> tuple[int, int]:
        tflite.ResizeBilinearOptionsStart(b)
        tflite.ResizeBilinearOptionsAddAlignCorners(b, align)
        tflite.ResizeBilinearOptionsAddHalfPixelCenters(b, half)
        return tflite.BuiltinOptions.ResizeBilinearOptions, tflite.ResizeBilinearOptionsEnd(b)

    return build


def _d2s(block: int) -> Callable[..., tuple[int, int]]:
    def build(b: flatbuffers.Builder) -> tuple[int, int]:
        tflite.DepthToSpaceOptionsStart(b)
        tflite.DepthToSpaceOptionsAddBlockSize(b, block)
        return tflite.BuiltinOptions.DepthToSpaceOptions, tflite.DepthToSpaceOptionsEnd(b)

    return build


_RNG = np.random.default_rng(1)
_OP = tflite.BuiltinOperator
CONV = _OP.CONV_2D
SAME, VALID = tflite.Padding.SAME, tflite.Padding.VALID
_SIZE = np.array([12, 9], np.int32)  # RESIZE_BILINEAR target (H, W)


def _w(*shape: int) -> np.ndarray:
    return _RNG.normal(0, 0.5, shape).astype(np.float32)


SINGLE_OPS = {
    # SAME, stride 2, even and odd sizes: TFLite pads asymmetrically (the extra row/column after)
    "conv_same_s2_even": (CONV, (1, 8, 8, 3), (1, 4, 4, 5), (_w(5, 3, 3, 3), _w(5)), _conv(False, SAME, 2)),
    "conv_same_s2_odd": (CONV, (1, 9, 7, 3), (1, 5, 4, 4), (_w(4, 4, 4, 3), _w(4)), _conv(False, SAME, 2)),
    "conv_valid_s2": (CONV, (1, 9, 9, 2), (1, 4, 4, 3), (_w(3, 3, 3, 2), _w(3)), _conv(False, VALID, 2)),
    "dwconv_same_s2_mult2": (
        _OP.DEPTHWISE_CONV_2D, (1, 10, 10, 3), (1, 5, 5, 6), (_w(1, 5, 5, 6), _w(6)), _conv(True, SAME, 2, 2),
    ),
    "maxpool_same_3x3_s2_odd": (_OP.MAX_POOL_2D, (1, 7, 8, 4), (1, 4, 4, 4), (), _pool(SAME, 3, 2)),
    "avgpool_same_3x3_s2_odd": (_OP.AVERAGE_POOL_2D, (1, 7, 8, 4), (1, 4, 4, 4), (), _pool(SAME, 3, 2)),
    "resize_legacy": (
        _OP.RESIZE_BILINEAR, (1, 5, 6, 2), (1, 12, 9, 2), (_SIZE,), _resize(False, False),
    ),
    "resize_align_corners": (
        _OP.RESIZE_BILINEAR, (1, 5, 6, 2), (1, 12, 9, 2), (_SIZE,), _resize(True, False),
    ),
    "resize_half_pixel": (
        _OP.RESIZE_BILINEAR, (1, 5, 6, 2), (1, 12, 9, 2), (_SIZE,), _resize(False, True),
    ),
    "depth_to_space": (_OP.DEPTH_TO_SPACE, (1, 3, 4, 12), (1, 6, 8, 3), (), _d2s(2)),
    "pad_channels_and_space": (
        _OP.PAD, (1, 4, 5, 3), (1, 5, 8, 5), (np.array([[0, 0], [1, 0], [2, 1], [0, 2]], np.int32),), None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SINGLE_OPS))
def test_single_operator_matches_litert(case: str) -> None:
    opcode, in_shape, out_shape, consts, opts = SINGLE_OPS[case]
    model = _tiny_model(opcode, in_shape, out_shape, consts, opts)
    x = np.random.default_rng(2).normal(0, 1, (3, *in_shape[1:])).astype(np.float32)
    (ref,) = _litert(model, x)
    (ours,) = load_tflite(model, name=case)(torch.from_numpy(x).permute(0, 3, 1, 2))
    _assert_close(ours, ref, RTOL_FP32, case)


def test_unknown_operator_fails_at_load_naming_op_and_file(tmp_path: Path) -> None:
    model = _tiny_model(tflite.BuiltinOperator.FLOOR, (1, 4, 4, 3), (1, 4, 4, 3))
    path = tmp_path / "floor_model.tflite"
    path.write_bytes(model)
    assert _litert(str(path), np.ones((1, 4, 4, 3), np.float32))[0].shape == (1, 4, 4, 3)  # a valid model
    with pytest.raises(UnsupportedOperatorError) as err:
        load_tflite(path)
    assert "FLOOR" in str(err.value) and str(path) in str(err.value)
    custom = _tiny_model(tflite.BuiltinOperator.CUSTOM, (1, 2, 2, 1), (1, 2, 2, 1), custom_code="MyFancyOp")
    with pytest.raises(UnsupportedOperatorError, match=r"CUSTOM\(MyFancyOp\)"):
        load_tflite(custom, name="custom.tflite")


def test_sparse_weights_densify_in_traversal_order() -> None:
    """The full-range detector stores 46 conv weights as fp16 CSR (traversal order = row-major)."""
    from facefleet.models.tflite_torch import _Converter, densify

    conv = _Converter(Path(model_path("face_detection_full_range")).read_bytes(), "full_range")
    sparse = [t for t in conv.tensors if t.raw.Sparsity() is not None]
    assert len(sparse) == 46
    for t in sparse:
        assert t.data is not None
        dense = densify(t.data, t.shape, t.raw.Sparsity())
        assert dense.shape == t.shape and dense.dtype == np.float16
        assert 0 < t.data.size < dense.size  # really sparse
        # row-major traversal: the non-zeros of the dense tensor, in order, are the stored values
        np.testing.assert_array_equal(dense[dense != 0], t.data[t.data != 0])


@pytest.mark.parametrize("name", ["face_detection_short_range", "face_landmark"])
def test_channels_last_gives_the_same_outputs(name: str) -> None:
    """The channels-last layout (CPUs, and the landmark model on GPUs) must not change results."""
    from facefleet.models import load_model

    a = load_model(name, channels_last=False)
    b = load_model(name, channels_last=True)
    size = a.input_shape[-1]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for ya, yb in zip(a(x), b(x), strict=True):
            assert ya.shape == yb.shape
            assert torch.allclose(ya, yb, atol=1e-3 * max(1.0, float(ya.abs().max())), rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_activations_keep_one_memory_layout(name: str, channels_last: bool) -> None:
    """Every activation stays in the network's layout: one of another layout (a 1x1 convolution
    whose weight strides read as channels-last made one) sends each residual ADD through torch's
    slow strided kernel, and on CPUs makes the convolutions slower."""
    from facefleet.models import load_model
    from facefleet.models import tflite_torch as tt

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = load_model(name, channels_last=channels_last)
    seen: list[str] = []

    def check(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        for t in [*args, out]:
            if isinstance(t, torch.Tensor) and t.dim() == 4 and not t.is_contiguous(memory_format=fmt):
                seen.append(f"{type(module).__name__} {tuple(t.shape)} strides {t.stride()}")

    for m in net.modules():
        if isinstance(m, (tt._Conv, tt._Binary, tt._PReLU, tt._Pool, tt._Pad)):
            m.register_forward_hook(check)
    size = net.input_shape[-1]
    with torch.no_grad():
        net(torch.rand(2, 3, size, size))
    assert not seen, f"{len(seen)} activations in another layout, e.g. {seen[:3]}"


@pytest.mark.parametrize("name", ["face_detection_short_range", "face_detection_full_range", "face_landmark"])
def test_litert_runner_batch_equals_torch(name: str) -> None:
    """The LiteRT CPU runtime must give per-item results for a batch (the short-range detector's
    fixed-shape RESHAPEs mixed the items of a resized batch once)."""
    pytest.importorskip("ai_edge_litert")
    from facefleet.models.litert_runner import LiteRTModel

    torch_net = load_model(name)
    lite = LiteRTModel(name)
    size = torch_net.input_shape[-1]
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = torch_net(x)
    for a, b in zip(ref, lite(x), strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-3 * max(1.0, float(a.abs().max()))


def test_litert_runner_calls_from_threads_take_turns() -> None:
    """One LiteRT model called from several threads at once (an engine worker's networks' threads): each
    call gets its own input's outputs (the interpreter's input, invoke and outputs are one turn)."""
    pytest.importorskip("ai_edge_litert")
    from concurrent.futures import ThreadPoolExecutor

    from facefleet.models.litert_runner import LiteRTModel

    lite = LiteRTModel("face_landmark", num_threads=1)
    gen = torch.Generator().manual_seed(7)
    xs = [torch.rand(n, *lite.input_shape, generator=gen) for n in (1, 2, 3, 1, 2, 3, 1, 2)]
    want = [lite(x)[0] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda x: lite(x)[0], xs))
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_replay_the_eager_results(astronaut: np.ndarray) -> None:
    """On CUDA the fixed-size calls replay captured graphs: the same numbers as the eager module,
    outputs that later calls do not overwrite, and other batch sizes still work (padded)."""
    for name in NAMES:
        net = load_model(name, device="cuda", dtype=torch.float16, compiled=False)
        assert net.cuda_graphs and net.batch_sizes
        size = net.batch_sizes[-1]
        x = torch.from_numpy(_inputs(name, astronaut)).permute(0, 3, 1, 2).cuda()
        x = (
            x[torch.arange(size) % x.shape[0]]
            * torch.linspace(0.5, 1.0, size, device="cuda")[:, None, None, None]
        )
        first = net(x)
        second = net(x.flip(0))
        eager = net._eager(x.half())
        for a, b in zip(first, eager, strict=True):
            assert torch.equal(a, b), name  # not overwritten by the second call, same kernels
        for a, b in zip(second, net._eager(x.flip(0).half()), strict=True):
            assert torch.equal(a, b), name
        odd = net(x[:5])
        for a, b in zip(odd, eager, strict=True):
            assert a.shape[0] == 5
            torch.testing.assert_close(a, b[:5], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_compiled_cuda_graphs_match_eager_within_fp16_rounding(astronaut: np.ndarray) -> None:
    """With torch.compile (the default where Triton is installed) the graphs run fused kernels: the
    same outputs as the eager module up to fp16 rounding, and a later call does not overwrite them."""
    from facefleet.models import compile_available

    if not compile_available():
        pytest.skip("no Triton here")
    for name in NAMES:
        net = load_model(name, device="cuda", dtype=torch.float16)
        assert net.compiled
        size = net.batch_sizes[-1]
        x = torch.from_numpy(_inputs(name, astronaut)).permute(0, 3, 1, 2).cuda()
        x = (
            x[torch.arange(size) % x.shape[0]]
            * torch.linspace(0.5, 1.0, size, device="cuda")[:, None, None, None]
        )
        first = net(x)
        net(x.flip(0))
        assert net.compiled, f"{name}: compilation failed and fell back to eager"
        for a, b in zip(first, net._eager(x.half()), strict=True):
            scale = max(1.0, float(b.float().abs().max()))
            assert float((a.float() - b.float()).abs().max()) <= 2e-2 * scale, name


def test_compile_failure_falls_back_to_eager(astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch.compile that fails (no Triton, an unsupported build) must not sink a run: the graph is
    captured from the eager code, with one warning (runs on the CPU: the capture is not needed)."""
    net = load_model("face_landmark").use_compile(True)
    x = torch.from_numpy(_inputs("face_landmark", astronaut)).permute(0, 3, 1, 2)[:2]

    def broken(fn: object, **kwargs: object) -> object:
        raise RuntimeError("Cannot find a working triton installation")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*triton"):
        body = net._compiled_body(x)
    assert not net.compiled
    for a, b in zip(body(x), net._eager(x), strict=True):
        assert torch.equal(a, b)


def test_cuda_graph_capture_failure_falls_back_to_eager(
    astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU stack that cannot capture CUDA graphs must not sink a run: the module warns once and runs
    eagerly from then on (the capture is simulated to fail, so this runs on the CPU too)."""
    from facefleet.models.tflite_torch import TFLiteModule

    net = load_model("face_landmark").use_fixed_batches((4,)).use_cuda_graphs(True)
    x = torch.from_numpy(_inputs("face_landmark", astronaut)).permute(0, 3, 1, 2)[:1].repeat(4, 1, 1, 1)
    ref = net._eager(x)

    def fail(self: TFLiteModule, x: torch.Tensor, pool: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(TFLiteModule, "_capture", fail)
    monkeypatch.setattr(TFLiteModule, "_graphable", lambda self, x: self.cuda_graphs)  # the CPU takes it too
    monkeypatch.setattr(
        "facefleet.models.tflite_torch._GraphDevice.of", classmethod(lambda cls, d: _FakeShared())
    )
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        out = net(x)
    assert not net.cuda_graphs
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)


class _FakeShared:
    def __init__(self) -> None:
        import threading

        self.pool = None
        self.lock = threading.Lock()
        self.done = None


def test_moving_the_weights_drops_captured_graphs() -> None:
    """A graph replays the weights it was captured with: .to()/.half() and the channels-last switch
    replace them, so the captured graphs must go (they are captured again on the next call)."""
    net = load_model("face_detection_short_range").use_fixed_batches((2,)).use_cuda_graphs(True)
    for change in (lambda: net.to(torch.float32), lambda: net.use_channels_last(True)):
        net._graphs[("stale",)] = (None, torch.zeros(1), (torch.zeros(1),))
        change()
        assert net._graphs == {}
