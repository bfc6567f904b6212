"""Face detection, batched on the device: MediaPipe's BlazeFace short/full-range models, CenterFace
(crowds, small faces), or both combined (the detector modes of :mod:`facefleet.detect.modes`).

>>> from facefleet.detect import FaceDetector                 # doctest: +SKIP
>>> det = FaceDetector(device="cuda", model="auto")            # doctest: +SKIP
>>> faces = det(images)    # list of (3, H, W) uint8 tensors or (B, 3, H, W) -> Detections
"""

from facefleet.detect.anchors import DETECTOR_SPECS, DetectorSpec, decode_boxes, sigmoid_scores, ssd_anchors
from facefleet.detect.centerface import CenterFaceDetector
from facefleet.detect.detections import SOURCE_NAMES, Detections, as_image_list
from facefleet.detect.detector import FaceDetector, tile_grid, tile_layout
from facefleet.detect.merge import CombinedDetector
from facefleet.detect.modes import DETECTOR_MODES, build_detector
from facefleet.detect.nms import box_iou, weighted_nms
from facefleet.detect.views import ViewTransform, letterbox

__all__ = [
    "DETECTOR_MODES",
    "DETECTOR_SPECS",
    "SOURCE_NAMES",
    "CenterFaceDetector",
    "CombinedDetector",
    "Detections",
    "DetectorSpec",
    "FaceDetector",
    "ViewTransform",
    "as_image_list",
    "box_iou",
    "build_detector",
    "decode_boxes",
    "letterbox",
    "sigmoid_scores",
    "ssd_anchors",
    "tile_grid",
    "tile_layout",
    "weighted_nms",
]
