"""Detector modes by name (``[model] detector``): which detector family finds the faces.

* ``blazeface``: MediaPipe's BlazeFace, facefleet's detector before CenterFace came; its model is
  ``[model] blazeface``: ``auto`` (short- and full-range models, tiles for large or crowded images),
  ``short`` or ``full``. The legacy values ``auto``, ``short`` and ``full`` of ``detector`` mean this
  mode with that model, so older config files and ``--detector short`` keep their results.
* ``centerface``: CenterFace alone (crowds and small faces; misses some single large faces).
* ``combined``: both, merged (:func:`facefleet.detect.merge.merge_families`): BlazeFace's face where
  both found one, CenterFace's otherwise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BLAZEFACE_MODELS",
    "DETECTOR_MODES",
    "LEGACY_DETECTORS",
    "build_detector",
    "centerface_runtime",
    "resolve_detector",
]

DETECTOR_MODES = ("blazeface", "centerface", "combined")
BLAZEFACE_MODELS = ("auto", "short", "full")
LEGACY_DETECTORS = BLAZEFACE_MODELS  # ``detector = "short"``: BlazeFace mode, short-range model


def resolve_detector(detector: str, blazeface: str = "auto") -> tuple[str, str]:
    """``(mode, BlazeFace model)`` of the settings ``detector`` and ``blazeface`` (a legacy ``detector``
    value names the BlazeFace model and wins over ``blazeface``)."""
    if detector in LEGACY_DETECTORS:
        return "blazeface", detector
    if detector not in DETECTOR_MODES:
        raise ValueError(
            f"unknown detector {detector!r}: use {', '.join(DETECTOR_MODES)} (or a BlazeFace model: "
            f"{', '.join(BLAZEFACE_MODELS)})"
        )
    if blazeface not in BLAZEFACE_MODELS:
        raise ValueError(f"unknown BlazeFace model {blazeface!r}: use {', '.join(BLAZEFACE_MODELS)}")
    return detector, blazeface


def centerface_runtime(runtime: str, device: torch.device, dtype: torch.dtype) -> str:
    """Which runtime runs CenterFace: ``"onnxruntime"`` on the CPU in fp32 when it is importable and
    ``runtime`` is not ``"torch"`` (1.55x the torch module's speed on a 2-core machine:
    :mod:`facefleet.models.onnx_runtime`), else ``"torch"``."""
    if runtime == "torch" or device.type != "cpu" or dtype != torch.float32:
        return "torch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def build_detector(
    detector: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    blazeface: str = "auto",
    min_score: float = 0.5,
    centerface_score: float = 0.5,
    centerface_max_side: int = 0,
    max_faces: int = 100,
    max_tiles: int = 6,
    model_dir: str | Path | None = None,
    blazeface_net: Any = None,
    runtime: str = "auto",
    compiled: bool | None = None,
    compile_cache: dict[str, Any] | None = None,
    alternates: bool = False,
) -> Any:
    """The detector of a mode (:data:`DETECTOR_MODES`, or a legacy BlazeFace model name): a
    :class:`~facefleet.detect.FaceDetector`, a :class:`~facefleet.detect.CenterFaceDetector` or a
    :class:`~facefleet.detect.CombinedDetector`. ``blazeface_net``: BlazeFace networks to use instead of
    loading them (LiteRT's); ``runtime``: the pipeline's runtime setting (:func:`centerface_runtime`);
    ``alternates``: the combined detector also returns CenterFace's views of the faces both found
    (:func:`~facefleet.detect.merge.merge_families`)."""
    from facefleet.detect.centerface import CenterFaceDetector
    from facefleet.detect.detector import FaceDetector
    from facefleet.detect.merge import CombinedDetector

    mode, model = resolve_detector(detector, blazeface)
    blaze = center = None
    if mode in ("blazeface", "combined"):
        blaze = FaceDetector(
            device=device, dtype=dtype, model=model, min_score=min_score, max_faces=max_faces,
            max_tiles=max_tiles, model_dir=model_dir, net=blazeface_net, compiled=compiled,
            compile_cache=compile_cache,
        )  # fmt: skip
    if mode in ("centerface", "combined"):
        net = None
        if centerface_runtime(runtime, device, dtype) == "onnxruntime":
            from facefleet.models import model_path
            from facefleet.models.onnx_runtime import OrtModel

            net = OrtModel(model_path("centerface", model_dir=model_dir))
        center = CenterFaceDetector(
            device=device, dtype=dtype, min_score=centerface_score, max_faces=max_faces,
            model_dir=model_dir, net=net, max_side=centerface_max_side,
        )  # fmt: skip
    if blaze is not None and center is not None:
        return CombinedDetector(blaze, center, max_faces=max_faces, alternates=alternates)
    return blaze if blaze is not None else center
