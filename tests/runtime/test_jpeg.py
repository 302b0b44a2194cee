"""JPEG decoding: a damaged file is refused by name, a whole one gives OpenCV's pixels exactly, turned as EXIF says."""

from __future__ import annotations

import io
import itertools

import cv2
import numpy as np
import pytest

from medclf.runtime.jpeg import exif_orientation, header_frame
from medclf.runtime.preprocess import ImageError, Preprocess, decode_image
from medclf.runtime.stream import decoded

OPENCV_FLAGS = {("rgb", 1): cv2.IMREAD_COLOR, ("grey", 1): cv2.IMREAD_COLOR,
                ("rgb", 2): cv2.IMREAD_REDUCED_COLOR_2, ("grey", 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
                ("rgb", 4): cv2.IMREAD_REDUCED_COLOR_4, ("grey", 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
                ("rgb", 8): cv2.IMREAD_REDUCED_COLOR_8, ("grey", 8): cv2.IMREAD_REDUCED_GRAYSCALE_8}


def opencv(data: bytes, color: str, scale: int) -> np.ndarray:
    """What OpenCV alone makes of the file, in medclf's layout (the decoder used before this one)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), OPENCV_FLAGS[color, scale])
    if image.ndim == 2:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if color == "rgb" else cv2.COLOR_BGR2GRAY).reshape(
        *image.shape[:2], -1)


def damaged(data: bytes) -> bytes:
    """The file with 200 bytes of its compressed picture zeroed halfway through, as a bad sector leaves it."""
    middle = len(data) // 2
    return data[:middle] + bytes(200) + data[middle + 200:]


def marker_in_scan(data: bytes) -> bytes:
    """The file with a stuffed ``FF 00`` in its compressed data turned into ``FF 5A``: a one-bit error that reads
    as a marker, ending the picture there (OpenCV fills the rest with grey; TurboJPEG says "Unsupported marker")."""
    stuffed = data.index(b"\xff\x00", data.index(b"\xff\xda") + 2)
    return data[:stuffed + 1] + b"\x5a" + data[stuffed + 2:]


def frame_in_scan(data: bytes) -> bytes:
    """The same error reading as a frame marker TurboJPEG does not decode (``FF C6``, SOF6): TurboJPEG calls it
    an unsupported process, as it does a lossless JPEG's whole header (which OpenCV decodes); here the header
    declared a baseline frame, so the marker sits inside the compressed data and the rest of the picture is lost."""
    stuffed = data.index(b"\xff\x00", data.index(b"\xff\xda") + 2)
    return data[:stuffed + 1] + b"\xc6" + data[stuffed + 2:]


def with_orientation(data: bytes, orientation: int, byte_order: bytes = b"MM") -> bytes:
    """The JPEG with an EXIF APP1 segment holding one tag, orientation, in either TIFF byte order."""
    order = "big" if byte_order == b"MM" else "little"
    entry = ((0x0112).to_bytes(2, order) + (3).to_bytes(2, order) + (1).to_bytes(4, order)
             + orientation.to_bytes(2, order) + bytes(2))
    tiff = byte_order + (42).to_bytes(2, order) + (8).to_bytes(4, order) + (1).to_bytes(2, order) + entry + bytes(4)
    exif = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + data[2:]


def test_opencv_alone_decodes_a_damaged_jpeg_as_if_it_were_whole(blood_cell_images, capfd):
    """What this module is for: grey where the data was lost, and an anonymous line on stderr."""
    image = cv2.imdecode(np.frombuffer(damaged(blood_cell_images[0].read_bytes()), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3)
    assert capfd.readouterr().err.strip() == "Corrupt JPEG data: premature end of data segment"


@pytest.mark.parametrize("cut, reason", [
    (damaged, r"damaged JPEG, part of the picture is lost \(Corrupt JPEG data: premature end of data segment\)"),
    (lambda data: data[:len(data) * 2 // 3], r"truncated JPEG \(the file ends before the picture does\)"),
    (marker_in_scan, r"damaged JPEG, part of the picture is lost \(Unsupported marker type 0x5a\)"),
    (frame_in_scan, r"damaged JPEG, part of the picture is lost \(Unsupported JPEG process: SOF type 0xc6\)"),
], ids=["zeroed", "truncated", "marker in the scan", "frame marker in the scan"])
def test_a_damaged_jpeg_is_refused_by_name_and_nothing_anonymous_reaches_stderr(cut, reason, blood_cell_images, capfd):
    whole = blood_cell_images[0].read_bytes()
    with pytest.raises(ImageError, match=rf"^cell 7\.jpeg: {reason}$"):
        decode_image(cut(whole), "cell 7.jpeg")
    assert capfd.readouterr().err == ""


def test_only_a_frame_marker_after_a_decodable_header_counts_as_damage(blood_cell_images):
    """A lossless JPEG (SOF3 in its header) earns TurboJPEG's "unsupported process" too, and goes on to OpenCV."""
    whole = blood_cell_images[0].read_bytes()
    assert header_frame(whole) == 0xC0 and header_frame(frame_in_scan(whole)) == 0xC0
    sof = whole.index(b"\xff\xc0")
    assert header_frame(whole[:sof + 1] + b"\xc3" + whole[sof + 2:]) == 0xC3
    assert header_frame(whole[:sof]) is None


def cmyk_jpeg(path) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(path).convert("CMYK").save(out, "JPEG", quality=90)  # Adobe CMYK, as print workflows save
    return out.getvalue()


@pytest.mark.parametrize("cut, reason", [
    (damaged, r"damaged JPEG, part of the picture is lost \(Corrupt JPEG data: premature end of data segment\)"),
    (lambda data: data[:len(data) * 2 // 3], r"truncated JPEG \(the file ends before the picture does\)"),
], ids=["zeroed", "truncated"])
@pytest.mark.parametrize("color, scale", [("rgb", 1), ("grey", 2)])
def test_a_damaged_cmyk_jpeg_is_refused_by_name_too(cut, reason, color, scale, blood_cell_images, capfd):
    """OpenCV decodes CMYK files (TurboJPEG makes no RGB of them), but TurboJPEG checks them first."""
    whole = cmyk_jpeg(blood_cell_images[0])
    assert (decode_image(whole, color=color, scale=scale) == opencv(whole, color, scale)).all()
    with pytest.raises(ImageError, match=rf"^print\.jpg: {reason}$"):
        decode_image(cut(whole), "print.jpg", color=color, scale=scale)
    assert capfd.readouterr().err == ""


def test_a_batch_goes_on_past_a_damaged_jpeg(tmp_path, blood_cell_images):
    (tmp_path / "bad.jpeg").write_bytes(damaged(blood_cell_images[0].read_bytes()))
    paths = [str(blood_cell_images[1]), str(tmp_path / "bad.jpeg"), str(blood_cell_images[2])]
    results = list(decoded(paths, Preprocess(128, 128)))
    assert [reason is None for _, _, reason in results] == [True, False, True]
    assert results[1][2].startswith("damaged JPEG")


def test_harmless_warnings_still_decode(blood_cell_images):
    """Stray bytes before the end marker: libjpeg warns "Corrupt JPEG data: 2 extraneous bytes"; nothing is lost."""
    whole = blood_cell_images[0].read_bytes()
    assert whole.endswith(b"\xff\xd9")
    padded = whole[:-2] + b"\x00\x00" + whole[-2:]
    np.testing.assert_array_equal(decode_image(padded), decode_image(whole))


@pytest.mark.parametrize("color, scale", list(itertools.product(["rgb", "grey"], [1, 2, 4, 8])))
def test_pixels_are_opencvs_exactly_at_every_scale(color, scale, blood_cells, chest_xray, cataract):
    """Models trained on OpenCV's pixels keep them: the same libjpeg-turbo, the same maths."""
    files = [next((folder / name).iterdir()) for folder, name in
             [(blood_cells, "TEST/EOSINOPHIL"), (chest_xray, "test/NORMAL"), (cataract, "cataract")]]
    for path in files:
        data = path.read_bytes()
        np.testing.assert_array_equal(decode_image(data, str(path), color, scale), opencv(data, color, scale),
                                      err_msg=str(path))


@pytest.mark.parametrize("byte_order", [b"MM", b"II"])
def test_every_exif_orientation_turns_the_image_as_opencv_does(byte_order, blood_cell_images):
    whole = blood_cell_images[0].read_bytes()
    for orientation in range(1, 9):
        data = with_orientation(whole, orientation, byte_order)
        assert exif_orientation(data) == orientation
        for color, scale in [("rgb", 1), ("grey", 2)]:
            np.testing.assert_array_equal(decode_image(data, "x.jpg", color, scale), opencv(data, color, scale),
                                          err_msg=f"orientation {orientation}, {color}, 1/{scale}")


def test_fill_bytes_before_a_marker_hide_neither_the_frames_size_nor_the_orientation(blood_cell_images):
    """The standard allows 0xFF fill bytes before any marker; read as a marker, they hid a 20000x20000 frame
    from the pixel limit (TurboJPEG then allocated 1.2 GB before failing) and the EXIF orientation with it."""
    whole = blood_cell_images[0].read_bytes()
    turned = with_orientation(whole, 6)
    filled = turned[:2] + b"\xff" + turned[2:]  # one fill byte before the EXIF segment
    assert exif_orientation(filled) == 6
    np.testing.assert_array_equal(decode_image(filled, "x.jpg"), opencv(turned, "rgb", 1))
    frame = whole.index(b"\xff\xc0")
    huge = whole[:frame] + b"\xff" + whole[frame:frame + 5] + (20000).to_bytes(2, "big") * 2 + whole[frame + 9:]
    with pytest.raises(ImageError, match="20000x20000 pixels, over the"):
        decode_image(huge, "bomb.jpg")


@pytest.mark.parametrize("value", [0, 9, 255])
def test_an_orientation_out_of_range_is_ignored(value, blood_cell_images):
    whole = blood_cell_images[0].read_bytes()
    assert exif_orientation(with_orientation(whole, value)) == 1
    assert exif_orientation(whole) == 1


@pytest.mark.parametrize("sampling", [0x13, 0x14, 0x41])
def test_subsamplings_turbojpeg_cannot_name_go_to_opencv(sampling, blood_cell_images):
    """Luma sampled 1x3 or 1x4: TurboJPEG's header reader gives up (simplejpeg 1.9 even raises KeyError for
    4:4:1); OpenCV decodes them, as it did before this module. 4x1 (4:1:1) TurboJPEG reads itself."""
    data = bytearray(blood_cell_images[0].read_bytes())
    frame = data.index(b"\xff\xc0")  # SOF0: marker, length, precision, height, width, components, then per component
    data[frame + 11] = sampling  # the first (luma) component's horizontal and vertical sampling factors
    np.testing.assert_array_equal(decode_image(bytes(data), "odd.jpg"), opencv(bytes(data), "rgb", 1))
