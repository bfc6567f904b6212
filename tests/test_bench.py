"""`facefleet bench`: the table and JSON on CPU, and the scheduler simulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facefleet.bench.bench import bench_cli
from facefleet.bench.simulate import format_sim_table, simulate_workers


def test_simulation_two_workers_busy_and_queue_not_the_bottleneck(tmp_path: Path) -> None:
    r = simulate_workers(2, rate=2000.0, seconds=2.0, unit_size=64, work_dir=tmp_path)
    assert r.images == int(2000 * 2 * 2.0) and sum(r.units_per_worker) == r.units
    assert all(u > 0 for u in r.units_per_worker)  # both workers got work
    assert len(r.busy_fraction) == 2 and all(0.75 < b <= 1.0 for b in r.busy_fraction)
    assert 0.75 < r.efficiency <= 1.02
    assert r.claim_ms["p50"] < 20.0
    table = format_sim_table([r])
    assert "efficiency" in table and "2,000" in table
    assert list(tmp_path.iterdir()) == []  # the scratch queue is removed


def _models_present() -> bool:
    from facefleet.models import cache_dir

    return (cache_dir() / "face_landmark.tflite").is_file()


@pytest.mark.skipif(not _models_present(), reason="MediaPipe .tflite files not in the model cache")
def test_bench_litert_baseline_prints_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    rc = bench_cli(
        [
            "--baselines",
            "litert",
            "--corpus-kind",
            "synthetic",
            "--images",
            "8",
            "--resolution",
            "320x240",
            "--litert-processes",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "LiteRT CPU x1" in text and "img/s" in text and "faces/s" in text
    doc = json.loads(out.read_text())
    row = doc["rows"][0]
    assert row["images"] == 8 and row["failed"] == 0
    assert 6 <= row["faces"] <= 8  # one pasted face per image, found by the LiteRT detector
    assert row["images_per_s"] > 0 and row["batch_p50_s"] <= row["batch_p99_s"]
    assert doc["corpus"]["expected_faces"] == 8


def _pipeline_ready() -> str | None:
    try:
        from facefleet.engine import run  # noqa: F401
        from facefleet.pipeline import Reconstructor

        Reconstructor(device="cpu")
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.slow
def test_bench_all_baselines_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    why = _pipeline_ready()
    if why:
        pytest.skip(f"engine or Reconstructor not usable here: {why}")
    out = tmp_path / "bench.json"
    rc = bench_cli(
        [
            "--baselines",
            "engine,loop,litert",
            "--corpus-kind",
            "synthetic",
            "--images",
            "8",
            "--resolution",
            "320x240",
            "--devices",
            "cpu",
            "--workers",
            "1",
            "--litert-processes",
            "1",
            "--work-dir",
            str(tmp_path / "w"),
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert rc == 0, text
    names = [r["name"] for r in doc["rows"]]
    assert names == ["facefleet run", "loop (1 image at a time)", "LiteRT CPU x1"]
    for r in doc["rows"]:
        assert "error" not in r, r
        assert r["images"] == 8 and r["images_per_s"] > 0
        assert 6 <= r["faces"] <= 8
    assert "x loop" in text and "x LiteRT" in text
    assert doc["rows"][0]["batch_p50_s"] is not None
    assert (tmp_path / "w" / "out_parquet" / "report.html").is_file()


def test_steady_rate_leaves_out_start_up_and_tail() -> None:
    """The steady column: 12 s of start-up, 1,000 img/s for 20 s, a slow tail -> ~1,000 img/s
    (the whole-run rate would be ~580)."""
    from facefleet.bench.rates import steady_rate

    pts = [{"t": float(t), "images": 0.0} for t in range(13)]
    pts += [{"t": 12.0 + t, "images": 1000.0 * t} for t in range(1, 21)]
    pts += [{"t": 33.0, "images": 20_400.0}, {"t": 35.0, "images": 20_500.0}]
    rate = steady_rate(pts)
    assert rate is not None and abs(rate - 1000.0) < 30
    assert steady_rate(pts[:2]) is None
    # from the engine's batch completions: 50 batches of 100 images every 0.1 s after 5 s of start-up
    from facefleet.bench.rates import batch_points

    done = [[5.0 + 0.1 * k, 100] for k in range(50)]
    rate = steady_rate(batch_points(done[::-1]))  # in any order
    assert rate is not None and abs(rate - 1000.0) < 1


def test_steady_rate_of_several_workers_counts_only_when_all_run() -> None:
    """Four workers of 1,000 img/s each (batches of 100 every 0.1 s), the fourth up 6 s after the
    others: the rate is the four workers' (~4,000 img/s), not a mix with the time three ran alone
    (the 10-90 % window alone gives ~3,680); a run the first three finish before the fourth starts
    has no such window, nor has a run whose fourth worker never did a batch."""
    from facefleet.bench.rates import batch_points, steady_rate

    def batches(worker: str, start: float, n: int) -> list[list]:
        return [[start + 0.1 * (k + 1), 100, worker] for k in range(n)]

    done = batches("w0", 1.0, 160) + batches("w1", 1.0, 160) + batches("w2", 1.0, 160)
    done += batches("w3", 7.0, 100)  # up at 7 s; the others run until 17 s
    rate = steady_rate(batch_points(done))
    assert rate is not None and abs(rate - 4000.0) < 120
    unnamed = steady_rate(batch_points([row[:2] for row in done]))  # no worker names: 10-90 % only
    assert unnamed is not None and unnamed < 3750
    early = batches("w0", 1.0, 20) + batches("w1", 1.0, 20) + batches("w3", 7.0, 5)
    assert steady_rate(batch_points(early)) is None
    # a fourth worker that never got a batch: not four workers' rate either
    three = batches("w0", 1.0, 160) + batches("w1", 1.0, 160) + batches("w2", 1.0, 160)
    assert steady_rate(batch_points(three), workers=4) is None
    rate = steady_rate(batch_points(three), workers=3)
    assert rate is not None and abs(rate - 3000.0) < 1


def test_gpu_memory_both_ways_of_counting() -> None:
    """The engine row's GPU memory: what the workers allocate, and what the run added to the busiest
    GPU by NVML's count (peak "used" minus the first sample, taken before the workers start)."""
    from facefleet.bench.rates import nvml_added_mib
    from facefleet.bench.tables import format_rows
    from facefleet.monitor.gpu import summarize_samples

    def sample(t: float, used: list[float]) -> dict:
        gpus = [
            {"index": i, "name": "H", "mem_used_mib": u, "mem_total_mib": 80_000.0}
            for i, u in enumerate(used)
        ]
        return {"t": t, "gpus": gpus}

    summary = summarize_samples(
        [sample(0.0, [600.0, 650.0]), sample(1.0, [6_200.0, 900.0]), sample(2.0, [700.0, 5_000.0])]
    )
    assert summary["gpus"]["0"]["mem_used_mib_start"] == 600.0
    assert nvml_added_mib(summary) == 5_600.0  # GPU 0 added 5,600 MiB, GPU 1 4,350
    assert nvml_added_mib(summarize_samples([{"t": 0.0, "gpus": []}])) is None  # no NVML
    row = {
        "name": "facefleet run",
        "device": "0",
        "images": 10,
        "peak_gpu_mib": 2_870.0,
        "nvml_gpu_mib": 5_600.0,
    }
    head, _, line = format_rows([row]).splitlines()[:3]
    assert head.index("GPU MiB") < head.index("NVML MiB")
    assert line.index("2,870") < line.index("5,600")  # allocated, then NVML's count


