"""A GPU worker's start-up: eager networks first, the compiled ones built on a background thread and
switched to between batches; torch's compile artifacts kept per GPU and torch version."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facefleet.config import RunConfig
from facefleet.engine.worker import Worker, WorkerSpec
from facefleet.engine.worker.startup import BackgroundCompile, compile_folder, eager_start, gpu_of
from facefleet.platforms import DeviceProfile, load_compile_artifacts, save_compile_artifacts
from facefleet.types import ImageResult

H200 = DeviceProfile(
    "cuda:0", "NVIDIA H200", 128, "fp16", "auto", 4, memory_bytes=150 << 30, compile=True,
    decode_process=True, capability=(9, 0), eager_start=True,
)  # fmt: skip


class _Rec:
    """A reconstructor that names itself in its results and counts its warm-ups."""

    def __init__(self, name: str, fail_warmup: bool = False) -> None:
        self.name = name
        self.fail_warmup = fail_warmup
        self.warmups = 0
        self.precompiled_on: str | None = None

    def precompile(self) -> None:
        self.precompiled_on = threading.current_thread().name

    def warmup(self) -> None:
        self.warmups += 1
        if self.fail_warmup:
            raise RuntimeError("CUDA graph capture failed\ndetails")

    def reconstruct_tensors(self, images: list[Any], sources: list[str], **_: Any) -> list[ImageResult]:
        return [ImageResult(s, 1, 1, error=self.name) for s in sources]


class _Events:
    """A queue's event log."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []

    def add_event(self, kind: str, data: dict[str, Any]) -> None:
        self.got.append((kind, data))


def _worker(tmp_path: Path, rec: Any) -> Worker:
    spec = WorkerSpec("g0", str(tmp_path), DeviceProfile("cpu", "cpu", 4, "fp32", "cpu", 1))
    w = Worker(spec, reconstructor=rec)
    w.device = torch.device("cpu")
    return w


def _run(w: Worker) -> str | None:
    return w._infer([torch.zeros(3, 2, 2)], ["a.jpg"], None)[0].error


def test_compiled_networks_take_over_between_batches_once_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compiled = _Rec("compiled")
    gate = threading.Event()

    def build() -> _Rec:
        gate.wait(10)
        return compiled

    w = _worker(tmp_path, _Rec("eager"))
    w._queue = events = _Events()
    w._first_batch_s = 1.5
    w._compiling = BackgroundCompile(build, "cpu").start()
    w._take_compiled()  # still building: the eager networks go on
    assert _run(w) == "eager" and w._compiling is not None
    gate.set()
    assert w._compiling.wait(10)
    w._eager_batches = 3
    w._take_compiled()
    assert _run(w) == "compiled" and w._compiling is None
    assert compiled.precompiled_on == "compile"  # built on the background thread
    assert compiled.warmups == 1  # its CUDA graphs are captured on the networks' thread, at the switch
    err = capsys.readouterr().err
    assert "compiled networks took over" in err and "after 3 batches on eager networks" in err
    ((kind, data),) = events.got  # the start-up, in the run's event log
    assert kind == "worker_startup" and data["first_batch_s"] == 1.5 and data["eager_batches"] == 3
    assert data["compiled_s"] is not None and data["compiled_s"] > 0 and data["error"] is None


def test_a_failed_build_leaves_the_worker_on_eager_networks_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def build() -> _Rec:
        raise RuntimeError("triton: no compiler\nlong traceback text")

    w = _worker(tmp_path, _Rec("eager"))
    w._queue = events = _Events()
    w._compiling = BackgroundCompile(build, "cpu").start()
    assert w._compiling.wait(10)
    w._take_compiled()
    w._take_compiled()  # asked again later: nothing more happens
    ((_, data),) = events.got
    assert data["compiled_s"] is None and data["error"] == "RuntimeError: triton: no compiler"
    assert _run(w) == "eager" and w._compiling is None
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(lines) == 1
    assert "warning: compiling the networks failed (RuntimeError: triton: no compiler)" in lines[0]


def test_a_failed_capture_leaves_the_worker_on_eager_networks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = _worker(tmp_path, _Rec("eager"))
    w._compiling = BackgroundCompile(lambda: _Rec("compiled", fail_warmup=True), "cpu").start()
    assert w._compiling.wait(10)
    w._take_compiled()
    assert _run(w) == "eager"
    assert (
        "capturing compiled networks failed (RuntimeError: CUDA graph capture failed)"
        in capsys.readouterr().err
    )


def test_a_broken_device_at_the_switch_ends_the_worker(tmp_path: Path) -> None:
    class _Broken(_Rec):
        def warmup(self) -> None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    w = _worker(tmp_path, _Rec("eager"))
    w._compiling = BackgroundCompile(lambda: _Broken("compiled"), "cpu").start()
    assert w._compiling.wait(10)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        w._take_compiled()


