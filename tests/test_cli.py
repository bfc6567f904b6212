"""facefleet.entrypoints.cli: subcommands, flags from the config, and the import layering (the
entry points above the engine and the benchmarks, the config and platform below them, no cycles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import facefleet
from facefleet.config import ModelConfig
from facefleet.entrypoints.cli import main
from facefleet.entrypoints.cli import worker as worker_cmd
from facefleet.entrypoints.cli.reconstruct import build_parser as reconstruct_parser
from facefleet.entrypoints.cli.reconstruct import runner_args
from facefleet.entrypoints.cli.run import run_main

PACKAGE = Path(facefleet.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every ``facefleet...`` module a file imports, at any depth (lazy imports in functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("facefleet")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("facefleet")
        ):
            out.add(str(node.module))
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _area(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _is_area(area: str) -> bool:
    path = PACKAGE.parent / area.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").exists()


def _graph() -> dict[str, set[str]]:
    """Edges between facefleet's top-level areas (facefleet.engine, facefleet.bench, ...)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        me = _area(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        deps = {_area(m) for m in _imports(path)} - {me, "facefleet"}
        graph.setdefault(me, set()).update(d for d in deps if _is_area(d))
    return graph


def test_layers_have_no_import_cycles() -> None:
    """entrypoints -> engine / bench / pipeline -> platforms -> config: nothing imports upwards, and
    the command-line areas form no cycle (``cli`` <-> ``bench`` / ``engine`` did)."""
    g = _graph()
    for area, deps in g.items():
        if area in ("facefleet.entrypoints", "facefleet.cli", "facefleet.__main__"):
            continue
        assert "facefleet.entrypoints" not in deps, f"{area} imports the entry points"
        assert "facefleet.cli" not in deps, f"{area} imports facefleet.cli"
    assert g["facefleet.config"] <= {"facefleet.config"}, g["facefleet.config"]
    assert g["facefleet.platforms"] <= {"facefleet.config"}, g["facefleet.platforms"]
    # no cycle through the command line's areas
    watched = {"facefleet.entrypoints", "facefleet.bench", "facefleet.engine", "facefleet.config",
               "facefleet.platforms", "facefleet.reconstruct_cmd"}  # fmt: skip

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in g.get(todo.pop(), ()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    for a in watched:
        assert a not in reachable(a), f"import cycle through {a}"


@pytest.mark.parametrize(
    "module",
    ["facefleet.entrypoints.cli", "facefleet.entrypoints.cli.run", "facefleet.entrypoints.cli.reconstruct",
     "facefleet.entrypoints.cli.bench", "facefleet.entrypoints.cli.worker", "facefleet.config",
     "facefleet.platforms", "facefleet.cli"],
)  # fmt: skip
def test_modules_import_alone_without_torch(module: str) -> None:
    """Each imports first in a fresh interpreter (an import cycle would fail there), and the command
    line, config and platform import no torch (``facefleet --help`` is instant)."""
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "gpu.batch_size must be >= 1, got 0"),
        (["--refine", "-1"], "model.refine must be >= 0, got -1"),
    ],
)
def test_run_refuses_bad_flags_with_rc_2(argv: list[str], message: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "facefleet", "run", str(tmp_path), "-o", str(tmp_path / "o"), *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_run_refuses_an_unknown_config_key_naming_it_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "ff.toml"
    cfg.write_text("[run]\nunit_size = 8\nbatchsize = 3\n")
    assert run_main([str(tmp_path), "-o", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key run.batchsize" in err and str(cfg) in err
    assert not (tmp_path / "o").exists()


def test_an_unknown_model_family_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main([str(tmp_path), "-o", str(tmp_path / "o"), "--family", "mediapipe999"]) == 2
    assert (
        "model.family must be one of mediapipe468, mediapipe478, got 'mediapipe999'"
        in capsys.readouterr().err
    )


def test_run_passes_the_typed_config_to_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``facefleet run`` hands the engine one typed JobConfig (file < flags); run.json's ``model``
    names only what was set, so a resume without the flags keeps the rest."""
    import facefleet.engine.engine as engine
    from facefleet.config import JobConfig
    from facefleet.engine.layout import changed_settings

    cfg_file = tmp_path / "ff.toml"
    cfg_file.write_text(
        'devices = "cpu"\n[model]\nrefine = 1\n[run]\nformats = ["json"]\ntexture_size = 256\n'
    )
    seen: dict[str, Any] = {}

    def fake_run(*args: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise engine.EngineError("stop here")

    monkeypatch.setattr(engine, "run", fake_run)
    argv = ["in", "-o", "out", "--config", str(cfg_file), "--max-faces", "4", "--workers", "2",
            "--queue", "postgresql://h/db"]  # fmt: skip
    assert run_main(argv) == 2
    cfg = seen["config"]
    assert isinstance(cfg, JobConfig) and set(seen) == {"config", "quiet", "force", "log_json"}
    cfg = engine.job_config(engine.RunOptions(config=cfg))
    assert cfg.devices == "cpu" and cfg.run.formats == ("json",) and cfg.run.texture_size == 256
    assert changed_settings(cfg.model) == {"refine": 1, "max_faces": 4}
    assert cfg.run.unit_size is None and cfg.cpu.workers == 2 and cfg.queue.url == "postgresql://h/db"


def test_reconstruct_keeps_its_defaults_and_takes_config_flags(tmp_path: Path) -> None:
    p = reconstruct_parser("facefleet reconstruct")
    args = p.parse_args(["a.jpg", "-o", str(tmp_path), "--device", "cpu"])
    from facefleet.config import config_from_args
    from facefleet.entrypoints.cli.reconstruct import BASE

    ns = runner_args(args, config_from_args(args, BASE))
    assert (ns.device, ns.precision, ns.batch_size) == ("cpu", "fp32", 16)
    assert ns.formats == {"json", "obj", "overlay"} and ns.texture_size == 512 and ns.paths == ["a.jpg"]
    assert ns.model == ModelConfig() and ns.max_file_bytes == 256 << 20
    args = p.parse_args(["a.jpg", "-o", str(tmp_path), "--device", "cpu", "--family", "mediapipe478",
                         "--refine", "0", "--formats", "glb", "--batch-size", "2"])  # fmt: skip
    ns = runner_args(args, config_from_args(args, BASE))
    assert ns.model.family == "mediapipe478" and ns.model.refine == 0
    assert ns.formats == {"glb"} and ns.batch_size == 2


def test_main_dispatch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["bogus"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and facefleet.__version__ in capsys.readouterr().out
    # facefleet worker says when the worker's command line is not there
    monkeypatch.setattr(worker_cmd, "WORKER_CLI", "facefleet.engine.no_such_worker_cli")
    assert main(["worker", "--queue", "x"]) == 2
    assert "facefleet worker: unavailable" in capsys.readouterr().err