def test_steady_batch_stages_are_medians_of_the_middle_batches() -> None:
    """The per-batch stages' medians (ms) leave out the first and last 10 % of the batches by completion
    time (start-up, tail), whatever order the rows come in."""
    from facefleet.monitor.report import steady_batch_stages

    cols = ["t", "decode", "slot_wait", "wait_input", "networks"]
    rows = [[float(t), 0.05, 0.0, 0.001, 0.03] for t in range(1, 9)]
    rows += [[0.0, 5.0, 0.0, 9.0, 2.0], [99.0, 0.0, 3.0, 0.0, 0.0]]  # the first and the last batch
    got = steady_batch_stages({"columns": cols, "rows": rows[::-1]})
    assert got == {"decode": 50.0, "slot_wait": 0.0, "wait_input": 1.0, "networks": 30.0}
    assert steady_batch_stages(None) == {} and steady_batch_stages({"columns": cols, "rows": []}) == {}


def test_scaling_table_uses_steady_rates_only() -> None:
    """Speedup and efficiency come from the steady rates; a row without one (too few images for its
    workers to run together) says so instead of falling back to the rate with start-up."""
    from facefleet.bench.tables import format_scaling

    rows = [
        {"gpus": 1, "images_per_s": 400.0, "steady_images_per_s": 3000.0},
        {"gpus": 2, "images_per_s": 450.0, "steady_images_per_s": 5700.0},
        {"gpus": 4, "images_per_s": 350.0, "steady_images_per_s": None},
    ]
    text = format_scaling(rows)
    lines = text.splitlines()
    two = next(line for line in lines if line.startswith("2 "))
    assert "1.90x" in two and "95.0%" in two
    four = next(line for line in lines if line.startswith("4 "))
    assert four.split()[-3:] == ["-", "-", "-"] and "4 GPU(s): no steady rate" in text


