"""``facefleet reconstruct PATHS -o OUT`` and ``facefleet demo``: the in-process runner on one
device (:mod:`facefleet.reconstruct_cmd`), with settings from :mod:`facefleet.config`."""

from __future__ import annotations

import argparse
from pathlib import Path

from facefleet.config import (
    FORMATS,
    CpuConfig,
    GpuConfig,
    JobConfig,
    RunConfig,
    add_config_arguments,
)
from facefleet.config.flags import section_keys
from facefleet.entrypoints.cli.options import parse_job

#: the settings of one in-process run: the model's, the outputs' and the files'
KEYS = [*section_keys("model"), "run.formats", "run.texture_size", "run.model_dir", "run.max_file_bytes"]
#: defaults of ``reconstruct`` where they differ from a batch run's: outputs to look at, fp32
BASE = JobConfig(
    run=RunConfig(formats=("json", "obj", "overlay")),
    gpu=GpuConfig(batch_size=16, precision="fp32"),
    cpu=CpuConfig(batch_size=16),
)


def build_parser(prog: str, *, demo: bool = False) -> argparse.ArgumentParser:
    """``reconstruct`` (or ``demo``)'s parser: its own arguments and the flags of :data:`KEYS`."""
    if demo:
        p = argparse.ArgumentParser(
            prog=prog, description="Run the whole pipeline on a bundled sample portrait."
        )
        p.add_argument("-o", "--out", type=Path, default=Path("facefleet-demo"), help="output folder")
    else:
        p = argparse.ArgumentParser(
            prog=prog,
            usage=f"{prog} PATH [PATH ...] -o OUT [options]",
            description="Reconstruct the faces of images into OUT.",
        )
        p.add_argument("paths", nargs="+", help="image files or folders")
        p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    base = demo_base() if demo else BASE
    add_config_arguments(p, KEYS, aliases=("--device", "--batch-size", "--precision"), base=base)
    return p


def demo_base() -> JobConfig:
    """``demo``'s defaults: ``reconstruct``'s, with every output format."""
    return JobConfig(run=RunConfig(formats=FORMATS), gpu=BASE.gpu, cpu=BASE.cpu)


def runner_args(args: argparse.Namespace, cfg: JobConfig) -> argparse.Namespace:
    """The namespace :mod:`facefleet.reconstruct_cmd` reads: one device and its batch size and
    precision (its device section's), the outputs, the input files' size cap and the ``[model]``
    settings (a :class:`~facefleet.config.ModelConfig`)."""
    device = cfg.devices if cfg.devices != "all" else "cuda"
    on_cpu = device == "cpu"
    if device == "auto":
        from facefleet.platforms import cuda_device_count

        on_cpu = cuda_device_count() == 0
    sec: GpuConfig | CpuConfig = cfg.cpu if on_cpu else cfg.gpu
    return argparse.Namespace(
        paths=getattr(args, "paths", []),
        out=args.out,
        device=device,
        precision=sec.precision or "fp32",
        batch_size=sec.batch_size or 16,
        formats=set(cfg.run.formats),
        texture_size=cfg.run.texture_size,
        model_dir=Path(cfg.run.model_dir) if cfg.run.model_dir else None,
        max_file_bytes=cfg.run.max_file_bytes,
        model=cfg.model,
    )


def reconstruct_main(argv: list[str]) -> int:
    parsed = parse_job(build_parser("facefleet reconstruct"), argv, BASE)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    from facefleet.reconstruct_cmd import reconstruct_paths

    return reconstruct_paths(runner_args(args, cfg))


def demo_main(argv: list[str]) -> int:
    parsed = parse_job(build_parser("facefleet demo", demo=True), argv, demo_base())
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    from facefleet.reconstruct_cmd import demo

    return demo(runner_args(args, cfg))
