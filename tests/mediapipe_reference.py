"""Reference landmarks from MediaPipe's own runtime (run with a Python that has ``mediapipe==0.10.21``).

``python mediapipe_reference.py CROPS.npy OUT.npz``: ``CROPS.npy`` holds ``(N, 192, 192, 3)`` uint8 RGB
face crops; each is given whole (ROI = the full crop, no rotation) to MediaPipe's ``FaceLandmarkCpu``
subgraph with attention. ``OUT.npz``: ``landmarks`` ``(N, 478, 3)`` float32 in crop pixels (x, y; z in
MediaPipe's scale: crop pixels, smaller = closer), NaN for crops MediaPipe dropped (presence < 0.5).
This file does not import facefleet: it runs in MediaPipe's own environment.
"""

from __future__ import annotations

import os
import sys

import numpy as np

GRAPH = """
input_stream: "image"
input_stream: "roi"
output_stream: "landmarks"
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_stream: "LANDMARKS:landmarks"
}
"""


def main(crops_path: str, out_path: str) -> None:
    import mediapipe as mp
    from mediapipe.framework.formats import rect_pb2
    from mediapipe.python import packet_creator, packet_getter
    from mediapipe.python._framework_bindings import resource_util

    resource_util.set_resource_dir(os.path.dirname(os.path.dirname(mp.__file__)))
    crops = np.load(crops_path)
    n, size = len(crops), crops.shape[1]
    out = np.full((n, 478, 3), np.nan, np.float32)
    got: dict[int, object] = {}
    graph = mp.CalculatorGraph(graph_config=GRAPH)
    graph.observe_output_stream(
        "landmarks", lambda s, p: got.__setitem__(p.timestamp.value, packet_getter.get_proto(p))
    )
    graph.start_run(input_side_packets={"with_attention": packet_creator.create_bool(True)})
    roi = rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, width=1.0, height=1.0, rotation=0.0)
    for k, crop in enumerate(crops):
        frame = packet_creator.create_image_frame(
            image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(crop)
        )
        graph.add_packet_to_input_stream("image", frame.at(k))
        graph.add_packet_to_input_stream("roi", packet_creator.create_proto(roi).at(k))
    graph.close()
    for k, lms in got.items():
        pts = [(p.x, p.y, p.z) for p in lms.landmark]  # type: ignore[attr-defined]
        out[k] = np.asarray(pts, np.float32) * size
    np.savez(out_path, landmarks=out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