def test_bench_repeat_runs_the_corpus_k_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--repeat 3``: the engine reads each generated image three times, each under a path of its own
    (a manifest row each), and finds three times the faces; the corpus itself is written once."""
    why = _pipeline_ready()
    if why:
        pytest.skip(f"engine or Reconstructor not usable here: {why}")
    from facefleet.engine import read_manifest

    out = tmp_path / "bench.json"
    args = ["--baselines", "engine", "--corpus-kind", "synthetic", "--images", "3", "--resolution", "320x240"]
    args += ["--devices", "cpu"]
    args += ["--workers", "1", "--repeat", "3", "--work-dir", str(tmp_path / "w"), "--json", str(out)]
    rc = bench_cli(args)
    text = capsys.readouterr().out
    assert rc == 0, text
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert "error" not in row, row
    assert row["images"] == 9 and doc["corpus"]["n"] == 3 and doc["corpus"]["repeat"] == 3
    assert 3 * 2 <= row["faces"] <= 3 * 3 and row["faces"] % 3 == 0
    sources = read_manifest(tmp_path / "w" / "out_parquet").column("source").to_pylist()
    assert len(set(sources)) == 9
    assert len(list((tmp_path / "w" / "corpus").rglob("*.jpg"))) == 3
    with pytest.raises(SystemExit, match="--repeat must be at least 1"):
        bench_cli(["--baselines", "engine", "--repeat", "0"])


def test_default_corpus_is_the_photos_else_synthetic_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the shared photos are, the bench crops them; elsewhere it generates the synthetic corpus
    and says why."""
    from PIL import Image
    from skimage import data

    from facefleet.bench import corpus
    from facefleet.bench.bench import _make_corpus, build_parser

    args = build_parser().parse_args(["--resolution", "320x180"])
    photo = tmp_path / "images" / "astronaut.jpg"
    photo.parent.mkdir()
    Image.fromarray(data.astronaut()).save(photo)
    monkeypatch.setattr(corpus, "photo_files", lambda data_dir=None: [photo])
    logs: list[str] = []
    _, files, desc = _make_corpus(args, tmp_path / "p", 3, logs.append)
    assert desc["kind"] == "photos" and len(files) == 3 and "real photos" in logs[0]
    monkeypatch.setattr(corpus, "photo_files", lambda data_dir=None: [])
    logs.clear()
    _, files, desc = _make_corpus(args, tmp_path / "s", 3, logs.append)
    assert desc["kind"] == "synthetic" and desc["expected_faces"] == 3 and len(files) == 3
    assert any("../shared/data/images" in line and "not here" in line for line in logs)
    with pytest.raises(SystemExit, match="--corpus-kind photos needs"):
        _make_corpus(build_parser().parse_args(["--corpus-kind", "photos"]), tmp_path / "x", 3, logs.append)


