"""Pluggable model families: a registry of landmark networks and the topology of their results.

>>> from facefleet.families import get_family                      # doctest: +SKIP
>>> fam = get_family("mediapipe478")                                # doctest: +SKIP
>>> fam.topology.n_vertices, fam.topology.extra["iris_right"]       # doctest: +SKIP
(478, 468)
"""

from facefleet.families.base import FamilySpec, MeshModel, Topology
from facefleet.families.registry import family_for_vertices, get_family, list_families, register_family

DEFAULT_FAMILY = "mediapipe468"

__all__ = [
    "DEFAULT_FAMILY",
    "FamilySpec",
    "MeshModel",
    "Topology",
    "family_for_vertices",
    "get_family",
    "list_families",
    "register_family",
]
