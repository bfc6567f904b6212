"""GpuSampler: host samples always, GPU samples only where NVML sees a GPU."""

from __future__ import annotations

import subprocess
import sys
import time

from facefleet.monitor.gpu import GpuSampler, HostProbe, NvmlProbe, summarize_samples


def _has_gpu() -> bool:
    return NvmlProbe().available


def test_sampler_records_host_samples_and_gpus_only_when_present() -> None:
    with GpuSampler(interval=0.05) as s:
        x = sum(i * i for i in range(300_000))  # some CPU work while sampling
        time.sleep(0.3)
    assert x > 0
    samples = s.samples()
    assert len(samples) >= 4
    ts = [r["t"] for r in samples]
    assert ts == sorted(ts) and ts[-1] >= 0.25
    assert all(r["rss_mib"] is not None and r["rss_mib"] > 10 for r in samples)
    assert samples[0]["cpu_percent"] is None  # the first read only primes the counters
    assert all(0.0 <= r["cpu_percent"] <= 100.0 for r in samples[1:])
    summ = s.summary()
    assert summ["n_samples"] == len(samples)
    assert summ["rss_mib_peak"] == max(r["rss_mib"] for r in samples)
    if _has_gpu():
        assert all(r["gpus"] for r in samples)
        assert summ["gpus"]
    else:
        assert all(r["gpus"] == [] for r in samples)
        assert summ["gpus"] == {}


def test_rss_counts_child_processes() -> None:
    """A child holding ~200 MiB shows up in the process-tree RSS."""
    probe = HostProbe()
    before = probe.read()["rss_mib"]
    code = (
        "import sys, time; b = bytearray(200 * 1024 * 1024); "
        "sys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ok"
        after = probe.read()["rss_mib"]
    finally:
        child.kill()
        child.wait()
    assert after - before > 150


def test_summary_per_gpu_stats() -> None:
    samples = [
        {
            "t": 0.0,
            "cpu_percent": 10.0,
            "rss_mib": 100.0,
            "gpus": [
                {
                    "index": 0,
                    "name": "A",
                    "util": 50.0,
                    "mem_used_mib": 1000.0,
                    "mem_total_mib": 8000.0,
                    "power_w": 100.0,
                    "temp_c": 40.0,
                }
            ],
        },
        {
            "t": 0.5,
            "cpu_percent": 30.0,
            "rss_mib": 150.0,
            "gpus": [
                {
                    "index": 0,
                    "name": "A",
                    "util": 100.0,
                    "mem_used_mib": 3000.0,
                    "mem_total_mib": 8000.0,
                    "power_w": 300.0,
                    "temp_c": 60.0,
                }
            ],
        },
    ]
    s = summarize_samples(samples)
    g = s["gpus"]["0"]
    assert g["util_mean"] == 75.0 and g["util_max"] == 100.0
    assert g["mem_used_mib_peak"] == 3000.0 and g["mem_total_mib"] == 8000.0
    assert g["power_w_mean"] == 200.0 and g["temp_c_max"] == 60.0 and g["name"] == "A"
    assert s["cpu_percent_mean"] == 20.0 and s["rss_mib_peak"] == 150.0 and s["duration_s"] == 0.5
