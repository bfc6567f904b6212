"""The run report: realistic stats -> self-contained HTML with plots + report.json."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from facefleet.monitor.report import derive
from facefleet.monitor.report_files import write_report


def realistic_stats(n_gpus: int = 2, seconds: float = 120.0) -> dict[str, Any]:
    """What a 2-GPU run over 300k images would leave in stats.json (numbers are made up but coherent)."""
    rate = 2600.0  # images/s per GPU at steady state
    images = faces = 0.0
    tp, samples = [], []
    t = 0.0
    while t < seconds:
        t = round(t + 1.0, 3)
        ramp = min(1.0, t / 6.0)
        inst = n_gpus * rate * ramp * (1 + 0.04 * math.sin(t / 3))
        images += inst
        faces += inst * 1.08
        tp.append({"t": t, "images": int(images), "faces": int(faces)})
    k = 0
    while k * 0.5 <= seconds:
        ts = k * 0.5
        ramp = min(1.0, ts / 6.0)
        gpus = [
            {
                "index": g,
                "name": "NVIDIA H100 80GB HBM3",
                "util": 95 * ramp - 3 * g,
                "mem_util": 40.0,
                "mem_used_mib": 900 + 2400 * ramp + 50 * g,
                "mem_total_mib": 81559.0,
                "power_w": 120 + 500 * ramp,
                "temp_c": 35 + 20 * ramp,
            }
            for g in range(n_gpus)
        ]
        samples.append({"t": ts, "cpu_percent": 70 * ramp, "rss_mib": 1500 + 600 * ramp, "gpus": gpus})
        k += 1
    n_img = int(images)
    per = n_img // n_gpus
    return {
        "input": "/data/photos",
        "output": "/data/out",
        "started_at": "2025-05-01T10:00:00Z",
        "finished_at": "2025-05-01T10:02:00Z",
        "wall_seconds": seconds,
        "totals": {
            "images": n_img,
            "faces": int(faces),
            "no_face": 1234,
            "failed": 17,
            "units": n_img // 256 + 1,
            "skipped_units": 0,
            "failed_by_reason": {"decode_error": 12, "empty_file": 3, "too_large": 2},
        },
        "failures": [
            {
                "source": "/data/photos/a/broken_001.jpg",
                "reason": "decode_error",
                "error": "cannot identify image",
            },
            {"source": "/data/photos/a/broken_002.jpg", "reason": "decode_error", "error": "truncated JPEG"},
            {"source": "/data/photos/b/zero.jpg", "reason": "empty_file", "error": "file is empty"},
            {"source": "/data/photos/c/huge.png", "reason": "too_large", "error": "40000x40000 > limit"},
        ],
        "workers": [
            {
                "worker": f"gpu{g}",
                "device": f"cuda:{g}",
                "units": per // 256,
                "images": per,
                "faces": int(per * 1.08),
                "seconds": seconds - 1.0,
                "busy_seconds": seconds - 3.0 - g,
            }
            for g in range(n_gpus)
        ],
        "stages": {
            "read": 41.0,
            "decode": 88.0,
            "detect": 61.0,
            "mesh": 52.0,
            "texture": 0.0,
            "write": 23.5,
            "wait_input": 7.5,
            "wait_writers": 0.25,
        },
        "throughput": tp,
        "batch_seconds": [0.09 + 0.01 * ((i * 7919) % 13) for i in range(400)],
        "gpu": {"interval": 0.5, "samples": samples},
        "gpu_memory_peak_mib": {"cuda:0": 2950.0, "cuda:1": 2990.0},
        "config": {
            "devices": "all",
            "formats": ["parquet"],
            "batch_size": 128,
            "unit_size": 256,
            "precision": "fp16",
            "profile": {"name": "H100", "decode": "nvjpeg"},
        },
    }


def test_report_is_self_contained_html_with_plots_and_totals(tmp_path: Path) -> None:
    stats = realistic_stats()
    html_path, json_path = write_report(tmp_path / "out", stats)
    assert html_path == tmp_path / "out" / "report.html" and json_path.name == "report.json"
    html = html_path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(script|link|img|iframe)\b", html, re.I)
    assert "@import" not in html and "url(" not in html
    # plots: throughput, GPU util, GPU memory, host CPU, host RSS, stages, workers
    assert html.count("<svg") >= 7
    for title in (
        "Throughput over time",
        "GPU utilisation",
        "GPU memory",
        "Time per stage",
        "Work per worker",
        "Failures by reason",
        "Configuration",
    ):
        assert title in html
    n = stats["totals"]["images"]
    assert f"{n:,}" in html
    assert "decode_error" in html and "broken_001.jpg" in html
    assert "NVIDIA H100 80GB HBM3" in html
    # no leftover temporary files from the atomic writes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]

    doc = json.loads(json_path.read_text())
    assert doc["stats"]["totals"]["images"] == n
    d = doc["derived"]
    assert d["images_per_s"] == pytest.approx(n / 120.0)
    assert d["faces_per_s"] == pytest.approx(stats["totals"]["faces"] / 120.0)
    assert sum(d["stage_share"].values()) == pytest.approx(1.0)
    assert d["stage_share"]["decode"] == pytest.approx(88.0 / 265.5)  # the waits are not work
    assert d["waits"] == {"wait_input": 7.5, "wait_writers": 0.25}
    assert "waited" in html and "for decoded images" in html
    assert set(d["per_gpu"]) == {"0", "1"}
    assert d["per_gpu"]["0"]["util_max"] == pytest.approx(95.0)
    assert d["per_gpu"]["1"]["mem_used_mib_peak"] == pytest.approx(3350.0)
    assert d["per_worker"][0]["busy_fraction"] == pytest.approx(117.0 / 120.0)
    assert 0.09 <= d["batch_latency"]["p50"] <= d["batch_latency"]["p99"] <= 0.21


def test_report_says_which_side_waits_in_the_steady_state(tmp_path: Path) -> None:
    """Per-batch records: the report gives their medians over the steady batches and which side waits
    for which; the decoder's wait for a slot is a wait, not a share of the work."""
    cols = ["t", "decode", "slot_wait", "wait_input", "networks"]
    start = [[0.5, 2.0, 0.0, 20.0, 1.0]]  # the first batch: start-up, left out
    steady = [[1.0 + k, 0.06, 0.0, 0.008, 0.035] for k in range(18)]
    stats = {
        "totals": {"images": 2560, "faces": 2500},
        "wall_seconds": 30.0,
        "stages": {"decode": 3.0, "detect": 1.0, "slot_wait": 0.5, "wait_input": 2.0},
        "batch_stages": {"columns": cols, "rows": steady + start + [[40.0, 0.1, 0.0, 0.0, 0.03]]},
    }
    html_path, json_path = write_report(tmp_path, stats)
    d = json.loads(json_path.read_text())["derived"]
    assert d["batch_stages_ms"] == {"decode": 60.0, "slot_wait": 0.0, "wait_input": 8.0, "networks": 35.0}
    assert d["bound"].startswith("reading and decoding")
    assert d["waits"] == {"slot_wait": 0.5, "wait_input": 2.0}
    assert set(d["stage_share"]) == {"decode", "detect"}
    html = html_path.read_text()
    assert "the decoder for a free slot" in html and "Bound: reading and decoding" in html
    # the other way round: the decoder waits for slots, the networks never wait
    for r in steady:
        r[2], r[3] = 0.02, 0.0
    d2 = json.loads(write_report(tmp_path / "b", stats)[1].read_text())["derived"]
    assert d2["bound"] == "the networks: the decoder waits for them to free a slot"
    d3 = json.loads(write_report(tmp_path / "c", {"wall_seconds": 1.0})[1].read_text())["derived"]
    assert d3["bound"] is None and d3["batch_stages_ms"] == {}


