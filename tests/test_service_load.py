"""The bounded load test of the service at CI's scale: ``facefleet serve`` on the CPU under 8 concurrent
clients (``python -m facefleet.bench.service``): every request answered 200, server memory flat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")


@pytest.mark.slow
def test_eight_clients_zero_errors_flat_memory(tmp_path: Path, astronaut: np.ndarray) -> None:
    from facefleet.bench.service import main

    for i in range(8):
        Image.fromarray(np.roll(astronaut, 9 * i, axis=1)).save(tmp_path / f"a{i}.jpg", quality=90)
    rows = tmp_path / "rows.json"
    code = main(
        [
            "--clients",
            "8,8,8",
            "--seconds",
            "5",
            "--images-dir",
            str(tmp_path),
            "--client-procs",
            "1",
            "--max-rss-growth-mib",
            "64",
            "--json",
            str(rows),
            "--",
            "--devices",
            "cpu",
        ]
    )
    assert code == 0
    import json

    got = json.loads(rows.read_text())["rows"]
    assert len(got) == 3 and all(r["requests"] >= 8 and r["errors"] == {} for r in got)
