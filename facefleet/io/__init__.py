"""facefleet.io: reading inputs (:mod:`.read`, the one reader: regular files only, a size cap),
image decoding, input discovery and atomic writes.

``facefleet.io.gpu_decode`` (batched nvJPEG decoding, needs torch) is imported on demand.
"""

from facefleet.io.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from facefleet.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, read_image
from facefleet.io.discover import IMAGE_EXTENSIONS, is_url, iter_inputs
from facefleet.io.read import MAX_FILE_BYTES, read_source

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_FILE_BYTES",
    "ImageDecodeError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_image",
    "is_url",
    "iter_inputs",
    "read_image",
    "read_source",
]
