"""``facefleet bench``, ``bench-core`` and ``eval``: the benchmarks' own command lines
(:mod:`facefleet.bench`), whose flags for settings come from :mod:`facefleet.config`."""

from __future__ import annotations


def bench_main(argv: list[str]) -> int:
    from facefleet.bench.bench import bench_cli

    return bench_cli(argv)


def bench_core_main(argv: list[str]) -> int:
    from facefleet.bench.core import main

    return main(argv)


def eval_main(argv: list[str]) -> int:
    from facefleet.bench.accuracy import eval_cli

    return eval_cli(argv)
