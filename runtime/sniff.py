"""What a file no decoder could read actually is, so its one-line error says something a person can act on.

"not a readable image" is all OpenCV's ``None`` tells; the first bytes usually tell more: a PDF report or an
HTML login page saved under an image's name, a gzipped export, a PNG copied in text mode, a phone's HEIC photo,
or an image of a known format that is damaged. Only called once decoding has failed, so it costs nothing on
files that decode.
"""

from __future__ import annotations

from .preprocess import JPEG_SOI, PNG_SIGNATURE  # imported by preprocess only once it is loaded

# Magic bytes at the start of the file → what it is. Image formats medclf decodes mean the file is damaged.
SIGNATURES = (
    (JPEG_SOI, "damaged or cut-short JPEG (cannot be decoded)"),
    (PNG_SIGNATURE, "damaged PNG (cannot be decoded)"),
    (b"\x89PNG", "PNG whose signature bytes were changed, as copying in text mode does (FTP ASCII, a line-ending "
                 "converter): copy it again in binary mode"),
    (b"II*\x00", "damaged or cut-short TIFF (cannot be decoded)"),
    (b"MM\x00*", "damaged or cut-short TIFF (cannot be decoded)"),
    (b"GIF8", "damaged GIF (cannot be decoded)"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "damaged JPEG 2000 (cannot be decoded)"),
    (b"\xff\x4f\xff\x51", "damaged JPEG 2000 (cannot be decoded)"),
    (b"%PDF", "a PDF document, not an image: export its pages as PNG or JPEG"),
    (b"\x1f\x8b", "gzip-compressed data: decompress it first"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document): unpack it first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: unpack it first"),
    (b"\x00\x00\x01\x00", "a Windows icon (.ico): not supported; save it as PNG"),
)
# ISO base media files' major brands: HEIF/HEIC (iPhone photos), which OpenCV does not decode, and AVIF, which it does
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})  # the DIB headers a BMP's file header can be followed by
UNKNOWN = "not a readable image (unknown format or corrupt data)"


def unreadable_reason(data: bytes) -> str:
    """Why ``data``, which no decoder took, is not an image: its real kind where the first bytes say."""
    if data[:2] == JPEG_SOI and (kind := _unsupported_jpeg(data)):
        return f"{kind} JPEG, which medclf does not decode: save it as a 16-bit PNG or TIFF"
    for magic, reason in SIGNATURES:
        if data.startswith(magic):
            return reason
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "a HEIF/HEIC image (as phones save photos): not supported; save it as JPEG or PNG"
    if data[4:8] == b"ftyp" and data[8:12] in AVIF_BRANDS:
        return "AVIF image that could not be decoded (damaged, or this OpenCV has no AVIF decoder)"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in BMP_HEADER_SIZES:
        return "damaged or cut-short BMP (cannot be decoded)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "damaged or cut-short WebP (cannot be decoded)"
    return _text_reason(data[:1024]) or UNKNOWN


def _text_reason(head: bytes) -> str | None:
    """The reason for a file whose start is text (HTML, SVG, XML, anything else), or None for binary data."""
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end of ``head`` is still text
        if exc.start < len(head) - 3:
            return None
        text = head[:exc.start].decode("utf-8-sig")
    if not text.strip() or any(not (c.isprintable() or c.isspace()) for c in text):
        return None
    start = text.lstrip().lower()
    if start.startswith(("<!doctype html", "<html")) or "<head" in start[:200]:
        return "an HTML page, not an image (a failed download or a login page saved under an image's name?)"
    if "<svg" in start:
        return "an SVG drawing (vector graphics): not supported; save it as PNG"
    return "a text file, not an image"


def _unsupported_jpeg(data: bytes) -> str | None:
    """"lossless" or "12-bit" where a whole JPEG's header declares a frame libjpeg-turbo's 8-bit decoders do
    not take (as DICOM's JPEG Lossless and Extended frames are, saved on their own), else None."""
    from .jpeg import frame_segment

    if (frame := frame_segment(data)) is None:
        return None
    marker, start = frame
    if marker in (0xC3, 0xC7, 0xCB, 0xCF):  # SOF3, 7, 11, 15
        return "lossless"
    return f"{data[start]}-bit" if start < len(data) and data[start] != 8 else None
