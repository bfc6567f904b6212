"""The tracker's per-step host work (ids, boxes, One Euro smoothing, pose, keypoints of tracked faces:
``FaceTracker._update`` + ``_output``) on synthetic faces, this tree's tracker against another tree's
``facefleet/video/track.py``, alternated in one process (min of repeats, ms per step).

    python benchmarks/video_track_host.py OLD_TRACK_PY [--streams 25] [--faces 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from types import ModuleType
from typing import Any

import numpy as np

from facefleet.config.sections import VideoConfig
from facefleet.families import get_family
from facefleet.types import Face, ImageResult, Pose


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_track", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_track"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _run(mod: ModuleType, streams: int, faces: int, steps: int, seed: int) -> float:
    """Seconds per step of ``_update`` + ``_output`` for ``streams`` streams of ``faces`` faces, every
    10th step detected."""
    rng = np.random.default_rng(seed)
    topo = get_family("mediapipe468").topology
    rec: Any = dataclasses.make_dataclass("R", ["topology", "small_face"])(topo, 32.0)
    tracker = mod.FaceTracker.__new__(mod.FaceTracker)
    tracker.rec, tracker.video, tracker.topology = rec, VideoConfig(), topo
    states = [tracker.new_stream(30.0) for _ in range(streams)]
    base = rng.uniform(100, 300, (streams, faces, 1, 3)).astype(np.float32)
    base[..., 0] += 400 * np.arange(faces, dtype=np.float32)[None, :, None]  # faces side by side
    shape = rng.normal(0, 40, (1, 1, topo.n_vertices, 3)).astype(np.float32)
    times = []
    for step in range(steps):
        lm = base + shape + rng.normal(0, 1, (streams, faces, topo.n_vertices, 3)).astype(np.float32)
        pose = Pose(0.0, 0.0, 0.0, np.eye(4))
        detect = step % 10 == 0
        images = []
        pairs_all = []
        for s, st in enumerate(states):
            fs = [
                Face(bbox=np.array([0, 0, 100, 100], np.float32), score=0.9,
                     keypoints=np.zeros((6, 2), np.float32), landmarks=lm[s, k],
                     landmarks68=lm[s, k, topo.idx68, :2], pose=pose, detector="blazeface")
                for k in range(faces)
            ]  # fmt: skip
            r = ImageResult("v.mp4", 1920, 1080, faces=fs)
            images.append(r)
            pairs_all.append(tracker._match(st, r) if detect or not st.tracks else mod._follow(st, r))
        t0 = time.perf_counter()
        clocks = [mod._tick(st, step / 30.0) for st in states]
        kept = [tracker._update(st, p) for st, p in zip(states, pairs_all)]
        tracker._output(kept, images, clocks, [step] * streams, [step / 30.0] * streams)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("--streams", type=int, default=25)
    p.add_argument("--faces", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    import torch

    import facefleet.video.track as new

    torch.set_num_threads(1)  # estimate_pose's small CPU ops: one thread times steadier

    old = _load(a.old)
    res: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(a.repeat):
        for name, mod in (("old", old), ("new", new)):
            res[name].append(_run(mod, a.streams, a.faces, a.steps, r))
    o, n = min(res["old"]), min(res["new"])
    what = f"{a.streams} streams x {a.faces} faces"
    print(f"{what}: old {o * 1e3:.2f} ms/step, new {n * 1e3:.2f} ms/step, {o / n:.2f}x")


if __name__ == "__main__":
    main()
