"""A run's report files: ``OUT/report.json`` (the stats and what :func:`derive` makes of them) and
``OUT/report.html`` (:mod:`facefleet.monitor.report_html`), each written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from facefleet.export.jsonfile import finite_json
from facefleet.io.atomic import atomic_write_text
from facefleet.monitor.report import derive
from facefleet.monitor.report_html import render_html

__all__ = ["write_report"]


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def write_report(out_dir: str | os.PathLike[str], stats: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.json`` atomically; returns (html, json).

    ``report.json`` = ``{"stats": stats, "derived": derive(stats)}``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report: output {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    derived = derive(stats)
    doc = finite_json(json.loads(json.dumps({"stats": stats, "derived": derived}, default=_json_default)))
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write_text(json_path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    atomic_write_text(html_path, render_html(stats, derived))
    return html_path, json_path
