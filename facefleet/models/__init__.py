"""MediaPipe face models: named specs, weight fetching/verification, and the TFLite -> PyTorch loader.

>>> from facefleet.models import load_model                         # doctest: +SKIP
>>> net = load_model("face_landmark", device="cuda", dtype=torch.float16)  # doctest: +SKIP
>>> landmarks, presence = net(crops)   # crops (B, 3, 192, 192) in [0, 1] -> (B, 1, 1, 1404), (B, 1, 1, 1)

Importing this package does not import torch; ``load_model`` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from facefleet.models.fetch import (
    ModelChecksumError,
    ModelNotFoundError,
    cache_dir,
    fetch_models,
    list_models,
    model_path,
)
from facefleet.models.specs import MODELS, ModelSpec, get_spec

if TYPE_CHECKING:
    import torch

    from facefleet.models.tflite_torch import TFLiteModule

__all__ = [
    "MODELS",
    "CompileCache",
    "ModelChecksumError",
    "ModelNotFoundError",
    "ModelSpec",
    "cache_dir",
    "call_compiled",
    "compile_available",
    "fetch_models",
    "get_spec",
    "list_models",
    "load_model",
    "model_path",
]


# Network batch sizes on CUDA: every call is padded to one of these (larger ones go in chunks of the
# largest). At 128 a call of these small networks is launch-bound (64 or 128 crops take about the same
# time), so padding costs little, and one size means one cuDNN plan build (seconds) per network.
FIXED_BATCH_SIZES = (128,)
# Models that run channels-last (NHWC) on CUDA: all. These networks are mostly depthwise and small
# convolutions, whose cuDNN kernels are faster in NHWC (fp16 tensor cores read channels-last); the
# price is a longer cuDNN plan build, once per worker and batch size.
CHANNELS_LAST_ON_CUDA = frozenset(MODELS)
# Models that run channels-last on CPUs: all (oneDNN's convolutions are native in NHWC; NCHW inputs
# are reordered on every call).
CHANNELS_LAST_ON_CPU = frozenset(MODELS)
# Fixed-size calls on CUDA replay captured CUDA graphs (TFLiteModule.use_cuda_graphs): one launch per
# call instead of one per operator, which is what bounds these small networks.
# FACEFLEET_CUDA_GRAPHS=0 turns them off (e.g. to profile operator by operator).
CUDA_GRAPHS = os.environ.get("FACEFLEET_CUDA_GRAPHS", "1") != "0"


def compile_available() -> bool:
    """Whether :meth:`TFLiteModule.use_compile` can work here: ``FACEFLEET_COMPILE`` is not "0" and
    Triton (TorchInductor's GPU code generator, installed with CUDA builds of torch) is importable."""
    import importlib.util

    return os.environ.get("FACEFLEET_COMPILE", "1") != "0" and importlib.util.find_spec("triton") is not None


#: The ``torch.compile`` functions of one owner (a :class:`facefleet.pipeline.Reconstructor`'s stages), by
#: key, made on first use by :func:`call_compiled`; ``False`` marks a key whose compilation failed, for
#: that owner only (no process-wide switch: another owner tries again).
CompileCache = dict[str, Any]


def call_compiled(
    cache: CompileCache, key: str, body: Callable[..., Any], args: Sequence[Any], what: str
) -> Any:
    """``body(*args)`` through ``torch.compile(body, dynamic=True)`` (one compilation for every size), made
    on first use and kept in ``cache[key]``; None once the compiler has failed here (``cache[key]`` is
    then False, and a RuntimeWarning naming ``what`` said so once). Out-of-memory errors propagate (the
    engine halves the batch)."""
    import warnings

    import torch

    fn = cache.get(key)
    if fn is False:
        return None
    if fn is None:
        fn = cache[key] = torch.compile(body, dynamic=True)
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # a compiler failure (no Triton, an unsupported build)
        cache[key] = False
        warnings.warn(
            f"{what}: torch.compile failed ({type(exc).__name__}); using eager operations",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def load_model(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    channels_last: bool | None = None,
    compiled: bool | None = None,
) -> TFLiteModule:
    """Load MediaPipe model ``name`` as a torch module on ``device`` in ``dtype`` (default float32).

    The module is in eval mode with ``requires_grad`` off. It takes ``(B, 3, H, W)`` float input (the
    detectors expect [-1, 1], the landmark model [0, 1]) and returns the TFLite outputs with batch ``B``:
    ``(B, 896, 16), (B, 896, 1)`` (short range), ``(B, 2304, 16), (B, 2304, 1)`` (full range),
    ``(B, 1, 1, 1404), (B, 1, 1, 1)`` (face_landmark). Weights come from :func:`model_path`.
    ``channels_last`` (default: the models in :data:`CHANNELS_LAST_ON_CUDA` on CUDA, in
    :data:`CHANNELS_LAST_ON_CPU` elsewhere) keeps convolutions in NHWC memory layout, measured faster
    there; results are the same. On CUDA the
    network runs at fixed batch sizes (:data:`FIXED_BATCH_SIZES`, see
    ``TFLiteModule.use_fixed_batches``: cuDNN plans are built once per shape, at seconds per
    network); call ``module.warmup()`` to build them up front. ``compiled`` (default: on CUDA when
    :func:`compile_available`) captures those graphs from ``torch.compile``'s fused kernels
    (``TFLiteModule.use_compile``).
    """
    import torch

    from facefleet.models.tflite_torch import load_tflite

    if get_spec(name).format != "tflite":
        raise ValueError(f"load_model runs TFLite models; {name!r} is not one (CenterFace: load_centerface)")
    dev = torch.device(device)
    module = load_tflite(model_path(name, model_dir=model_dir))
    module = module.to(device=dev, dtype=dtype or torch.float32)
    if channels_last is None:
        channels_last = name in (CHANNELS_LAST_ON_CUDA if dev.type == "cuda" else CHANNELS_LAST_ON_CPU)
    if channels_last:
        module.use_channels_last(True)
    if dev.type == "cuda":  # one input shape: cuDNN plans are built once, not per batch size
        module.use_fixed_batches(FIXED_BATCH_SIZES)
        module.use_cuda_graphs(CUDA_GRAPHS)
        module.use_compile(compile_available() if compiled is None else compiled)
    return module


def __getattr__(name: str) -> Any:
    if name in ("TFLiteModule", "load_tflite", "UnsupportedOperatorError", "TFLiteConversionError"):
        from facefleet.models import tflite_torch

        return getattr(tflite_torch, name)
    raise AttributeError(name)
