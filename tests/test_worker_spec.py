"""The typed settings' way to a worker: JobConfig -> JobPlan -> WorkerSpec -> JSON -> the worker
process's WorkerSpec -> the Reconstructor's parameters; and the external worker's way, from run.json's
``settings``. CPU only, no pipeline built (the Reconstructor is a recorder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from facefleet.config import ConfigError, JobConfig, ModelConfig, RunConfig
from facefleet.engine.engine import Job, RunOptions, plan_job
from facefleet.engine.layout import record_settings
from facefleet.engine.worker.cli import plan_host
from facefleet.engine.worker.spec import SPEC_VERSION, WorkerSpec
from facefleet.platforms import DeviceProfile

H200 = DeviceProfile("cuda:0", "NVIDIA H200", 128, "fp16", "auto", 4, capability=(9, 0), compile=True)


def _input(tmp_path: Path) -> Path:
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inp / "a.png")
    return inp


def _recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import facefleet.pipeline

    seen: dict[str, Any] = {}
    monkeypatch.setattr(facefleet.pipeline, "Reconstructor", lambda **kw: seen.update(kw))
    return seen


def test_a_spec_survives_its_json_unchanged() -> None:
    spec = WorkerSpec(
        "gpu0", "/out", H200,
        model=ModelConfig(family="mediapipe478", refine=0, max_tiles=4),
        run=RunConfig(formats=("json", "glb"), max_file_bytes=1000, writers=3, reconstructor="m:f"),
        input_root="/in", queue_url="postgresql://h/db", coordinator_pid=12,
        reconstructor_args=(("delay", 0.5),),
    )  # fmt: skip
    text = spec.to_json()
    assert json.loads(text)["version"] == SPEC_VERSION
    assert WorkerSpec.from_json(text) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=SPEC_VERSION + 1), "this facefleet reads version"),
        (lambda d: d.update(extra=1), "unknown keys ['extra']"),
        (lambda d: d.pop("run"), "missing keys ['run']"),
        (lambda d: d["run"].update(max_attempts=0), "run.max_attempts must be >= 1"),
        (lambda d: d["model"].update(max_tiles=0), "model.max_tiles must be >= 1"),
        (lambda d: d["model"].update(refien=1), "unknown key model.refien"),
        (lambda d: d["profile"].update(batch_size="8"), "batch_size has the wrong type"),
        (lambda d: d["profile"].update(capability=[9]), "capability must be [major, minor]"),
        (lambda d: d.update(readers=True), "readers has the wrong type"),
    ],
)
def test_a_spec_is_checked_on_load(change: Any, message: str) -> None:
    data = json.loads(WorkerSpec("gpu0", "/out", H200).to_json())
    change(data)
    with pytest.raises(ConfigError) as info:
        WorkerSpec.from_json(json.dumps(data))
    assert message in str(info.value)


def test_reconstructor_arguments_need_a_custom_reconstructor() -> None:
    with pytest.raises(ConfigError, match=r"custom run\.reconstructor"):
        WorkerSpec("c0", "/out", H200, reconstructor_args=(("compiled", False),))


def test_model_settings_travel_from_the_job_to_the_reconstructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[model] refine`` and ``max_tiles``, ``[run] texture_size`` and ``[gpu] batch_size`` of a
    job's config reach the worker process's pipeline through the plan and the spec's JSON."""
    from facefleet.engine.worker.build import make_reconstructor

    cfg = JobConfig(devices="cpu", model=ModelConfig(refine=0, max_tiles=3), run=RunConfig(texture_size=256))
    plan, _ = plan_job("j", Job.from_config(str(_input(tmp_path)), tmp_path / "out", cfg, batch_size=5))
    spec = WorkerSpec.from_json(plan.worker_spec("cpu0", plan.profiles[0]).to_json())
    assert spec.model == cfg.model and spec.profile.batch_size == 5 and spec.run.unit_size == 256
    seen = _recorded(monkeypatch)
    make_reconstructor(spec, "cpu")
    assert seen["refine"] == 0 and seen["max_tiles"] == 3 and seen["texture_size"] == 256
    assert seen["runtime"] == spec.profile.runtime and seen["threads"] == spec.profile.threads
    assert plan.record["model"] == {"refine": 0, "max_tiles": 3}  # run.json: what the job set


