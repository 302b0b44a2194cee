"""TIFFs as scanners and microscopes write them: 16-bit and float values shown as the film, zero-is-white
inverted, plane-by-plane layouts read or refused, thumbnails passed over (runtime/tiff.py)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import ImageError, decode_image
from tests.image_files import RAMP


def test_a_16_bit_tiff_is_scaled_to_8_bits():
    ok, encoded = cv2.imencode(".tif", RAMP.astype(np.uint16) * 257)
    assert ok
    np.testing.assert_array_equal(decode_image(encoded.tobytes(), "x.tif")[:, :, 0], RAMP)


def tiff_bytes(values: np.ndarray) -> bytes:
    """A grey TIFF of ``values`` in their own type, as Pillow writes signed and 32-bit ones (OpenCV's are LZW)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(values).save(out, "TIFF")
    return out.getvalue()


def test_tiffs_of_raw_values_of_any_type_show_the_film_a_16_bit_file_shows():
    """A 12-bit film saved as its raw values in signed 16-bit (a pixel_array written as it is) or 32-bit integers
    reads as the unsigned 16-bit file does (they were spread over their type's whole range: a flat grey the
    model still called). Floats in 0-1 are the usual float image; negative values (a CT slice's units) and
    floats past 1 are shown over the range they hold (a float file of raw values was black and white)."""
    film = RAMP.astype(np.uint16) * 16  # 0-4032: 12 bits held
    seen = decode_image(tiff_bytes(film), "u16.tif")[:, :, 0]
    np.testing.assert_array_equal(seen, np.rint(film / (4095 / 255)).astype(np.uint8))
    for values in (film.astype(np.int16), film.astype(np.int32)):
        np.testing.assert_array_equal(decode_image(tiff_bytes(values), f"{values.dtype}.tif")[:, :, 0], seen)
    raw = decode_image(tiff_bytes(film.astype(np.float32)), "raw.tif")[:, :, 0]
    np.testing.assert_array_equal(raw, np.rint(film / film.max() * 255).astype(np.uint8))
    unit = decode_image(tiff_bytes((RAMP / 255).astype(np.float32)), "unit.tif")[:, :, 0]
    np.testing.assert_array_equal(unit, RAMP)
    units = RAMP.astype(np.int16) * 16 - 1024  # -1024 (air) .. 3008
    shown = decode_image(tiff_bytes(units), "ct.tif")[:, :, 0]
    assert shown.min() == 0 and shown.max() == 255 and np.all(np.diff(shown.astype(int), axis=1) >= 0)


def tifffile_bytes(values: np.ndarray, **options) -> bytes:
    """A TIFF as tifffile writes it: layouts OpenCV cannot write, as scanners' and microscopes' software does."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile (medclf[dev]) is not installed")
    out = io.BytesIO()
    tifffile.imwrite(out, values, **options)
    return out.getvalue()


def test_a_16_bit_or_float_colour_tiff_stored_plane_by_plane_is_refused_not_scrambled():
    """``tifffile.imwrite`` of a channels-first array: OpenCV read the red plane as pixels and left the bottom
    half unset (another answer each time); 8-bit ones it reads right."""
    bgr = np.dstack([RAMP, RAMP[:, ::-1], np.full_like(RAMP, 90)])
    rgb = bgr[:, :, ::-1]
    planes = np.ascontiguousarray(np.moveaxis(rgb, 2, 0))
    np.testing.assert_array_equal(decode_image(tifffile_bytes(planes, planarconfig="separate"), "p8.tif"), rgb)
    for values in (planes.astype(np.uint16) * 257, planes.astype(np.float32) / 255):
        with pytest.raises(ImageError, match=r"scan\.tif: .*TIFF stored one plane per colour, which OpenCV misreads"):
            decode_image(tifffile_bytes(values, planarconfig="separate"), "scan.tif")
    np.testing.assert_array_equal(decode_image(tifffile_bytes(rgb.astype(np.uint16) * 257), "c16.tif"), rgb)


def test_a_grey_tiff_whose_zero_is_white_is_shown_as_the_film_at_every_depth():
    """Film digitisers write MinIsWhite; OpenCV inverts 8-bit files itself, 16-bit and float ones not. A 12-bit
    film in 16 bits is inverted over the 12 bits it holds, as its MinIsBlack twin is read (over 16 it came out
    all but white)."""
    film = RAMP
    for values in (255 - film, (255 - film).astype(np.uint16) * 257, 1 - film.astype(np.float32) / 255):
        seen = decode_image(tifffile_bytes(values, photometric="miniswhite"), "neg.tif", color="grey")[:, :, 0]
        assert np.abs(seen.astype(int) - film).max() <= 1, values.dtype
    twelve = decode_image(tifffile_bytes((4095 - film.astype(np.uint16) * 16), photometric="miniswhite"), "n.tif",
                          color="grey")
    np.testing.assert_array_equal(twelve, decode_image(tifffile_bytes(film.astype(np.uint16) * 16), "p.tif",
                                                       color="grey"))


def test_a_16_bit_grey_tiff_marked_plane_by_plane_is_read_its_one_plane_is_the_picture():
    import struct

    film = RAMP.astype(np.uint16) * 257
    data = bytearray(tifffile_bytes(film, resolution=(1, 1)))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):  # ResolutionUnit's entry becomes PlanarConfig 2
        if struct.unpack_from("<H", data, ifd + 2 + 12 * entry)[0] == 296:
            struct.pack_into("<HHII", data, ifd + 2 + 12 * entry, 284, 3, 1, 2)
    np.testing.assert_array_equal(decode_image(bytes(data), "grey16.tif", color="grey")[:, :, 0], RAMP)


def test_a_tiff_whose_first_page_is_a_thumbnail_is_classified_by_its_full_picture():
    tifffile = pytest.importorskip("tifffile", reason="tifffile (medclf[dev]) is not installed")
    bgr = np.dstack([RAMP, RAMP[:, ::-1], np.full_like(RAMP, 90)])
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as writer:
        writer.write(rgb[::4, ::4], subfiletype=1)  # reduced resolution, first
        writer.write(rgb)
    np.testing.assert_array_equal(decode_image(out.getvalue(), "slide.tif"), rgb)


def tiff_stating_width(width: int) -> bytes:
    """A small real TIFF whose header's ImageWidth says ``width``."""
    import struct

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, RAMP)
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, first)[0]):
        at = first + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 256:  # ImageWidth, as a LONG
            struct.pack_into("<HHII", data, at, 256, 4, 1, width)
    return bytes(data)


def test_a_tiff_stating_an_impossible_or_too_wide_size_is_said_so_not_in_opencvs_assertion_text():
    """ImageWidth 2^31 + 64 gave "cannot decode image (size.width > 0)"; a side past OpenCV's own limit,
    "(static_cast<size_t>(size.width) <= CV_IO_MAX_IMAGE_WIDTH)" (not over the pixel limit: 32 rows)."""
    with pytest.raises(ImageError, match=r"^wide.tif: damaged header \(the image size it states is impossible\)$"):
        decode_image(tiff_stating_width((1 << 31) + 64), "wide.tif")
    with pytest.raises(ImageError, match=r"^strip.tif: image has a side over OpenCV's 1,048,576-pixel limit"):
        decode_image(tiff_stating_width((1 << 20) + 1), "strip.tif")
