"""A file no decoder takes is named for what it is: its one line says what to do about it."""

from __future__ import annotations

import gzip
import re

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import ImageError, decode_image
from medclf.runtime.sniff import UNKNOWN, unreadable_reason

SMALL = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)


def encoded(ext: str) -> bytes:
    ok, data = cv2.imencode(ext, SMALL)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("data, reason", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document, not an image"),
    (b"<!DOCTYPE html>\n<html><head><title>Sign in</title>", "an HTML page, not an image"),
    (b"\n  <html>\n<body>404 Not Found</body></html>", "an HTML page, not an image"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', "an SVG drawing"),
    (b"patient 12, left eye: see report \xc3\xa9", "a text file, not an image"),
    (gzip.compress(b"\xff\xd8\xff\xe0 a gzipped JPEG"), "gzip-compressed data: decompress it first"),
    (b"PK\x03\x04\x14\x00\x00\x00", "a ZIP archive"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "a HEIF/HEIC image (as phones save photos)"),
    (b"\x00\x00\x01\x00\x01\x00\x10\x10", "a Windows icon"),
    (b"\x89PNG\n\x1a\n" + bytes(40), "PNG whose signature bytes were changed, as copying in text mode does"),
    (b"BMI report for 2026", "a text file, not an image"),
    (bytes(range(256)), UNKNOWN),
])
def test_what_a_file_is_instead_of_an_image(data, reason):
    assert unreadable_reason(data).startswith(reason)
    with pytest.raises(ImageError, match=f"^scan.jpg: {re.escape(reason[:20])}"):
        decode_image(data, "scan.jpg")


@pytest.mark.parametrize("ext, kind", [(".jpg", "JPEG"), (".tif", "TIFF"), (".bmp", "BMP"), (".webp", "WebP")])
def test_an_image_of_a_known_format_that_no_decoder_takes_is_called_damaged(ext, kind):
    cut = encoded(ext)[:40]
    with pytest.raises(ImageError, match=f"^x{ext}: damaged .*{kind}|^x{ext}: truncated {kind}"):
        decode_image(cut, "x" + ext)


def test_images_that_decode_are_never_sniffed():
    for ext in (".jpg", ".png", ".tif", ".bmp", ".webp"):
        assert decode_image(encoded(ext)).shape == SMALL.shape
