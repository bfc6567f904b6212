"""Face detection: MediaPipe BlazeFace short/full-range models, batched on the device.

>>> from facefleet.detect import FaceDetector                 # doctest: +SKIP
>>> det = FaceDetector(device="cuda", model="auto")            # doctest: +SKIP
>>> faces = det(images)    # list of (3, H, W) uint8 tensors or (B, 3, H, W) -> Detections
"""

from facefleet.detect.anchors import DETECTOR_SPECS, DetectorSpec, decode_boxes, sigmoid_scores, ssd_anchors
from facefleet.detect.detector import Detections, FaceDetector, as_image_list, tile_grid, tile_layout
from facefleet.detect.nms import box_iou, weighted_nms
from facefleet.detect.views import ViewTransform, letterbox

__all__ = [
    "DETECTOR_SPECS",
    "Detections",
    "DetectorSpec",
    "FaceDetector",
    "ViewTransform",
    "as_image_list",
    "box_iou",
    "decode_boxes",
    "letterbox",
    "sigmoid_scores",
    "ssd_anchors",
    "tile_grid",
    "tile_layout",
    "weighted_nms",
]