def test_report_minimal_stats_and_cpu_run(tmp_path: Path) -> None:
    """A CPU run with no GPU samples and no failures still gives a valid page and strict JSON."""
    stats = {
        "totals": {"images": 8, "faces": 8, "no_face": 0, "failed": 0},
        "wall_seconds": 2.0,
        "gpu": {
            "samples": [
                {"t": 0.0, "cpu_percent": None, "rss_mib": 300.0, "gpus": []},
                {"t": 0.5, "cpu_percent": 95.0, "rss_mib": 310.0, "gpus": []},
            ]
        },
        "throughput": [{"t": 1.0, "images": 4, "faces": 4}, {"t": 2.0, "images": 8, "faces": 8}],
        "batch_seconds": [],
    }
    html_path, json_path = write_report(tmp_path, stats)
    html = html_path.read_text()
    assert "No failures" in html and "Host CPU" in html
    assert "GPU utilisation (%)" not in html
    doc = json.loads(json_path.read_text())  # strict JSON (no NaN)
    assert doc["derived"]["images_per_s"] == pytest.approx(4.0)
    assert doc["derived"]["per_gpu"] == {}


def test_derive_from_rate_series_and_worker_mapping() -> None:
    stats = {
        "totals": {"images": 100, "faces": 50},
        "throughput": {"t": [1, 2], "images_per_s": [40.0, 60.0], "faces_per_s": [20.0, 30.0]},
        "workers": {
            "w0": {"units": 2, "images": 60, "seconds": 2.0},
            "w1": {"units": 1, "images": 40, "seconds": 2.0},
        },
    }
    d = derive(stats)
    assert d["wall_seconds"] == 2.0  # taken from the series when no wall time is given
    assert d["images_per_s"] == pytest.approx(50.0)
    assert [w["worker"] for w in d["per_worker"]] == ["w0", "w1"]
    assert d["per_worker"][0]["images_per_s"] == pytest.approx(30.0)


def test_report_refuses_file_as_out_dir(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match="x"):
        write_report(f, {"totals": {}})