def test_every_row_gets_the_same_model_settings(tmp_path: Path) -> None:
    from facefleet.bench.bench import build_parser, model_settings
    from facefleet.bench.rows import litert_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\ndetector = "full"\nrefine = 1\n')
    assert model_settings(build_parser().parse_args([])) == {"detector": "auto", "refine": 2}
    m = model_settings(build_parser().parse_args(["--config", str(cfg), "--refine", "0"]))
    assert m == {"detector": "full", "refine": 0}
    s = litert_settings(m)
    assert (s.detector, s.refine, s.kinds) == ("full", 0, ("full",))


@pytest.mark.skipif(not _models_present(), reason="MediaPipe .tflite files not in the model cache")
def test_litert_baseline_does_the_engines_work() -> None:
    """The baseline runs each detector model of the setting on the whole image, the full-range model on
    the tiles of a crowded frame, and 1 + refine mesh passes per face (the work the engine does)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from facefleet.bench.litert_baseline import BaselineSettings, LiteRTFaceMesh

    face = Image.fromarray(data.astronaut())
    calls: list[str] = []
    for settings, want_faces in ((BaselineSettings("auto", 2), 1), (BaselineSettings("short", 0), 1)):
        m = LiteRTFaceMesh(settings=settings)
        det, mesh = m._detect, m._mesh
        m._detect = lambda img, which, det=det: (calls.append(f"det:{which}:{img.size[0]}"), det(img, which))[
            1
        ]
        m._mesh = lambda *a, mesh=mesh: (calls.append("mesh"), mesh(*a))[1]
        calls.clear()
        faces = m(face)
        assert len(faces) == want_faces and faces[0].landmarks.shape == (468, 3)
        whole = sorted(c for c in calls if c.startswith("det:") and c.endswith(":512"))
        assert whole == sorted(f"det:{k}:512" for k in settings.kinds)
        assert calls.count("mesh") == len(faces) * (1 + settings.refine)
    # a 1920x1080 frame with two small faces: the engine's rule tiles it (a face under 7 % of the long
    # side); so does the baseline, and the tiles find the face the whole-image pass missed
    frame = Image.new("RGB", (1920, 1080), (90, 90, 90))
    head = face.crop((100, 0, 380, 280)).resize((260, 260))
    frame.paste(head, (200, 300))
    frame.paste(head, (1300, 300))
    m = LiteRTFaceMesh(settings=BaselineSettings("full", 0))
    det = m._detect
    m._detect = lambda img, which, det=det: (calls.append(f"det:{which}:{img.size[0]}"), det(img, which))[1]
    calls.clear()
    assert len(m(frame)) == 2
    tiles = [c for c in calls if c.startswith("det:full:") and not c.endswith(":1920")]
    assert len(tiles) > 1 and np.all([c == tiles[0] for c in tiles])  # square tiles of one side


@pytest.mark.skipif(not _models_present(), reason="MediaPipe .tflite files not in the model cache")
def test_bench_combined_detector_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--detector combined`` runs the rows that can run CenterFace (the per-image loop here) and leaves
    LiteRT's out with a line that says why, rather than timing a baseline doing other work."""
    out = tmp_path / "bench.json"
    argv = ["--baselines", "loop,litert", "--detector", "combined", "--corpus-kind", "synthetic"]
    argv += ["--images", "4", "--resolution", "320x240", "--json", str(out)]
    assert bench_cli(argv) == 0
    text = capsys.readouterr().out
    assert "no LiteRT row with detector combined" in text
    doc = json.loads(out.read_text())
    assert doc["model"]["detector"] == "combined"
    assert [r["images"] for r in doc["rows"]] == [4] and "LiteRT" not in doc["rows"][0].get("baseline", "")
    assert doc["rows"][0]["failed"] == 0 and doc["rows"][0]["faces"] >= 3
