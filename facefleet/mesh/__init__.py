"""3D face mesh of a model family (default: MediaPipe's 468 points) on detected faces, batched on the device.

>>> from facefleet.mesh import MeshPredictor                      # doctest: +SKIP
>>> mesh = MeshPredictor(device="cuda")(images, detections)        # doctest: +SKIP
>>> mesh.landmarks   # (N, V, 3) pixels (V from the family's topology), z larger = closer
"""

from facefleet.mesh.predictor import MeshPredictor, MeshResult
from facefleet.mesh.roi import (
    crop_points,
    crop_rois,
    crop_to_image,
    roi_from_detections,
    roi_from_landmarks,
    rois_to_image,
)
from facefleet.mesh.sampling import ImagePack, pack_images, sample_bilinear

__all__ = [
    "ImagePack",
    "MeshPredictor",
    "MeshResult",
    "crop_points",
    "crop_rois",
    "crop_to_image",
    "pack_images",
    "roi_from_detections",
    "roi_from_landmarks",
    "rois_to_image",
    "sample_bilinear",
]
