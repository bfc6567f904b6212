"""facefleet.sources: the media-agnostic work items that units of work hold (see :mod:`.items`)."""

from facefleet.sources.items import (
    ITEM_KINDS,
    ImageItem,
    WorkItem,
    as_item,
    image_sources,
    item_from_json,
    items_from_json,
    items_to_json,
)

__all__ = [
    "ITEM_KINDS",
    "ImageItem",
    "WorkItem",
    "as_item",
    "image_sources",
    "item_from_json",
    "items_from_json",
    "items_to_json",
]
