"""facefleet.config: the dataclasses are the one source of defaults, checks, TOML keys and flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from facefleet.config import (
    ConfigError,
    CpuConfig,
    GpuConfig,
    JobConfig,
    ModelConfig,
    QueueConfig,
    RunConfig,
    VideoConfig,
    add_config_arguments,
    config_from_args,
    flag_name,
    from_mapping,
    load_file,
)
from facefleet.config.fields import config_fields
from facefleet.config.flags import all_keys

SECTIONS = (ModelConfig, GpuConfig, CpuConfig, RunConfig, QueueConfig, VideoConfig)


def _parse(argv: list[str], base: JobConfig | None = None) -> JobConfig:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv), base)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RunConfig(unit_size=0), "run.unit_size must be >= 1, got 0"),
        (lambda: ModelConfig(refine=-1), "model.refine must be >= 0, got -1"),
        (lambda: ModelConfig(min_score=1.5), "model.min_score must be <= 1, got 1.5"),
        (
            lambda: ModelConfig(detector="tiny"),
            "model.detector must be one of combined, blazeface, centerface, auto, short, full, got 'tiny'",
        ),
        (lambda: GpuConfig(precision="int4"), "gpu.precision must be one of fp32, fp16, bf16, got 'int4'"),
        (lambda: GpuConfig(batch_size=True), "gpu.batch_size must be an integer, got True"),
        (lambda: CpuConfig(runtime="onnx"), "cpu.runtime must be one of"),
        (
            lambda: RunConfig(formats=("json", "ply")),
            "run.formats must be one of json, obj, glb, png, overlay, got 'ply'",
        ),
        (lambda: RunConfig(lease_seconds=0), "run.lease_seconds must be > 0"),
        (lambda: RunConfig(reconstructor="mymodule"), "run.reconstructor must be MODULE:CALLABLE"),
        (lambda: QueueConfig(url="redis://h"), "queue.url must be a path, sqlite:///PATH or postgresql://"),
    ],
)
def test_invalid_values_name_the_key(make: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        make()  # type: ignore[operator]
    assert message in str(e.value)


def test_configs_are_frozen_and_every_field_documented() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().unit_size = 3  # type: ignore[misc]
    for cls in (*SECTIONS, JobConfig):
        for f in config_fields(cls):
            assert len(f.metadata["help"]) > 15, f"{cls.__name__}.{f.name}"
    assert {f.name for f in config_fields(ModelConfig)} == {
        "family", "detector", "blazeface", "centerface_score", "centerface_max_side", "small_face", "refine",
        "max_faces", "min_score", "min_presence", "max_tiles",
    }  # fmt: skip


def test_toml_sections_map_to_the_dataclasses(tmp_path: Path) -> None:
    f = tmp_path / "ff.toml"
    f.write_text(
        'devices = "cpu"\n[model]\nfamily = "mediapipe478"\nrefine = 1\n[run]\nunit_size = 64\n'
        'formats = ["json", "glb"]\n[gpu]\nbatch_size = 32\n[gpu."T4"]\nbatch_size = 8\n'
        '[cpu]\nworkers = 3\n[queue]\nurl = "postgresql://db/x"\n'
    )
    cfg = load_file(f)
    assert cfg.devices == "cpu" and cfg.model == ModelConfig(family="mediapipe478", refine=1)
    assert cfg.run.unit_size == 64 and cfg.run.formats == ("json", "glb") and cfg.cpu.workers == 3
    assert cfg.gpu.batch_size == 32 and cfg.gpu.for_gpu("Tesla T4").batch_size == 8
    assert cfg.gpu.for_gpu("NVIDIA H100").batch_size == 32 and cfg.queue.url == "postgresql://db/x"
    assert from_mapping(cfg.to_dict()) == cfg  # the dict form is TOML-shaped and complete


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[run]\nunit_sise = 3\n", "unknown key run.unit_sise"),
        ("[gpus]\nbatch_size = 3\n", "unknown section 'gpus'"),
        ("colour = 3\n", "unknown key 'colour'"),
        ('[gpu."T4"]\nprecison = "fp16"\n', 'unknown key gpu."T4".precison'),
        ("[model]\nrefine = -1\n", "model.refine must be >= 0, got -1"),
        ('[run]\nunit_size = "64"\n', "run.unit_size must be an integer, got '64'"),
        ("[run\n", "is not valid TOML"),
    ],
)
def test_bad_files_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_file(f)
    assert message in str(e.value) and str(f) in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "missing.toml")


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "ff.toml"
    f.write_text(
        '[run]\nunit_size = 64\nmax_attempts = 5\n[gpu]\ncompile = false\n[gpu."T4"]\nbatch_size = 8\n'
    )
    cfg = _parse(["--config", str(f), "--unit-size", "8"])
    assert (cfg.run.unit_size, cfg.run.max_attempts, cfg.run.lease_seconds) == (8, 5, 30.0)
    assert cfg.gpu.compile is False and _parse(["--config", str(f), "--gpu-compile"]).gpu.compile is True
    # a flag beats the file's per-GPU tables too; the full flag beats its short form
    cfg = _parse(["--config", str(f), "--batch-size", "4"])
    assert cfg.gpu.for_gpu("Tesla T4").batch_size == 4 and cfg.cpu.batch_size == 4
    cfg = _parse(["--batch-size", "4", "--gpu-batch-size", "6", "--workers", "3"])
    assert (cfg.gpu.batch_size, cfg.cpu.batch_size, cfg.cpu.workers) == (6, 4, 3)
    assert _parse(["--formats", "glb,json,glb"]).run.formats == ("glb", "json")
    assert _parse([], JobConfig(run=RunConfig(formats=("obj",)))).run.formats == ("obj",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: gpu.batch_size must be >= 1, got 0"),
        (["--refine", "-1"], "argument --refine: model.refine must be >= 0, got -1"),
        (["--unit-size", "x"], "argument --unit-size: run.unit_size must be an integer, got 'x'"),
        (["--precision", "fp8"], "argument --precision: gpu.precision must be one of"),
        (["--formats", "json,ply"], "argument --formats: run.formats must be one of"),
    ],
)
def test_bad_flags_exit_2_naming_the_key(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = argparse.ArgumentParser(prog="t")
    add_config_arguments(p)
    with pytest.raises(SystemExit) as e:
        p.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_every_field_is_a_flag_with_its_help() -> None:
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    by_flag = {s: a for a in p._actions for s in a.option_strings}
    for key in all_keys():
        section, _, name = key.rpartition(".")
        cls = {"": JobConfig, **{c.__name__.removesuffix("Config").lower(): c for c in SECTIONS}}[section]
        f = next(f for f in config_fields(cls) if f.name == name)
        action = by_flag[flag_name(key)]
        assert f.metadata["help"].replace("%", "%%") in (action.help or ""), key
        if f.type in ("bool", "bool | None"):
            assert "--no-" + flag_name(key)[2:] in by_flag, key
    assert flag_name("gpu.batch_size") == "--gpu-batch-size" and flag_name("run.unit_size") == "--unit-size"
    assert flag_name("queue.url") == "--queue" and "--gpu-by-name" not in by_flag


def test_settings_reference_is_current() -> None:
    """docs/config.md is rendered from the dataclasses (python -m facefleet.config.reference)."""
    from facefleet.config.reference import markdown

    doc = Path(__file__).parent.parent / "docs" / "config.md"
    assert doc.read_text() == markdown(), "regenerate: python -m facefleet.config.reference > docs/config.md"
    for key in all_keys():
        assert f"`{flag_name(key)}`" in doc.read_text(), key


def test_load_config_gives_settings_mappings_for_old_callers(tmp_path: Path) -> None:
    """Callers still on settings mappings get a file's checked tables, or a JobConfig's set values."""
    from facefleet.config import load_config

    f = tmp_path / "ff.toml"
    f.write_text('[gpu]\nbatch_size = 8\n[gpu."T4"]\ncompile = false\n')
    assert load_config(f) == {"gpu": {"batch_size": 8, "T4": {"compile": False}}}
    assert load_config(None) == {}
    d = load_config(JobConfig(run=RunConfig(unit_size=64), devices="cpu"))
    assert d["run"]["unit_size"] == 64 and "batch_size" not in d["gpu"] and d["devices"] == "cpu"
    assert from_mapping(d) == JobConfig(run=RunConfig(unit_size=64), devices="cpu")
