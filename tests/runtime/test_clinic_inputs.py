"""The other files clinics have: CMYK JPEG, BMP, GIF, PGM, linked folders — each decoded to what a
person would see, or refused with one line naming the file. DICOM, TIFF and AVIF have files of their own."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import decode_image, read_image
from tests.image_files import RAMP


def test_a_cmyk_jpeg_becomes_rgb():
    from PIL import Image

    red = Image.new("RGB", (40, 30), (200, 30, 40)).convert("CMYK")
    out = io.BytesIO()
    red.save(out, "JPEG", quality=95)
    image = decode_image(out.getvalue(), "cmyk.jpg")
    assert image.shape == (30, 40, 3)
    assert np.abs(image.reshape(-1, 3).mean(0) - [200, 30, 40]).max() < 12


@pytest.mark.parametrize("suffix", [".bmp", ".tif"])
def test_bmp_and_tiff_decode_like_png(suffix):
    bgr = np.dstack([RAMP, RAMP[:, ::-1], np.full_like(RAMP, 90)])
    ok, encoded = cv2.imencode(suffix, bgr)
    assert ok
    np.testing.assert_array_equal(decode_image(encoded.tobytes(), "x" + suffix), bgr[:, :, ::-1])


def test_a_gif_gives_its_first_frame_and_is_found_in_folders_like_other_images(tmp_path):
    """Web-collected datasets hold GIFs; a file decoded when named is also picked from its folder."""
    from PIL import Image

    from medclf.runtime.inputs import list_images

    first, second = (Image.new("RGB", (40, 30), colour) for colour in ((200, 30, 40), (20, 180, 60)))
    first.save(tmp_path / "Cell.GIF", save_all=True, append_images=[second], duration=100)
    image = read_image(tmp_path / "Cell.GIF")
    assert image.shape == (30, 40, 3)
    assert np.abs(image.reshape(-1, 3).mean(0) - [200, 30, 40]).max() < 12
    assert [path.name for path in list_images(tmp_path)] == ["Cell.GIF"]


def test_a_pgm_film_is_shown_over_the_depth_its_header_states_not_a_guess_from_its_values():
    """``maxval 4095``: a 12-bit film, dim or not (read over 10 bits from its brightest value, 4x too bright)."""
    film = (RAMP.astype(np.uint16) * 4)  # 0-1008 of 4095
    data = b"P5\n# a 12-bit film\n64 32\n4095\n" + film.astype(">u2").tobytes()
    seen = decode_image(data, "film.pgm", color="grey")[:, :, 0]
    np.testing.assert_array_equal(seen, np.rint(film * (255 / 4095)).astype(np.uint8))
    dim = (RAMP // 17).astype(np.uint8)  # 0-15 of maxval 15: four bits, full range
    seen = decode_image(b"P5\n64 32\n15\n" + dim.tobytes(), "four.pgm", color="grey")[:, :, 0]
    np.testing.assert_array_equal(seen, np.rint(dim * 17.0).astype(np.uint8))
    for header in (b"P5\r# scanner 7\r64 32\r15\r", b"P5\n#" + b" long comment" * 60 + b"\n64 32\n15\n"):
        seen = decode_image(header + dim.tobytes(), "four.pgm", color="grey")[:, :, 0]  # were read over 8 bits
        np.testing.assert_array_equal(seen, np.rint(dim * 17.0).astype(np.uint8))


def test_linked_folders_are_followed_once_and_a_link_up_the_tree_does_not_loop(tmp_path):
    from medclf.runtime.inputs import list_images

    patient = tmp_path / "elsewhere" / "patient7"
    patient.mkdir(parents=True)
    (patient / "film.png").write_bytes(b"\x89PNG")
    cls = tmp_path / "data" / "PNEUMONIA"
    cls.mkdir(parents=True)
    (cls / "patient7").symlink_to(patient, target_is_directory=True)  # a dataset assembled from links
    (cls / "again").symlink_to(patient, target_is_directory=True)  # the same folder twice: listed once
    (cls / "up").symlink_to(tmp_path / "data", target_is_directory=True)  # up the tree: a loop, and NORMAL's
    (tmp_path / "data" / "NORMAL").mkdir()
    (tmp_path / "data" / "NORMAL" / "clear.png").write_bytes(b"\x89PNG")
    assert [p.relative_to(cls).as_posix() for p in list_images(cls)] == ["again/film.png"]
