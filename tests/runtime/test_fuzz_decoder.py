"""Fuzzing the decoder: whatever bytes arrive, the answer is an image or one ImageError — never a crash, never a
hang. Seeds are real files (a blood-cell JPEG, a PNG, a 16-bit TIFF, a DICOM, a JPEG Lossless DICOM as PACS store
radiographs) damaged at random: flipped bytes, cuts, splices."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclf.runtime.preprocess import ImageError, Preprocess, decode_image, jpeg_scale

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
SMALL_MODEL = Preprocess(16, 16, shrink_jpeg=True)  # the blood-cell seed (320x240) then decodes at 1/8 scale


def decodes_or_refuses(data: bytes) -> None:
    """At full size, and shrunk as a small model would have it (whatever size the damaged header claims)."""
    for scale in {1, jpeg_scale(data, SMALL_MODEL)}:
        try:
            image = decode_image(data, "fuzzed", scale=scale)
        except ImageError as exc:
            assert str(exc).startswith("fuzzed: ") and "\n" not in str(exc)
            continue
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 1


def expected_seeds() -> int:
    """Without pydicom, DICOM is refused in one line anyway; without GDCM, compressed DICOM likewise."""
    return 3 + (importlib.util.find_spec("pydicom") is not None) * (1 + (importlib.util.find_spec("gdcm") is not None))


@pytest.fixture(scope="module")
def seeds(blood_cell_images, tmp_path_factory) -> list[bytes]:
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    ok, tiff = cv2.imencode(".tif", np.random.default_rng(1).integers(0, 65535, (24, 32, 3), dtype=np.uint16))
    files = [blood_cell_images[0].read_bytes(), png.tobytes(), tiff.tobytes()]
    if expected_seeds() > 3:
        from tests.image_files import RAMP, dicom_bytes, gdcm_transcoded

        files.append(dicom_bytes(RAMP.astype(np.uint16), WindowCenter=100, WindowWidth=200))
        if expected_seeds() > 4:
            plain = dicom_bytes(RAMP.astype(np.uint16) * 16, BitsStored=12, HighBit=11)
            files.append(gdcm_transcoded(plain, "JPEGLosslessProcess14_1", tmp_path_factory.mktemp("gdcm")))
    return files


def test_the_seeds_are_real_files_that_decode(seeds):
    assert len(seeds) == expected_seeds()
    for data in seeds:
        assert decode_image(data, "seed").ndim == 3
    assert jpeg_scale(seeds[0], SMALL_MODEL) == 8 and decode_image(seeds[0], "seed", scale=8).shape == (30, 40, 3)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_are_refused_in_one_line(data):
    decodes_or_refuses(data)


@FUZZ
@given(seed=st.integers(0, 4), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=16),
       cut=st.floats(0.0, 1.0), splice=st.binary(max_size=64))
def test_damaged_real_files(seeds, seed, flips, cut, splice):
    data = bytearray(seeds[seed % len(seeds)])
    for where, value in flips:
        data[min(int(where * len(data)), len(data) - 1)] = value
    cut_at = max(1, int(cut * len(data)))
    decodes_or_refuses(bytes(data[:cut_at]) + splice)
