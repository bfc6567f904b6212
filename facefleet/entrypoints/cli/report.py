"""``facefleet report OUT [--queue URL]``: rebuild a run's stats.json and report from its queue and
manifest alone (a run done by external workers with no coordinator, or a lost report)."""

from __future__ import annotations

import argparse
import sys


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="facefleet report", description=__doc__)
    p.add_argument("out", metavar="OUT", help="the run's output folder")
    p.add_argument(
        "--queue", default=None, help="the run's queue URL (default: run.json's, else OUT/_queue.sqlite)"
    )
    args = p.parse_args(argv)

    from facefleet.engine.layout import EngineError
    from facefleet.engine.queue import QueueError
    from facefleet.engine.totals import write_run_report

    try:
        html = write_run_report(args.out, args.queue)
    except (EngineError, QueueError, OSError) as e:
        print(f"facefleet report: error: {e}", file=sys.stderr)
        return 2
    print(f"facefleet report: {html}")
    return 0
