"""Helpers shared by the engine tests: a small real-image corpus and a light test double of the
reconstructor (only for queue/scheduler behaviour; end-to-end tests use the real pipeline)."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from facefleet.types import Face, ImageResult, Pose


def make_corpus(root: Path, n: int, *, size: int = 128, subdirs: int = 3) -> list[Path]:
    """``n`` small JPEGs re-encoded from scikit-image photos (astronaut: a face; coffee/camera:
    none), spread over ``subdirs`` folders. Each file differs (a varying crop), so results differ."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), np.repeat(data.camera()[:, :, None], 3, axis=2)]
    paths = []
    for i in range(n):
        src = photos[i % 3 if i % 5 else 0]  # astronaut in 2/5 + 1/5 of the files
        off = (i * 7) % 40
        crop = src[off : off + 420, off : off + 420]
        im = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size))
        p = root / f"d{i % subdirs}" / f"img{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


class FakeReconstructor:
    """Deterministic stand-in: 0-2 'faces' per image from its pixel statistics. Sleeps ``delay``
    seconds per image so that tests can interrupt a run, and ``batch_delay`` seconds per call, twice
    that in every other call (so that batches on several threads finish out of order);
    ``FACEFLEET_FAKE_CRASH`` names a source substring that raises (a poison image)."""

    def __init__(
        self,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        delay: float = 0.0,
        batch_delay: float = 0.0,
        **_: Any,
    ) -> None:
        import torch

        self.device = torch.device(device)
        self.delay = float(os.environ.get("FACEFLEET_FAKE_DELAY", delay))
        self.batch_delay = float(batch_delay)
        self.calls = 0
        self.crash = os.environ.get("FACEFLEET_FAKE_CRASH")
        # FACEFLEET_FAKE_QUORUM="DIR:N": each worker's first batch waits until N workers are up (each
        # leaves a file in DIR when built), so a test can count on every worker taking part
        self.quorum = os.environ.get("FACEFLEET_FAKE_QUORUM")
        if self.quorum:
            folder = self.quorum.rsplit(":", 1)[0]
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, str(os.getpid())), "w").close()

    def reconstruct_tensors(
        self, images: list[Any], sources: list[str], *, texture: bool = False, timings: Any = None
    ) -> list[ImageResult]:
        self.calls += 1
        if self.quorum and self.calls == 1:
            folder, n = self.quorum.rsplit(":", 1)
            give_up = time.monotonic() + 60
            while len(os.listdir(folder)) < int(n) and time.monotonic() < give_up:
                time.sleep(0.02)
        time.sleep(self.batch_delay * (2 if self.calls % 2 else 1))
        out = []
        for t, s in zip(images, sources, strict=False):
            if self.crash and self.crash in s:
                if os.environ.get("FACEFLEET_FAKE_CRASH_SIGNAL") == "SEGV":
                    os.kill(os.getpid(), signal.SIGSEGV)  # as a native decoder crash would
                os._exit(17)  # a worker that dies on this image (a poison unit)
            time.sleep(self.delay)
            a = t.float()
            h, w = int(t.shape[1]), int(t.shape[2])
            m = float(a.mean())
            faces = []
            for j in range(int(m) % 3):
                lm = np.full((468, 3), m + j, np.float32)
                faces.append(
                    Face(
                        bbox=np.array([0, 0, w / (j + 1), h / (j + 1)], np.float32),
                        score=0.9 - 0.1 * j,
                        keypoints=np.zeros((6, 2), np.float32),
                        landmarks=lm,
                        landmarks68=lm[:68, :2],
                        pose=Pose(yaw=m, pitch=j, roll=0.0, matrix=np.eye(4)),
                        presence=1.0,
                    )
                )
            out.append(ImageResult(s, w, h, faces=faces))
        if timings is not None:
            timings["detect"] = timings.get("detect", 0.0) + 0.001
        return out


class GatedReconstructor:
    """The real pipeline, held at a gate: after the first ``open_calls`` batches of a worker, each
    batch waits until the file ``$FACEFLEET_TEST_GATE`` exists. A test interrupts a run while its
    workers wait there, then opens the gate, so the run cannot end before the interrupt."""

    def __init__(self, *args: Any, open_calls: int = 2, **kwargs: Any) -> None:
        from facefleet.pipeline import Reconstructor

        self._rec = Reconstructor(*args, **kwargs)
        self.device = self._rec.device
        self.open_calls = open_calls
        self.calls = 0
        self.gate = os.environ.get("FACEFLEET_TEST_GATE", "")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rec, name)

    def reconstruct_tensors(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        while self.calls > self.open_calls and self.gate and not os.path.exists(self.gate):
            time.sleep(0.02)
        return self._rec.reconstruct_tensors(*args, **kwargs)
