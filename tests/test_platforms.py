"""facefleet.platforms: GPU profiles, device parsing, CPU defaults and device plans (on made-up hosts:
no GPU is needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.config import ConfigError, JobConfig, load_file
from facefleet.platforms import (
    GpuSpec,
    HostInfo,
    describe_devices,
    gpu_profile,
    parse_devices,
    plan_cpu_workers,
    plan_devices,
    plan_job_devices,
)

GIB = 1 << 30
H100 = GpuSpec("NVIDIA H100", 80 * GIB, (9, 0))
H200 = GpuSpec("NVIDIA H200", 141 * GIB, (9, 0))
T4 = GpuSpec("Tesla T4", 15 * GIB, (7, 5))


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


def test_parse_devices_without_gpu() -> None:
    assert parse_devices("auto", 0) == ["cpu"]
    assert parse_devices("cpu", 0) == ["cpu"]
    with pytest.raises(ValueError, match="no CUDA device"):
        parse_devices("all", 0)
    with pytest.raises(ValueError, match="GPU 0 does not exist"):
        parse_devices("0", 0)
    with pytest.raises(ValueError, match="expected"):
        parse_devices("fast", 0)


def test_parse_devices_with_gpus() -> None:
    assert parse_devices("all", 4) == [f"cuda:{i}" for i in range(4)]
    assert parse_devices("2,0,2", 4) == ["cuda:2", "cuda:0"]
    assert parse_devices("cuda:1", 4) == ["cuda:1"]


def _host(*gpus: GpuSpec, cores: int = 4) -> HostInfo:
    return HostInfo(cores, tuple(gpus), "test cpu")


def test_plan_heterogeneous_gpus_and_overrides(tmp_path: Path) -> None:
    host = _host(H100, T4)  # 4 cores: too few for two workers per GPU
    plan = plan_devices("all", host=host)
    assert [(p.device, p.batch_size, p.precision, p.decoder, p.source) for p in plan] == [
        ("cuda:0", 128, "fp16", "auto", "builtin"),
        ("cuda:1", 32, "fp16", "auto", "builtin"),
    ]
    cfg_file = tmp_path / "ff.toml"
    cfg_file.write_text('[gpu]\nprecision = "bf16"\n[gpu."T4"]\nbatch_size = 8\nprecision = "fp16"\n')
    cfg = load_file(cfg_file)
    plan = plan_devices("all", config=cfg, host=host)
    assert [(p.batch_size, p.precision, p.source) for p in plan] == [
        (128, "bf16", "config"),
        (8, "fp16", "config"),
    ]
    decoders = {p.decoder for p in plan_devices("all", config={"gpu": {"decoder": "nvjpeg"}}, host=host)}
    assert decoders == {"nvjpeg"}
    with pytest.raises(ValueError, match=r"gpu\.decoder must be one of"):
        plan_devices("all", config={"gpu": {"decoder": "libjpeg"}}, host=host)
    plan = plan_devices("1", config=cfg, batch_size=4, host=host)  # flags beat the file's GPU tables
    assert [(p.device, p.batch_size, p.precision, p.source) for p in plan] == [("cuda:1", 4, "fp16", "cli")]
    # device-memory settings per GPU name too
    cfg_file.write_text(
        '[gpu]\ndecode_chunk = 16\ndecode_threads = 2\n[gpu."T4"]\nbatches_in_flight = 1\ndecode_chunk = 8\n'
    )
    plan = plan_devices("all", config=load_file(cfg_file), host=host)
    # the decoder process decodes straight into its slots: three by default (the third is decoded ahead)
    assert [(p.batches_in_flight, p.decode_chunk, p.decode_threads) for p in plan] == [(3, 16, 2), (1, 8, 2)]
    threads_cfg = {"gpu": {"decode_process": False}}
    assert [p.batches_in_flight for p in plan_devices("all", config=threads_cfg, host=host)] == [2, 2]
    assert [p.decode_threads for p in plan_devices("all", host=host)] == [2, 2]
    assert [p.decode_threads for p in plan_devices("all", config=threads_cfg, host=host)] == [1, 1]
    with pytest.raises(ValueError, match=r"gpu\.decode_threads must be >= 1"):
        plan_devices("all", config={"gpu": {"decode_threads": 0}}, host=host)
    # nvImageCodec's backends (the JPEG engine first, the host's cores for 15 %) and host threads
    cfg_file.write_text('[gpu]\ndecode_backends = "hw:0.85,cpu"\ndecode_cpu_threads = 8\n')
    plan = plan_devices("all", config=load_file(cfg_file), host=host)
    assert {(p.decode_backends, p.decode_cpu_threads) for p in plan} == {("hw:0.85,cpu", 8)}
    assert {p.decode_backends for p in plan_devices("all", host=host)} == {"auto"}
    for bad, match in (("hw:2", "share must be in"), ("nvjpg", "unknown JPEG decoder"), ("hw:x", "share")):
        cfg_file.write_text(f'[gpu]\ndecode_backends = "{bad}"\n')
        with pytest.raises(ConfigError, match=rf"ff\.toml: gpu\.decode_backends is invalid.*{match}"):
            load_file(cfg_file)
    with pytest.raises(ValueError, match="decode_cpu_threads"):
        plan_devices("all", config={"gpu": {"decode_cpu_threads": -1}}, host=host)
    # torch.compile's fused kernels: on by default, off per card or everywhere, a boolean only
    assert [p.compile for p in plan] == [True, True]
    cfg_file.write_text('[gpu."T4"]\ncompile = false\n')
    assert [p.compile for p in plan_devices("all", config=load_file(cfg_file), host=host)] == [True, False]
    cfg_file.write_text('[gpu]\ncompile = "no"\n')
    with pytest.raises(ConfigError, match=r"ff\.toml: gpu\.compile must be true or false"):
        load_file(cfg_file)
    cfg_file.write_text('[gpu."T4"]\nbatch_sise = 8\n')
    with pytest.raises(ConfigError, match=r'ff\.toml: unknown key gpu\."T4"\.batch_sise'):
        load_file(cfg_file)


def test_cpu_defaults_use_every_core() -> None:
    """Without settings every core is used, by equal workers; memory and MAX_CPU_WORKERS cap the
    processes (more threads each); the config's workers / threads win."""
    assert plan_cpu_workers(2, memory=None) == (2, 1)  # this development box: 2 workers beat 1 x 2 threads
    assert [p.threads for p in plan_devices("cpu", host=_host(cores=2))] == [1, 1]
    assert [p.threads for p in plan_devices("cpu", host=HostInfo(2, memory_bytes=GIB))] == [2]  # room for one
    assert plan_cpu_workers(1, memory=None) == (1, 1)
    assert plan_cpu_workers(6, memory=None) == (6, 1)
    assert plan_cpu_workers(64, memory=None) == (16, 4)
    assert plan_cpu_workers(24, memory=None) == (12, 2)  # a divisor of 24 within 16 workers
    assert plan_cpu_workers(8, memory=3 * GIB) == (2, 4)  # room for 3 workers: 2 divide the cores
    assert plan_cpu_workers(16, workers=2, memory=None) == (2, 8)
    assert plan_cpu_workers(16, threads=8, memory=None) == (2, 8)
    assert plan_cpu_workers(16, workers=3, threads=2, memory=None) == (3, 2)
    for cores in range(1, 40):
        w, t = plan_cpu_workers(cores, memory=None)
        assert w * t == cores, cores


