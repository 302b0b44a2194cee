"""What OpenCV's TIFF reader leaves to the caller, read from the file's own tags (TIFF 6.0, classic and BigTIFF).

OpenCV decodes the first page as its samples lie. Three things a film digitiser or a microscope writes come out
wrong that way: a first page that is a thumbnail of the next (classified at 40x30 pixels), 16-bit or float colour
stored plane by plane (``tifffile.imwrite`` of a channels-first array: OpenCV reads the red plane as interleaved
pixels and leaves the rest of the picture unset), and 16-bit or float grey where 0 is white (shown as its
negative; 8-bit files OpenCV inverts itself).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
MAX_PAGES = 16  # reduced pages before a full one looked past, at most (a loop or a damaged offset ends sooner)
MAX_ENTRIES = 256  # tags read per page: files hold a few dozen, sorted, those read here among the first
_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8: the types these tags come in
_SUBFILE, _OLD_SUBFILE, _BITS, _PHOTOMETRIC, _SAMPLES, _PLANAR = 254, 255, 258, 262, 277, 284


@dataclass(frozen=True)
class Page:
    """One page's tags that decide how its pixels are read."""

    bits: int = 1  # per sample
    photometric: int | None = None  # 0: 0 is white
    planar: int = 1  # 2: one plane per sample
    samples: int = 1  # per pixel
    reduced: bool = False  # a smaller version of another page (a thumbnail, a pyramid level)


def is_tiff(data: bytes) -> bool:
    return data[:4] in SIGNATURES


def shown_page(data: bytes) -> tuple[int, Page] | None:
    """The page to classify and its index: the first one at full resolution (a thumbnail may come first); None
    where the file's first page cannot be read (OpenCV then says what is wrong)."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    offset, first = _unpack(data, order + offset_format, 8 if big else 4), None
    for index in range(MAX_PAGES):
        count = None if not offset else _unpack(data, order + count_format, offset)
        start = (offset or 0) + struct.calcsize(count_format)
        if count is None or start + count * entry_size > len(data):  # no page there: a damaged chain ends
            break
        entries = range(start, start + min(count, MAX_ENTRIES) * entry_size, entry_size)
        tags = dict(filter(None, (_first_value(data, order, position, big) for position in entries)))
        page = Page(bits=tags.get(_BITS, 1), photometric=tags.get(_PHOTOMETRIC), planar=tags.get(_PLANAR, 1),
                    samples=tags.get(_SAMPLES, 1),
                    reduced=bool(tags.get(_SUBFILE, 0) & 1) or tags.get(_OLD_SUBFILE) == 2)
        if not page.reduced:
            return index, page
        first = first or (index, page)
        offset = _unpack(data, order + offset_format, start + count * entry_size)
    return first


def _first_value(data: bytes, order: str, position: int, big: bool) -> tuple[int, int] | None:
    """``(tag, its first value)`` of the entry at ``position``, for integer tags; None for others."""
    head = _unpack(data, order + ("HHQ" if big else "HHI"), position, whole=True)
    if head is None or head[1] not in _TYPES or not head[2]:
        return None
    tag, kind, count = head
    value_format = _TYPES[kind]
    inline = 8 if big else 4
    at = position + (12 if big else 8)
    if count * struct.calcsize(value_format) > inline:  # the values lie elsewhere: the field holds their offset
        at = _unpack(data, order + ("Q" if big else "I"), at)
    value = None if at is None else _unpack(data, order + value_format, at)
    return None if value is None else (tag, value)


def _unpack(data: bytes, layout: str, at: int, whole: bool = False):
    """``struct.unpack_from`` that answers None past the end of ``data`` (a file cut short)."""
    if at < 0 or at + struct.calcsize(layout) > len(data):
        return None
    values = struct.unpack_from(layout, data, at)
    return values if whole else values[0]


def planes_unreadable(page: Page) -> bool:
    """Whether OpenCV misreads the page: several samples wider than 8 bits, one plane per sample (with one
    sample a plane is the picture: read right)."""
    return page.planar == 2 and page.samples > 1 and 8 < page.bits <= 64


def zero_is_white(page: Page) -> bool:
    """Whether the page's values must be inverted after OpenCV has read them (it inverts 8-bit ones itself)."""
    return page.photometric == 0 and page.bits > 8
