"""An AVIF (HEIF) image's rotation and mirroring, which OpenCV's decoder leaves to the caller.

HEIF stores a photo as the camera's sensor read it and says how to show it in properties of the image item
(ISO/IEC 23008-12): ``irot`` (turn anticlockwise by quarters) and ``imir`` (mirror about an axis), applied in
the order the item lists them. A portrait photo saved so (Pillow writes its EXIF orientation as these) came out
on its side.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import cv2
import numpy as np

BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1")


def is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in BRANDS


def shown_as_meant(image: np.ndarray, data: bytes) -> np.ndarray:
    """``image`` (decoded as stored) turned and mirrored as the file's primary item says."""
    for kind, value in transforms(data):
        if kind == b"irot":
            image = np.rot90(image, value & 3)  # anticlockwise, as numpy turns
        else:  # imir's mode (the 2022 text, libavif): 0 exchanges top and bottom, 1 left and right
            image = cv2.flip(image, 1 if value & 1 else 0)
    return np.ascontiguousarray(image)


def transforms(data: bytes) -> list[tuple[bytes, int]]:
    """``(b"irot" or b"imir", its byte)`` for the primary item, in the order it lists them; [] where the file
    has none or its boxes cannot be followed."""
    return [(kind, data[start]) for kind, start, end in _primary_properties(data)
            if kind in (b"irot", b"imir") and start < end]


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) as the primary item's ``ispe`` states it, or None: what a decoder will allocate, read
    before it does (a 60000 x 60000 ``ispe`` was "could not be decoded (damaged, or ... no AVIF decoder)")."""
    for kind, start, end in _primary_properties(data):
        if kind == b"ispe" and end - start >= 12:  # a full box: version and flags, then width and height
            width, height = struct.unpack_from(">II", data, start + 4)
            return height, width
    return None


def _primary_properties(data: bytes) -> list[tuple[bytes, int, int]]:
    """The boxes of the properties associated with the primary item, in the order it lists them; [] where the
    boxes cannot be followed (cut short: shown as stored)."""
    try:
        return list(_properties(data))
    except (IndexError, struct.error):
        return []


def _properties(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        return
    start, end = meta[0] + 4, meta[1]  # a full box: version and flags first
    primary, iprp = _child(data, start, end, b"pitm"), _child(data, start, end, b"iprp")
    if primary is None or iprp is None:
        return
    version = data[primary[0]]
    item = _read(data, primary[0] + 4, ">I" if version else ">H")
    ipco, ipma = _child(data, *iprp, b"ipco"), _child(data, *iprp, b"ipma")
    if item is None or ipco is None or ipma is None:
        return
    properties = list(_boxes(data, *ipco))
    for index in _associated(data, *ipma, item):
        if 0 < index <= len(properties):
            yield properties[index - 1]


def _associated(data: bytes, start: int, end: int, item: int) -> Iterator[int]:
    """The property indices (1-based) ``ipma`` lists for ``item``, in order."""
    version, flags = data[start], int.from_bytes(data[start + 1:start + 4], "big")
    count, position = _read(data, start + 4, ">I"), start + 8
    for _ in range(count or 0):
        entry = _read(data, position, ">I" if version else ">H")
        position += 4 if version else 2
        if entry is None or position >= end:
            return
        associations = data[position]
        position += 1
        width = 2 if flags & 1 else 1
        indices = [int.from_bytes(data[p:p + width], "big") & (0x7FFF if width == 2 else 0x7F)
                   for p in range(position, min(position + associations * width, end), width)]
        position += associations * width
        if entry == item:
            yield from indices
            return


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, content start, content end)`` of the boxes between ``start`` and ``end``."""
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1 and position + 16 <= end:
            size, header = struct.unpack_from(">Q", data, position + 8)[0], 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            return
        yield kind, position + header, position + size
        position += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((first, last) for found, first, last in _boxes(data, start, end) if found == kind), None)


def _read(data: bytes, at: int, layout: str) -> int | None:
    return struct.unpack_from(layout, data, at)[0] if at + struct.calcsize(layout) <= len(data) else None
