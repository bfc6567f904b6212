"""The registry of model families: register one, find one by name or by its landmark count. The
shipped families (:mod:`facefleet.families.mediapipe`) are registered on first use."""

from __future__ import annotations

import threading

from facefleet.families.base import FamilySpec

_REGISTRY: dict[str, FamilySpec] = {}
_LOCK = threading.Lock()


def register_family(spec: FamilySpec, *, replace: bool = False) -> FamilySpec:
    """Add ``spec`` to the registry (``ValueError`` if the name is taken, unless ``replace``)."""
    with _LOCK:
        if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
            raise ValueError(f"model family {spec.name!r} is already registered")
        _REGISTRY[spec.name] = spec
    return spec


def get_family(name: str | FamilySpec) -> FamilySpec:
    """The family called ``name`` (a :class:`FamilySpec` is returned as is); ``KeyError`` naming the
    known families otherwise."""
    if isinstance(name, FamilySpec):
        return name
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model family {name!r}; known families: {', '.join(list_families())}"
        ) from None


def list_families() -> tuple[str, ...]:
    """Names of the registered families, sorted."""
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def family_for_vertices(n_vertices: int) -> FamilySpec:
    """The registered family whose landmarks have ``n_vertices`` points (for files written from plain
    results, which carry no family name); ``KeyError`` when none or several match."""
    _load_builtin()
    found = [f for f in _REGISTRY.values() if f.topology.n_vertices == int(n_vertices)]
    if len(found) != 1:
        what = "no" if not found else "several"
        raise KeyError(f"{what} registered model family with {n_vertices} landmarks")
    return found[0]


def _load_builtin() -> None:
    """Registers the shipped families on first use (their module imports torch: not at import time)."""
    from facefleet.families.mediapipe import BUILTIN

    for spec in BUILTIN:
        if spec.name not in _REGISTRY:
            register_family(spec)
