"""AVIF photos: decoded, turned and mirrored as the file says, found in folders, refused by their header
when over the size limit (runtime/avif.py)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import ImageError, decode_image, read_image
from tests.image_files import RAMP


def test_an_avif_photo_decodes_and_is_found_in_folders(tmp_path):
    from medclf.runtime.inputs import list_images

    bgr = np.dstack([RAMP, RAMP[:, ::-1], np.full_like(RAMP, 90)])
    if not cv2.haveImageWriter(".avif"):
        pytest.skip(f"OpenCV {cv2.__version__} has no AVIF codec")
    ok, encoded = cv2.imencode(".avif", bgr)
    assert ok
    (tmp_path / "fundus.avif").write_bytes(encoded.tobytes())
    assert np.abs(read_image(tmp_path / "fundus.avif").astype(int) - bgr[:, :, ::-1]).max() < 40
    assert [path.name for path in list_images(tmp_path)] == ["fundus.avif"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_avif_photo_is_turned_and_mirrored_as_its_file_says(orientation, blood_cell_images):
    """A phone's portrait photo is stored on its side with a rotation (``irot``) and mirroring (``imir``) to show
    it by; OpenCV decodes the stored pixels. Pillow writes an EXIF orientation as those and reads them back."""
    from PIL import Image, ImageOps, features

    if not (features.check("avif") and cv2.haveImageWriter(".avif")):
        pytest.skip("Pillow or OpenCV here has no AVIF codec")
    photo = Image.open(blood_cell_images[0])
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    photo.save(out, "AVIF", exif=exif.tobytes(), quality=90)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(out.getvalue()))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(out.getvalue(), "portrait.avif"), shown)


def test_an_avif_stating_a_size_over_the_limit_is_refused_as_such_before_decoding():
    """A 60000 x 60000 ``ispe`` was "could not be decoded (damaged, or this OpenCV has no AVIF decoder)"."""
    if not cv2.haveImageWriter(".avif"):
        pytest.skip(f"OpenCV {cv2.__version__} has no AVIF codec")
    data = bytearray(cv2.imencode(".avif", np.dstack([RAMP, RAMP, RAMP]))[1].tobytes())
    at = data.index(b"ispe") + 8  # size, type, version and flags, then width and height
    assert data[at:at + 8] == (64).to_bytes(4, "big") + (32).to_bytes(4, "big")
    data[at:at + 8] = (60000).to_bytes(4, "big") * 2
    with pytest.raises(ImageError, match=r"^huge.avif: image is 60000x60000 pixels, over the 100,000,000-pixel"):
        decode_image(bytes(data), "huge.avif")
