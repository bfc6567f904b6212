"""GPU profiles, device parsing and config files of facefleet.hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet import hardware
from facefleet.hardware import GpuSpec, gpu_profile, load_config, parse_devices, plan_devices

GIB = 1 << 30


@pytest.mark.parametrize(
    ("name", "mem_gib", "cap", "batch", "precision"),
    [
        ("NVIDIA H100 80GB HBM3", 80, (9, 0), 128, "fp16"),
        ("NVIDIA H200", 141, (9, 0), 128, "fp16"),
        ("NVIDIA A100-SXM4-40GB", 40, (8, 0), 128, "fp16"),
        ("Tesla V100-SXM2-16GB", 16, (7, 0), 64, "fp16"),
        ("NVIDIA A10G", 24, (8, 6), 64, "fp16"),
        ("NVIDIA L4", 24, (8, 9), 48, "fp16"),
        ("Tesla T4", 15, (7, 5), 32, "fp16"),
        ("NVIDIA GeForce RTX 4090", 24, (8, 9), 64, "fp16"),
        ("NVIDIA GeForce GTX 1080", 8, (6, 1), 32, "fp32"),  # Pascal: slow fp16 -> fp32
        ("NVIDIA GeForce RTX 3050 Laptop GPU", 4, (8, 6), 16, "fp16"),  # unknown small card: by memory
    ],
)
def test_builtin_gpu_profiles(
    name: str, mem_gib: int, cap: tuple[int, int], batch: int, precision: str
) -> None:
    assert gpu_profile(GpuSpec(name, mem_gib * GIB, cap)) == (batch, precision)


def test_tiny_card_batch_is_capped_by_memory() -> None:
    b, _ = gpu_profile(GpuSpec("NVIDIA H100 MIG 1g.10gb", 2 * GIB, (9, 0)))
    assert 4 <= b <= 16


def test_parse_devices_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 0)
    assert parse_devices("auto") == ["cpu"]
    assert parse_devices("cpu") == ["cpu"]
    with pytest.raises(ValueError, match="no CUDA device"):
        parse_devices("all")
    with pytest.raises(ValueError, match="GPU 0 does not exist"):
        parse_devices("0")
    with pytest.raises(ValueError, match="expected"):
        parse_devices("fast")


def test_parse_devices_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 4)
    assert parse_devices("all") == [f"cuda:{i}" for i in range(4)]
    assert parse_devices("2,0,2") == ["cuda:2", "cuda:0"]
    assert parse_devices("cuda:1") == ["cuda:1"]


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, specs: list[GpuSpec]) -> None:
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: len(specs))
    monkeypatch.setattr(hardware, "gpu_spec", lambda i: specs[i])
    monkeypatch.setattr(hardware, "cpu_count", lambda: 4)  # too few cores for two workers per GPU


def test_plan_heterogeneous_gpus_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_gpus(monkeypatch, [GpuSpec("NVIDIA H100", 80 * GIB, (9, 0)), GpuSpec("Tesla T4", 15 * GIB, (7, 5))])
    plan = plan_devices("all")
    assert [(p.device, p.batch_size, p.precision, p.decoder) for p in plan] == [
        ("cuda:0", 128, "fp16", "auto"),
        ("cuda:1", 32, "fp16", "auto"),
    ]
    cfg_file = tmp_path / "ff.toml"
    cfg_file.write_text('[gpu]\nprecision = "bf16"\n[gpu."T4"]\nbatch_size = 8\nprecision = "fp16"\n')
    cfg = load_config(cfg_file)
    plan = plan_devices("all", config=cfg)
    assert [(p.batch_size, p.precision, p.source) for p in plan] == [
        (128, "bf16", "config"),
        (8, "fp16", "config"),
    ]
    assert {p.decoder for p in plan_devices("all", config={"gpu": {"decoder": "nvjpeg"}})} == {"nvjpeg"}
    with pytest.raises(ValueError, match="decoder"):
        plan_devices("all", config={"gpu": {"decoder": "libjpeg"}})
    plan = plan_devices("1", config=cfg, batch_size=4)  # CLI beats config
    assert [(p.device, p.batch_size, p.precision, p.source) for p in plan] == [("cuda:1", 4, "fp16", "cli")]
    # device-memory settings per GPU name too (they were read from the top-level [gpu] table only)
    cfg_file.write_text(
        '[gpu]\ndecode_chunk = 16\ndecode_threads = 2\n[gpu."T4"]\nbatches_in_flight = 1\ndecode_chunk = 8\n'
    )
    plan = plan_devices("all", config=load_config(cfg_file))
    # the decoder process decodes straight into its slots: three by default (the third is decoded ahead)
    assert [(p.batches_in_flight, p.decode_chunk, p.decode_threads) for p in plan] == [(3, 16, 2), (1, 8, 2)]
    threads_cfg = {"gpu": {"decode_process": False}}
    assert [p.batches_in_flight for p in plan_devices("all", config=threads_cfg)] == [2, 2]
    # two batches decoded at once by the decoder process (one on the worker's threads)
    assert [p.decode_threads for p in plan_devices("all")] == [2, 2]
    assert [p.decode_threads for p in plan_devices("all", config=threads_cfg)] == [1, 1]
    with pytest.raises(ValueError, match="decode_threads"):
        plan_devices("all", config={"gpu": {"decode_threads": 0}})
    # nvImageCodec's backends (the JPEG engine first, the host's cores for 15 %) and host threads
    cfg_file.write_text('[gpu]\ndecode_backends = "hw:0.85,cpu"\ndecode_cpu_threads = 8\n')
    plan = plan_devices("all", config=load_config(cfg_file))
    assert {(p.decode_backends, p.decode_cpu_threads) for p in plan} == {("hw:0.85,cpu", 8)}
    assert {p.decode_backends for p in plan_devices("all")} == {"auto"}
    bad_settings = (("hw:2", "share must be in"), ("nvjpg", "unknown JPEG decoder"), ("hw:x", "share"))
    for bad, match in bad_settings:
        cfg_file.write_text(f'[gpu]\ndecode_backends = "{bad}"\n')
        with pytest.raises(ValueError, match=match):
            load_config(cfg_file)
    with pytest.raises(ValueError, match="decode_cpu_threads"):
        plan_devices("all", config={"gpu": {"decode_cpu_threads": -1}})
    # torch.compile's fused kernels: on by default, off per card or everywhere, a boolean only
    assert [p.compile for p in plan] == [True, True]
    cfg_file.write_text('[gpu."T4"]\ncompile = false\n')
    assert [p.compile for p in plan_devices("all", config=load_config(cfg_file))] == [True, False]
    cfg_file.write_text('[gpu]\ncompile = "no"\n')
    with pytest.raises(ValueError, match="compile must be true or false"):
        load_config(cfg_file)


def test_plan_cpu_workers_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(hardware, "cpu_count", lambda: 16)
    plan = plan_devices("cpu")
    assert len(plan) == 4 and {(p.device, p.threads, p.precision) for p in plan} == {("cpu", 4, "fp32")}
    plan = plan_devices("auto", cpu_workers=2, batch_size=3)
    assert len(plan) == 2 and plan[0].threads == 8 and plan[0].batch_size == 3
    plan = plan_devices("cpu", config={"cpu": {"workers": 8, "batch_size": 2}})
    assert len(plan) == 8 and plan[0].threads == 2 and plan[0].batch_size == 2
    with pytest.raises(ValueError, match="fp16"):
        plan_devices("cpu", precision="fp16")


def test_bad_config_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gpu\n")
    with pytest.raises(ValueError, match=r"bad\.toml.*not valid TOML"):
        load_config(bad)
    bad.write_text('[gpu]\nprecision = "int4"\n')
    with pytest.raises(ValueError, match="precision"):
        load_config(bad)
    bad.write_text("[gpus]\nbatch_size = 3\n")
    with pytest.raises(ValueError, match="unknown section"):
        load_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    assert load_config(None) == {}


def test_describe_devices_lists_cpu() -> None:
    devs = hardware.describe_devices()
    assert devs[0]["device"] == "cpu" and devs[0]["cores"] >= 1
    for d in devs[1:]:
        assert d["device"].startswith("cuda:") and d["memory_bytes"] > 0


def test_plan_gpu_workers_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker process per GPU, reading and decoding in a child process of its own; without that
    child (decode_process = false), big cards on hosts with the cores for it get two worker processes
    each (they fill each other's host-side gaps); small cards or few cores get one; config and CLI
    override; names stay unique."""
    from facefleet.engine.runner import worker_names

    _fake_gpus(
        monkeypatch, [GpuSpec("NVIDIA H200", 141 * GIB, (9, 0)), GpuSpec("Tesla T4", 15 * GIB, (7, 5))]
    )
    monkeypatch.setattr(hardware, "cpu_count", lambda: 32)
    plan = plan_devices("all")
    assert [p.device for p in plan] == ["cuda:0", "cuda:1"] and all(p.decode_process for p in plan)
    threads = {"gpu": {"decode_process": False}}
    plan = plan_devices("all", config=threads)
    assert [p.device for p in plan] == ["cuda:0", "cuda:0", "cuda:1"]
    assert worker_names(plan) == ["gpu0", "gpu0.1", "gpu1"] and not any(p.decode_process for p in plan)
    monkeypatch.setattr(hardware, "cpu_count", lambda: 8)  # 8 cores for 2 GPUs: one worker each
    assert [p.device for p in plan_devices("all", config=threads)] == ["cuda:0", "cuda:1"]
    assert not plan_devices("cpu")[0].decode_process  # CPU workers: threads unless [cpu] says so
    assert plan_devices("cpu", config={"cpu": {"decode_process": True}})[0].decode_process
    with pytest.raises(ValueError, match="decode_process must be true or false"):
        plan_devices("0", config={"gpu": {"decode_process": "yes"}})
    assert [p.device for p in plan_devices("0", config={"gpu": {"workers": 3}})] == ["cuda:0"] * 3
    assert [p.device for p in plan_devices("0,1", gpu_workers=2)] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert worker_names(plan_devices("1", gpu_workers=3)) == ["gpu1", "gpu1.1", "gpu1.2"]
    with pytest.raises(ValueError, match="workers per GPU"):
        plan_devices("0", gpu_workers=-1)
