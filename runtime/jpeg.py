"""JPEG decoding through libjpeg-turbo's TurboJPEG API (simplejpeg), which says when a file is damaged.

OpenCV decodes a JPEG whose compressed data is cut short or garbled mid-file and fills what it lost with grey;
libjpeg's only sign is a line such as "Corrupt JPEG data: premature end of data segment" printed on stderr,
naming no file. A model then classifies half a picture. TurboJPEG reports the same warnings to its caller, so a
damaged file becomes an :class:`ImageError` naming it, like any other unusable file; harmless warnings (stray
bytes before a marker, an unknown JFIF revision) still decode. It is also the same libjpeg-turbo, giving the same
pixels as OpenCV at every scale (tested), in ~two thirds of the time, and straight to RGB.

OpenCV remains the decoder for what TurboJPEG does not take — CMYK/YCCK files (which TurboJPEG still checks
first, so a damaged one is refused by name too), headers it cannot parse, complaints this module does not know
— and refuses or decodes those as it did before. EXIF orientation, which
OpenCV applies itself, is applied here.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

# preprocess imports this module when it decodes
from .preprocess import MAX_PIXELS, ImageError, is_start_of_frame, jpeg_segments

# libjpeg's warnings that mean part of the picture is missing or wrong (jerror.h: JWRN_HIT_MARKER, JWRN_JPEG_EOF,
# JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_MUST_RESYNC, JWRN_BOGUS_PROGRESSION): the file is refused.
LOST_DATA = ("premature end", "bad huffman code", "bad arithmetic code", "instead of rst", "inconsistent progression")
# ... and those that leave it whole (JWRN_EXTRANEOUS_DATA, JWRN_JFIF_MAJOR, JWRN_BOGUS_ICC): it is decoded. Any
# other complaint goes to OpenCV, which decided before this module existed (fuzzing found files whose only
# strict complaint was "Invalid SOS parameters for sequential JPEG" that TurboJPEG would decode and OpenCV refused).
HARMLESS = ("extraneous bytes", "unknown jfif revision", "bad icc marker")
# Errors (not warnings) that mean the marker chain is broken: a marker byte damaged inside the compressed data
# (``FF 00`` → ``FF 5A``) cuts the picture there, and OpenCV's libjpeg decodes the rest as grey, warning only
# anonymously. (Not "Unsupported JPEG process", which lossless JPEGs earn from TurboJPEG, and OpenCV decodes.)
BROKEN_STRUCTURE = ("unsupported marker type", "two sof markers", "two soi markers")
# ... and "Unsupported JPEG process" where the header's frame is one TurboJPEG decodes: the unsupported frame
# marker (a damaged ``FF xx`` reading as SOF5-SOF15) sits inside the compressed data, ending the picture there.
SUPPORTED_FRAMES = (0xC0, 0xC1, 0xC2)  # SOF0-2: baseline, extended sequential and progressive Huffman
OPENCV_ONLY = ("CMYK", "YCCK")  # colour spaces TurboJPEG will not turn into RGB (it decodes them to CMYK)
EXIF_ORIENTATION_TAG = 0x0112


def decode_jpeg(data: bytes, source: str, color: str, scale: int = 1) -> np.ndarray | None:
    """JPEG bytes → HWC uint8 RGB, or HW1 grey (for grey models: the luma libjpeg decodes at reduced ``scale``,
    OpenCV's grey conversion otherwise, as :func:`~medclf.runtime.preprocess.decode_image` always gave), EXIF
    orientation applied. None where OpenCV should decode the file instead. A damaged file is an ImageError."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data, strict=False)  # decoding judges
    except (ValueError, KeyError):  # KeyError: simplejpeg 1.9 on an unknown subsampling (fuzzed headers)
        return None
    if height * width > MAX_PIXELS:  # whatever the marker walk read: TurboJPEG allocates what the frame says
        raise ImageError(source, f"image is {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit")
    size = {}  # TurboJPEG picks the scale from limits: exactly 1/scale, as OpenCV's reduced modes decode
    if scale > 1:
        size = {"min_factor": scale, "min_height": -(-height // scale), "min_width": -(-width // scale)}
    if colorspace in OPENCV_ONLY:  # no RGB from TurboJPEG, but it still says whether the picture is whole
        try:
            simplejpeg.decode_jpeg(data, "CMYK", **size)
        except ValueError as exc:
            refuse_lost_data(exc, source, data)
        return None
    if color == "rgb":
        target = "RGB"
    else:  # grey at full scale from a colour file: OpenCV's BGR → grey weights, not the file's luma
        target = "GRAY" if scale > 1 or colorspace == "Gray" else "BGR"
    try:
        image = simplejpeg.decode_jpeg(data, target, **size)
    except ValueError as exc:
        refuse_lost_data(exc, source, data)
        if not any(sign in str(exc).lower() for sign in HARMLESS):
            return None
        try:
            image = simplejpeg.decode_jpeg(data, target, strict=False, **size)
        except ValueError:  # some stray bytes stop TurboJPEG even when told to go on; OpenCV gets past them
            return None
    if target == "BGR":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    return orient(image, exif_orientation(data))


def refuse_lost_data(complaint: ValueError, source: str, data: bytes) -> None:
    """An ImageError naming ``source`` when TurboJPEG's ``complaint`` about ``data`` means part of the picture
    is missing."""
    said = str(complaint).lower()
    if "premature end of jpeg file" in said:
        raise ImageError(source, "truncated JPEG (the file ends before the picture does)") from None
    frame_inside_data = "unsupported jpeg process" in said and header_frame(data) in SUPPORTED_FRAMES
    if any(sign in said for sign in LOST_DATA + BROKEN_STRUCTURE) or frame_inside_data:
        raise ImageError(source, f"damaged JPEG, part of the picture is lost ({complaint})") from None


def header_frame(data: bytes) -> int | None:
    """The marker of the frame the header declares (SOF0-SOF15) before the compressed data, or None."""
    frame = frame_segment(data)
    return frame[0] if frame is not None else None


def frame_segment(data: bytes) -> tuple[int, int] | None:
    """``(marker, payload start)`` of the frame segment (SOF0-SOF15) the header declares before the compressed
    data, or None; its payload's first byte is the sample precision."""
    for marker, start, _ in jpeg_segments(data):
        if marker in (0xDA, 0xD9):
            return None
        if is_start_of_frame(marker):
            return marker, start
    return None


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned as EXIF ``orientation`` (1-8) says it is to be viewed, as OpenCV's decoders do."""
    if orientation in (5, 6, 7, 8):  # the stored rows are the picture's columns
        image = cv2.rotate(image, {5: cv2.ROTATE_90_CLOCKWISE, 6: cv2.ROTATE_90_CLOCKWISE,
                                   7: cv2.ROTATE_90_COUNTERCLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}[orientation])
    flip = {2: 1, 3: -1, 4: 0, 5: 1, 7: 1}.get(orientation)  # 1: left-right, 0: upside down, -1: both
    if flip is not None:
        image = cv2.flip(image, flip)
    return image if image.ndim == 3 else image[:, :, None]  # OpenCV drops a single channel's axis


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) in a JPEG's APP1 segment; 1 when there is none or it cannot be read."""
    for marker, start, length in jpeg_segments(data):
        if marker in (0xDA, 0xD9):  # start of the compressed data, or the end: no more headers
            break
        if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
            return _tiff_orientation(data[start + 6:start + length - 2])
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag of a TIFF header's first directory (EXIF's IFD0)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    directory = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[directory:directory + 2], order)
    for entry in range(directory + 2, min(directory + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == EXIF_ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8:entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1