def test_python_api_options_override_the_config_and_refuse_bad_values(tmp_path: Path) -> None:
    inp = str(_input(tmp_path))
    cfg = JobConfig(devices="cpu", run=RunConfig(lease_seconds=9.0, formats=("json",)))
    opts = RunOptions(config=cfg, formats="glb,json", max_attempts=7, model={"max_tiles": 2})
    plan, _ = plan_job("j", Job(inp, tmp_path / "out", opts))
    r = plan.config.run
    assert (r.lease_seconds, r.max_attempts, r.formats) == (9.0, 7, ("glb", "json"))
    assert plan.config.model.max_tiles == 2
    from facefleet.engine.layout import EngineError

    with pytest.raises(EngineError, match=r"model\.max_tiles must be >= 1"):
        plan_job("j", Job(inp, tmp_path / "o2", RunOptions(devices="cpu", model={"max_tiles": 0})))
    with pytest.raises(EngineError, match="need a custom reconstructor"):
        plan_job("j", Job(inp, tmp_path / "o3", RunOptions(devices="cpu", reconstructor_kwargs={"x": 1})))


def test_an_external_host_takes_the_runs_settings_and_its_own(tmp_path: Path) -> None:
    """``facefleet worker``: [model] and [run] from run.json's ``settings`` (file cap included, so every
    host refuses the same files), writers and file processes from the host's own config."""
    cfg = JobConfig(
        devices="cpu",
        model=ModelConfig(detector="short", max_tiles=5),
        run=RunConfig(max_file_bytes=4096, lease_seconds=7.0, formats=("json",), writers=9),
    )
    plan, _ = plan_job("j", Job.from_config(str(_input(tmp_path)), tmp_path / "out", cfg))
    host_cfg = tmp_path / "host.toml"
    host_cfg.write_text("[cpu]\nworkers = 2\nthreads = 1\n[run]\nwriters = 3\nmax_file_bytes = 99\n")
    record = json.loads(json.dumps(plan.record))  # as a host reads it back
    host = plan_host(record, str(tmp_path / "out"), "q.sqlite", "cpu", str(host_cfg), "h1", None)
    assert len(host.specs) == 2 and host.specs[0].name == "h1/cpu0"
    spec = WorkerSpec.from_json(host.specs[1].to_json())
    assert spec.model == cfg.model and spec.coordinator_pid is None and spec.queue_url == "q.sqlite"
    assert (spec.run.max_file_bytes, spec.run.lease_seconds, spec.run.formats) == (4096, 7.0, ("json",))
    assert spec.run.writers == 3


def test_a_record_without_settings_gives_its_legacy_keys(tmp_path: Path) -> None:
    """A run.json written before runs recorded their ``settings`` (or a hand-made queue record)."""
    record = {"model": {"refine": 1}, "formats": ["json"], "lease_seconds": 4, "reconstructor": "m:f"}
    model, run = record_settings(record, JobConfig(run=RunConfig(max_file_bytes=77)))
    assert model == ModelConfig(refine=1) and run.formats == ("json",) and run.lease_seconds == 4
    assert run.reconstructor == "m:f" and run.max_file_bytes == 77
    with pytest.raises(ConfigError, match=r"run\.json settings version 9"):
        record_settings({"settings": {"version": 9}}, JobConfig())
    bad = {"settings": {"version": 1, "model": {"refine": -1}, "run": {}}}
    with pytest.raises(ConfigError, match=r"model\.refine must be >= 0"):
        record_settings(bad, JobConfig())


def test_eager_start_is_off_for_a_custom_reconstructor() -> None:
    from facefleet.engine.worker.startup import eager_start

    p = dataclasses.replace(H200, eager_start=True, decode_process=True)
    assert eager_start(WorkerSpec("g0", "/out", p), "cuda:0")
    assert not eager_start(WorkerSpec("g0", "/out", p, run=RunConfig(reconstructor="m:f")), "cuda:0")
