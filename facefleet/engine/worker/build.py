"""The worker's pipeline, built from its spec: what the photo worker and the video worker both run."""

from __future__ import annotations

import importlib
from typing import Any

from facefleet.engine.worker.spec import WorkerSpec


def make_reconstructor(spec: WorkerSpec, device: str, *, eager: bool = False) -> Any:
    """The worker's reconstructor, from its typed settings: ``spec.model`` (the ``[model]`` settings,
    :class:`~facefleet.pipeline.Reconstructor`'s parameters of the same names), the ``[run]`` model
    folder and texture size, the profile's precision and, for facefleet's pipeline, the worker's share of
    the cores and CPU runtime (CPU) or whether to compile (GPU). A custom ``[run] reconstructor``
    callable gets the same keywords plus its own ``reconstructor_args``. ``eager``: without
    torch.compile and CUDA graphs (ready once its weights are loaded)."""
    run = spec.run
    kwargs: dict[str, Any] = {**spec.model.arguments(), "texture_size": run.texture_size}
    if run.model_dir is not None:
        kwargs["model_dir"] = run.model_dir
    if run.reconstructor:
        mod, _, attr = run.reconstructor.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
        kwargs.update(spec.reconstructor_args)
    else:
        from facefleet.pipeline import Reconstructor as factory

        if device == "cpu":  # the worker's share of the cores, for either CPU runtime
            kwargs.update(threads=max(1, spec.profile.threads), runtime=spec.profile.runtime)
        elif eager or not spec.profile.compile:  # [gpu] compile = false (default: where Triton is)
            kwargs["compiled"] = False
    rec = factory(device=device, precision=spec.profile.precision, **kwargs)
    if eager:
        rec.use_cuda_graphs(False)
    return rec