def test_eager_start_only_where_the_switch_is_safe() -> None:
    spec = WorkerSpec("g0", "/out", H200)
    assert eager_start(spec, "cuda:0")
    off = [
        dataclasses.replace(H200, eager_start=False),  # [gpu] eager_start = false
        dataclasses.replace(H200, compile=False),  # nothing to build
        dataclasses.replace(H200, decode_process=False),  # decoder threads would use the device
        dataclasses.replace(H200, network_threads=2),  # the switch is made by the one networks thread
    ]
    for p in off:
        assert not eager_start(WorkerSpec("g0", "/out", p), "cuda:0"), p
    assert not eager_start(spec, "cpu")
    assert not eager_start(dataclasses.replace(spec, run=RunConfig(reconstructor="m:f")), "cuda:0")
    assert not DeviceProfile("cuda:0", "x", 8, "fp16", "auto", 1).eager_start  # hand-made profiles: off


def test_gpu_eager_start_is_a_setting_that_reaches_the_profile() -> None:
    from facefleet.config import GpuConfig
    from facefleet.platforms.host import HostInfo
    from facefleet.platforms.plan import _gpu_profiles

    gpu = gpu_of(WorkerSpec("g0", "/out", H200))
    assert gpu is not None
    host = HostInfo(cores=16, gpus=(gpu,), memory_bytes=128 << 30)
    assert not _gpu_profiles(GpuConfig(), "cuda:0", host, 1, False)[0].eager_start  # off by default
    assert _gpu_profiles(GpuConfig(eager_start=True), "cuda:0", host, 1, False)[0].eager_start


def test_the_eager_reconstructor_has_no_compile_and_no_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    import facefleet.pipeline
    from facefleet.engine.worker.build import make_reconstructor

    made: list[tuple[dict[str, Any], list[bool]]] = []

    class _Fake:
        def __init__(self, **kw: Any) -> None:
            self.graphs: list[bool] = []
            made.append((kw, self.graphs))

        def use_cuda_graphs(self, enable: bool) -> None:
            self.graphs.append(enable)

    monkeypatch.setattr(facefleet.pipeline, "Reconstructor", _Fake)
    spec = WorkerSpec("g0", "/out", H200)
    make_reconstructor(spec, "cuda:0", eager=True)
    make_reconstructor(spec, "cuda:0")
    (eager_kw, eager_graphs), (kw, graphs) = made
    assert eager_kw["compiled"] is False and eager_graphs == [False]
    assert "compiled" not in kw and graphs == []  # the compiled one: as without eager start


def test_compile_folder_is_keyed_by_gpu_and_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACEFLEET_CACHE_DIR", str(tmp_path))
    folder = compile_folder(WorkerSpec("g0", "/out", H200))
    assert folder is not None and folder.parent == tmp_path / "inductor"
    assert folder.name.startswith("h200-sm90-torch") and "2." in folder.name
    assert compile_folder(WorkerSpec("c0", "/out", DeviceProfile("cpu", "cpu", 8, "fp32", "cpu", 1))) is None


def test_worker_process_keeps_compiled_code_in_the_facefleet_cache(tmp_path: Path) -> None:
    """worker_main sets torch.compile's cache folder before torch loads (a child process that stops
    right after: its environment is what the networks would compile under)."""
    import os
    import subprocess
    import sys

    code = (
        "import os\n"
        "import facefleet.engine.worker.main as m\n"
        "from facefleet.engine.worker.spec import WorkerSpec\n"
        "from tests.test_worker_startup import H200\n"
        "def stop(*a, **k):\n"
        "    print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'), flush=True)\n"
        "    raise SystemExit\n"
        "m.Worker = stop\n"
        "m.worker_main(WorkerSpec('g0', '/out', H200, coordinator_pid=os.getppid()).to_json())\n"
    )
    env = {**os.environ, "FACEFLEET_CACHE_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines and lines[-1].startswith(str(tmp_path / "inductor" / "h200-sm90-torch")), out.stderr[-2000:]


def test_compile_artifacts_saved_and_loaded_atomically(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch.compiler

    assert hasattr(torch.compiler, "save_cache_artifacts") and hasattr(torch.compiler, "load_cache_artifacts")
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"ARTIFACTS", object()))

    def load(data: bytes) -> object:
        loaded.append(data)
        return object()

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    folder = tmp_path / "inductor" / "key"
    assert not load_compile_artifacts(folder)  # nothing saved yet
    assert save_compile_artifacts(folder)
    assert [p.name for p in folder.iterdir()] == ["compile_artifacts.bin"]  # no temporary file left
    assert load_compile_artifacts(folder) and loaded == [b"ARTIFACTS"]
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda b: 1 / 0)  # damaged file
    assert not load_compile_artifacts(folder)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)  # nothing compiled
    assert not save_compile_artifacts(folder)
    monkeypatch.delattr(torch.compiler, "save_cache_artifacts")  # an older torch
    monkeypatch.delattr(torch.compiler, "load_cache_artifacts")
    assert not save_compile_artifacts(folder) and not load_compile_artifacts(folder)