def test_plan_cpu_workers_and_threads() -> None:
    host = _host(cores=16)
    plan = plan_devices("cpu", config=JobConfig(), host=host)
    assert {(p.device, p.threads, p.precision, p.runtime) for p in plan} == {
        ("cpu", 16 // len(plan), "fp32", "auto")
    }
    assert sum(p.threads for p in plan) == 16
    plan = plan_devices("auto", cpu_workers=2, batch_size=3, host=host)
    assert len(plan) == 2 and plan[0].threads == 8 and plan[0].batch_size == 3 and plan[0].source == "cli"
    plan = plan_devices("cpu", config={"cpu": {"workers": 8, "batch_size": 2}}, host=host)
    assert len(plan) == 8 and plan[0].threads == 2 and plan[0].batch_size == 2 and plan[0].source == "config"
    with pytest.raises(ConfigError, match=r"cpu\.precision: fp16 is not supported"):
        plan_devices("cpu", precision="fp16", host=host)
    # --precision fp16 is for the GPUs: a GPU host plans no CPU worker with it
    assert {p.precision for p in plan_devices("auto", precision="fp16", host=_host(T4))} == {"fp16"}


def test_plan_job_devices_takes_the_typed_config(tmp_path: Path) -> None:
    cfg_file = tmp_path / "ff.toml"
    cfg_file.write_text('devices = "0"\n[gpu]\nbatch_size = 32\nworkers = 2\n')
    plan = plan_job_devices(load_file(cfg_file), _host(H100, T4))
    assert [(p.device, p.batch_size) for p in plan] == [("cuda:0", 32), ("cuda:0", 32)]
    # the engine's default devices="auto" leaves the config's choice; others win over it
    assert [p.device for p in plan_devices("auto", config=load_file(cfg_file), host=_host(H100, T4))] == [
        "cuda:0"
    ] * 2
    assert [p.device for p in plan_devices("1", config=load_file(cfg_file), host=_host(H100, T4))] == [
        "cuda:1"
    ] * 2
    assert {p.device for p in plan_devices("auto", config=JobConfig(devices="cpu"), host=_host(T4))} == {
        "cpu"
    }


def test_describe_devices_lists_cpu() -> None:
    devs = describe_devices()
    assert devs[0]["device"] == "cpu" and devs[0]["cores"] >= 1
    for d in devs[1:]:
        assert d["device"].startswith("cuda:") and d["memory_bytes"] > 0


def test_plan_gpu_workers_per_gpu() -> None:
    """One worker process per GPU, reading and decoding in a child process of its own; without that
    child (decode_process = false), big cards on hosts with the cores for it get two worker processes
    each (they fill each other's host-side gaps); small cards or few cores get one; config and CLI
    override; names stay unique."""
    from facefleet.platforms.plan import worker_names

    host = _host(H200, T4, cores=32)
    plan = plan_devices("all", host=host)
    assert [p.device for p in plan] == ["cuda:0", "cuda:1"] and all(p.decode_process for p in plan)
    threads = {"gpu": {"decode_process": False}}
    plan = plan_devices("all", config=threads, host=host)
    assert [p.device for p in plan] == ["cuda:0", "cuda:0", "cuda:1"]
    assert worker_names(plan) == ["gpu0", "gpu0.1", "gpu1"] and not any(p.decode_process for p in plan)
    few = _host(H200, T4, cores=8)  # 8 cores for 2 GPUs: one worker each
    assert [p.device for p in plan_devices("all", config=threads, host=few)] == ["cuda:0", "cuda:1"]
    assert not plan_devices("cpu", host=host)[0].decode_process  # CPU workers: threads unless [cpu] says so
    assert plan_devices("cpu", config={"cpu": {"decode_process": True}}, host=host)[0].decode_process
    with pytest.raises(ValueError, match=r"gpu\.decode_process must be true or false"):
        plan_devices("0", config={"gpu": {"decode_process": "yes"}}, host=host)
    assert [p.device for p in plan_devices("0", config={"gpu": {"workers": 3}}, host=host)] == ["cuda:0"] * 3
    two = plan_devices("0,1", gpu_workers=2, host=host)
    assert [p.device for p in two] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert worker_names(plan_devices("1", gpu_workers=3, host=host)) == ["gpu1", "gpu1.1", "gpu1.2"]
    with pytest.raises(ValueError, match=r"gpu\.workers must be >= 1"):
        plan_devices("0", gpu_workers=-1, host=host)


def test_compile_cache_is_keyed_by_gpu_and_torch(tmp_path: Path) -> None:
    from facefleet.platforms import compile_cache_dir, compile_env

    h200 = compile_cache_dir(tmp_path, H200, "2.13.0+cu128")
    assert h200 == tmp_path / "inductor" / "h200-sm90-torch2.13.0-cu128"
    assert compile_cache_dir(tmp_path, H100, "2.13.0+cu128") != h200  # another GPU
    assert compile_cache_dir(tmp_path, H200, "2.14.0+cu128") != h200  # another torch
    assert compile_env(tmp_path, None, "2.13.0+cpu")["TORCHINDUCTOR_CACHE_DIR"].endswith(
        "cpu-torch2.13.0-cpu"
    )


def test_warm_stamp_decides_pool_and_artifacts(tmp_path: Path) -> None:
    """A worker finding the stamp of its own facefleet version compiles in-process and skips the
    artifacts file; another version's stamp, a damaged one or none means a cold cache."""
    from facefleet.platforms import (
        cold_compile_threads,
        compile_cache_warm,
        compile_env,
        mark_compile_cache_warm,
    )

    folder = tmp_path / "inductor" / "h200-sm90-torch2.11.0"
    assert not compile_cache_warm(folder, "0.1.0")
    assert mark_compile_cache_warm(folder, "0.1.0")
    assert compile_cache_warm(folder, "0.1.0") and not compile_cache_warm(folder, "0.2.0")
    assert [p.name for p in folder.iterdir()] == ["warm.json"]  # no temporary file left
    (folder / "warm.json").write_text("{not json")
    assert not compile_cache_warm(folder, "0.1.0")
    (folder / "warm.json").write_text("[1, 2]")
    assert not compile_cache_warm(folder, "0.1.0")
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert not mark_compile_cache_warm(blocked / "sub", "0.1.0")  # unwritable: no exception
    assert cold_compile_threads(16, 1) == 16 and cold_compile_threads(128, 8) == 16
    assert cold_compile_threads(64, 8) == 8 and cold_compile_threads(2, 4) == 1
    assert compile_env(tmp_path, None, "2.11.0", compile_threads=0)["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    assert compile_env(tmp_path, None, "2.11.0", compile_threads=12)["TORCHINDUCTOR_COMPILE_THREADS"] == "12"
