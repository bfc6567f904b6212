"""Work items: what one entry of a unit of work is, independent of the medium.

A unit of work holds a tuple of items of one or more kinds: an image file
(:class:`ImageItem`) and a video's frame range (:class:`FrameRange`, ``source, start, count``). The
queue, leases, manifest and report only ever move items around as JSON, so a new kind is a frozen
dataclass with a ``kind`` tag, ``to_json``/``from_json``, and an entry in :data:`ITEM_KINDS`.

JSON is written with ``ensure_ascii``: a file name that is not valid UTF-8 (decoded by Python with
``surrogateescape``, e.g. ``caf\\udce9.jpg``) and one with a newline both survive the round trip
exactly, and the text is plain ASCII for every database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One image: ``source`` is an absolute path or a URL (``s3://...``), exactly as listed."""

    source: str
    kind: ClassVar[str] = "image"

    def __post_init__(self) -> None:
        if not self.source or not isinstance(self.source, str):
            raise ValueError(f"an image item needs a non-empty source, got {self.source!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageItem:
        return cls(source=data["source"])


@dataclass(frozen=True, slots=True)
class FrameRange:
    """Frames ``start .. start + count - 1`` of a video file ``source`` (0-based, presentation
    order; see :mod:`facefleet.io.video`, whose ``plan_chunks`` makes them and ``read_frames``
    reads them frame-exactly)."""

    source: str
    start: int
    count: int
    kind: ClassVar[str] = "frames"

    def __post_init__(self) -> None:
        if not self.source or not isinstance(self.source, str):
            raise ValueError(f"a frame range needs a non-empty source, got {self.source!r}")
        for name in ("start", "count"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"a frame range's {name} must be an int, got {v!r}")
        if self.start < 0 or self.count < 1:
            raise ValueError(f"a frame range needs start >= 0 and count >= 1, got {self.start}, {self.count}")

    @property
    def stop(self) -> int:
        """One past the last frame."""
        return self.start + self.count

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "start": self.start, "count": self.count}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FrameRange:
        return cls(source=data["source"], start=data["start"], count=data["count"])


# Every kind a unit may hold; a new kind joins this union and ITEM_KINDS.
WorkItem: TypeAlias = ImageItem | FrameRange

ITEM_KINDS: Mapping[str, Any] = MappingProxyType({ImageItem.kind: ImageItem, FrameRange.kind: FrameRange})


_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def as_item(x: str | WorkItem) -> WorkItem:
    """An item as is; a plain string is an image source (what listings produce today)."""
    return ImageItem(x) if isinstance(x, str) else x


def item_from_json(data: Mapping[str, Any]) -> WorkItem:
    """The item that :meth:`to_json` wrote; an unknown kind is an error naming it."""
    kind = data.get("kind")
    cls = ITEM_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown work item kind {kind!r} (known: {', '.join(sorted(ITEM_KINDS))})")
    item: WorkItem = cls.from_json(data)
    return item


def items_to_json(items: Iterable[WorkItem]) -> str:
    """Canonical JSON text of a sequence of items: ASCII only, no spaces, each item's keys in the
    order its ``to_json`` gives them (so equal items always give equal text, which unit ids hash)."""
    return "[" + ",".join(_item_json(i) for i in items) + "]"


def _item_json(item: WorkItem) -> str:
    if type(item) is ImageItem:  # the hot path of a listing of millions: same text, 5x faster
        return '{"kind":"image","source":' + encode_basestring_ascii(item.source) + "}"
    return _ENCODER.encode(item.to_json())


def items_from_json(text: str) -> tuple[WorkItem, ...]:
    """Inverse of :func:`items_to_json`."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("work items must be a JSON list")
    # image items take the short way (a claim decodes a whole unit of them)
    return tuple(ImageItem(d["source"]) if d.get("kind") == "image" else item_from_json(d) for d in data)


def image_sources(items: Sequence[WorkItem]) -> list[str]:
    """The sources of image items; any other kind is an error (for call sites that read images)."""
    out = []
    for i in items:
        if not isinstance(i, ImageItem):
            raise TypeError(f"not an image item: {i!r}")
        out.append(i.source)
    return out