class _CompiledDetector:
    """What the compiled reconstructor does on a GPU, on the CPU: the detector network's eager code
    through torch.compile, built by :class:`BackgroundCompile` on its thread."""

    def __init__(self) -> None:
        from facefleet.models import load_model

        self.net = load_model("face_detection_short_range", "cpu")  # a module object of its own
        self.fn: Any = None

    def precompile(self) -> None:
        self.fn = torch.compile(self.net._eager, dynamic=False)
        with torch.inference_mode():
            self.fn(torch.zeros(2, *self.net.input_shape))


@pytest.mark.slow
def test_compiled_network_built_on_a_thread_matches_the_eager_one_running_meanwhile(tmp_path: Path) -> None:
    """The race the eager start must not have: batches on the eager module while a separate copy
    compiles on the background thread; then the compiled outputs equal the eager ones (float32)."""
    from facefleet.models import load_model

    eager = load_model("face_detection_short_range", "cpu")
    x = torch.rand(2, *eager.input_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ref = eager(x)
    bg = BackgroundCompile(_CompiledDetector, "cpu", artifacts=tmp_path).start()
    runs = 0
    with torch.inference_mode():
        while not bg.done() or runs == 0:
            for a, b in zip(eager(x), ref, strict=True):
                assert torch.equal(a, b)  # the eager path is not disturbed by the compilation
            runs += 1
    built = bg.take()
    assert built is not None and built.error is None, built
    with torch.inference_mode():
        out = built.rec.fn(x)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "compile_artifacts.bin").is_file()  # saved after the build
    assert load_compile_artifacts(tmp_path)  # and torch takes them back (the next worker's start)


def test_a_worker_switching_reconstructors_mid_run_gives_the_same_faces(
    tmp_path: Path, astronaut: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real pipeline through the switch: the eager reconstructor (graphs off, every network its
    own module) answers the first batch, the one built on the background thread the next, with the
    same faces (on the CPU both run eager code: the plumbing, not the compiler, is under test)."""
    from facefleet.pipeline import Reconstructor

    eager = Reconstructor(device="cpu", runtime="torch", compiled=False).use_cuda_graphs(False)
    assert all(getattr(n, "cuda_graphs", False) is False for n in eager.networks())
    w = _worker(tmp_path, eager)
    w._compiling = BackgroundCompile(lambda: Reconstructor(device="cpu", runtime="torch"), "cpu").start()
    img = torch.from_numpy(astronaut).permute(2, 0, 1).contiguous()
    first = w._infer([img], ["a.jpg"], None)[0]
    assert w._compiling.wait(120)
    w._take_compiled()
    assert w._rec is not eager and w._compiling is None
    assert not {id(n) for n in w._rec.networks()} & {id(n) for n in eager.networks()}  # no shared module
    second = w._infer([img], ["a.jpg"], None)[0]
    assert len(first.faces) == len(second.faces) == 1
    assert np.allclose(first.faces[0].landmarks, second.faces[0].landmarks, atol=1e-3)
    assert "compiled networks took over" in capsys.readouterr().err


def test_cold_build_saves_stamp_and_warm_start_skips_artifacts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first worker on a cold cache compiles with a pool, then saves the artifacts and the warm
    stamp and stops the pool; the next one compiles in-process and does not load the artifacts file
    (loading it rewrote caches that were already on disk); an eager-only build stamps nothing."""
    import torch._inductor.async_compile as async_compile
    import torch.compiler

    from facefleet.engine.worker.startup import compile_threads, finish_compile, start_compile

    loaded: list[bytes] = []
    shutdowns: list[int] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"ARTIFACTS", object()))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda b: loaded.append(b) or object())
    monkeypatch.setattr(async_compile, "shutdown_compile_workers", lambda: shutdowns.append(1))
    monkeypatch.setattr("facefleet.platforms.cpu_count", lambda: 16)
    folder = tmp_path / "inductor" / "h200-sm90-torch2.11.0"
    (folder).mkdir(parents=True)
    (folder / "compile_artifacts.bin").write_bytes(b"FROM ANOTHER HOST")
    assert compile_threads(folder) > 1  # cold: a pool of compilers
    assert start_compile(folder) and loaded == [b"FROM ANOTHER HOST"]
    finish_compile(folder, compiled=False)  # eager networks: nothing compiled, nothing stamped
    assert not (folder / "warm.json").exists() and not shutdowns
    finish_compile(folder, compiled=True)
    assert (folder / "warm.json").exists() and shutdowns == [1]
    assert (folder / "compile_artifacts.bin").read_bytes() == b"ARTIFACTS"
    assert compile_threads(folder) == 1 and not start_compile(folder) and len(loaded) == 1
    finish_compile(folder, compiled=True)  # warm: no second save, no pool to stop
    assert shutdowns == [1]
    assert compile_threads(None) == 1 and not start_compile(None)  # CPU workers compile nothing
