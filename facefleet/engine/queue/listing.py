"""From a listing to units: cut a stream of items into units with deterministic ids, and stream
them into a queue with bounded memory."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from facefleet.engine.queue.base import WorkQueue
from facefleet.sources.items import WorkItem, as_item, items_to_json


def unit_id(items: Sequence[str | WorkItem]) -> str:
    """Deterministic id of a unit: the first 16 hex digits of sha256 over the canonical JSON of
    its items (a plain string is an image source). Equal items in equal order give equal ids, on
    every host and every run, so the manifest's file names follow the listing."""
    text = items_to_json(as_item(i) for i in items)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def iter_units(items: Iterable[str | WorkItem], unit_size: int) -> Iterator[tuple[str, tuple[WorkItem, ...]]]:
    """Cut a stream of items (or image sources) into (unit id, items) of ``unit_size`` (the last
    may be shorter). Holds one unit in memory at a time."""
    if unit_size < 1:
        raise ValueError(f"unit size must be >= 1, got {unit_size}")
    chunk: list[WorkItem] = []
    for x in items:
        chunk.append(as_item(x))
        if len(chunk) == unit_size:
            yield unit_id(chunk), tuple(chunk)
            chunk = []
    if chunk:
        yield unit_id(chunk), tuple(chunk)


def enqueue_listing(
    queue: WorkQueue,
    items: Iterable[str | WorkItem],
    unit_size: int,
    *,
    stop: Callable[[], bool] | None = None,
    flush_every: int = 16,
) -> tuple[int, int]:
    """Stream ``items`` into ``queue`` as units; marks the listing done at the end (meta
    ``listing_done`` = "1", event ``listing_done``) unless ``stop()`` turned true first. Keeps meta
    ``listed_images`` up to date. Memory: ``flush_every`` units at most. Returns (items, units)."""
    n_items = n_units = 0
    buf: list[tuple[str, tuple[WorkItem, ...]]] = []
    last = time.monotonic()
    for uid, unit in iter_units(items, unit_size):
        if stop is not None and stop():
            return n_items, n_units
        buf.append((uid, unit))
        n_items += len(unit)
        n_units += 1
        if len(buf) >= flush_every or time.monotonic() - last > 0.5:
            queue.add_units(buf)
            queue.set_meta("listed_images", str(n_items))
            buf = []
            last = time.monotonic()
    if buf:
        queue.add_units(buf)
    queue.set_meta("listed_images", str(n_items))
    queue.set_meta("listing_done", "1")
    queue.add_event("listing_done", {"images": n_items, "units": n_units})
    return n_items, n_units
