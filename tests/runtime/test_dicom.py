"""DICOM as clinics store it: the modality LUT, VOI LUT and window applied, MONOCHROME1 inverted,
colour, palette and multi-frame files, compressed transfer syntaxes decoded to the uncompressed file's pixels —
or refused with one line naming the file (runtime/dicom.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import ImageError, decode_image, read_image
from tests.image_files import RAMP, dicom_bytes, gdcm_transcoded

pydicom = pytest.importorskip("pydicom", reason="pydicom (medclf[dicom]) is not installed")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402


def test_dicom_goes_through_the_modality_lut_and_its_window():
    stored = (RAMP.astype(np.uint16) * 4)  # 0..1008
    # physical = 2 * stored - 1000 → -1000..1016; the window shows -500..500, everything else saturates
    data = dicom_bytes(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0.5, WindowWidth=1001)
    image = decode_image(data, "ct.dcm", color="grey")[:, :, 0]
    physical = 2.0 * stored - 1000
    expected = np.rint(np.clip((physical + 500) / 1000, 0, 1) * 255)
    assert np.abs(image.astype(int) - expected).max() <= 1
    assert image[:, 0].max() == 0 and image[:, -1].min() == 255


def test_monochrome1_is_inverted_so_bone_stays_bright():
    normal = decode_image(dicom_bytes(RAMP.astype(np.uint16)), "a.dcm", color="grey")
    inverted = decode_image(dicom_bytes(RAMP.astype(np.uint16), PhotometricInterpretation="MONOCHROME1"),
                            "b.dcm", color="grey")
    np.testing.assert_array_equal(inverted, 255 - normal)
    assert normal[0, 0, 0] == 0 and normal[0, -1, 0] == 255  # no window: the values' own full range
    for shape in ({"PresentationLUTShape": "INVERSE"},  # MONOCHROME2 shown inverse (PS3.3 C.11.6)
                  {"PresentationLUTShape": "INVERSE", "PhotometricInterpretation": "MONOCHROME1"}):  # inverted once
        shown = decode_image(dicom_bytes(RAMP.astype(np.uint16), **shape), "c.dcm", color="grey")
        np.testing.assert_array_equal(shown, inverted)


def test_an_8_bit_colour_dicom_gives_its_pixels_unstretched():
    """An 8-bit colour DICOM (a fundus photo from a camera's PACS link) gives exactly the pixels its JPEG
    would — not stretched to the full range."""
    dim = np.dstack([RAMP, RAMP[:, ::-1], np.full_like(RAMP, 90)]) // 2 + 20  # 20..146: a dim photo
    np.testing.assert_array_equal(decode_image(dicom_bytes(dim), "colour.dcm"), dim)


def test_a_multi_frame_dicom_gives_its_first_frame(tmp_path):
    frames = np.stack([RAMP, 255 - RAMP]).astype(np.uint8)
    path = tmp_path / "cine.dcm"
    path.write_bytes(dicom_bytes(frames, NumberOfFrames=2))
    first = read_image(path, "grey")[:, :, 0]
    assert first.shape == (32, 64) and first[0, 0] == 0 and first[0, -1] == 255


def test_a_palette_colour_dicom_shows_its_colours_not_its_indices():
    """Ultrasound and secondary captures store indices into a colour table (it was read as a grey ramp of them)."""
    indices = np.zeros((32, 64), np.uint8)
    indices[:, 32:] = 1
    tables = np.zeros((3, 256), np.uint16)
    tables[0, 0] = tables[1, 1] = 0xFFFF  # index 0 red, 1 green, in 16-bit tables
    tags = {f"{colour}PaletteColorLookupTable{part}": value for colour, table in zip(("Red", "Green", "Blue"), tables)
            for part, value in (("Descriptor", [256, 0, 16]), ("Data", table.tobytes()))}
    shown = decode_image(dicom_bytes(indices, PhotometricInterpretation="PALETTE COLOR", **tags), "us.dcm")
    assert shown[0, 0].tolist() == [255, 0, 0] and shown[0, -1].tolist() == [0, 255, 0]


@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEGLSLossless", "JPEG2000Lossless", "RLELossless"])
def test_compressed_radiographs_decode_to_the_pixels_of_the_uncompressed_file(syntax, tmp_path):
    """PACS store radiographs compressed, JPEG Lossless most often: each decodes to exactly what the
    uncompressed file gives."""
    plain = dicom_bytes(RAMP.astype(np.uint16) * 16, BitsStored=12, HighBit=11, WindowCenter=2000, WindowWidth=3000)
    compressed = gdcm_transcoded(plain, syntax, tmp_path)
    assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
    np.testing.assert_array_equal(decode_image(compressed, "cr.dcm", color="grey"),
                                  decode_image(plain, "cr.dcm", color="grey"))


@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEGBaselineProcess1"])
def test_a_compressed_dicom_whose_picture_is_cut_short_is_refused_by_name(syntax, tmp_path):
    """A frame cut short (a bad sector, a transfer stopped mid-file): GDCM's libjpeg fills the rest with grey or
    black and only warns, anonymously, on stderr — the file was classified as if whole. A file cut short before
    its pixel data ends is called truncated (pydicom read it as an object without an image)."""
    from pydicom.encaps import encapsulate, generate_frames

    stored = np.tile(np.arange(0, 256, dtype=np.uint8), (192, 1))
    compressed = pydicom.dcmread(io.BytesIO(gdcm_transcoded(dicom_bytes(stored), syntax, tmp_path)))
    (frame,) = generate_frames(compressed.PixelData, number_of_frames=1)
    compressed.PixelData = encapsulate([frame[:len(frame) * 6 // 10] + b"\xff\xd9"])
    damaged = io.BytesIO()
    compressed.save_as(damaged)
    with pytest.raises(ImageError, match=r"^cut.dcm: damaged compressed DICOM \(JPEG .*\), part of the picture is "
                                         r"lost \(Corrupt JPEG data: premature end of data segment\)$"):
        decode_image(damaged.getvalue(), "cut.dcm")
    whole = gdcm_transcoded(dicom_bytes(stored), syntax, tmp_path)
    with pytest.raises(ImageError, match=r"^short.dcm: truncated DICOM"):
        decode_image(whole[:len(whole) * 9 // 10], "short.dcm")


def test_what_others_print_while_a_compressed_dicom_decodes_is_neither_blamed_on_it_nor_lost(tmp_path,
                                                                                              monkeypatch, capfd):
    """stderr is the process's: medclf-run's error line for another file, printed while this one decoded, was
    taken for this file's decoder warning (an intact file refused) and then dropped."""
    import os

    import pydicom.pixels

    intact = gdcm_transcoded(dicom_bytes(np.tile(np.arange(0, 256, dtype=np.uint8), (192, 1))),
                             "JPEGLosslessProcess14_1", tmp_path)  # GDCM's: its libjpeg's warnings listened for
    decode = pydicom.pixels.pixel_array
    other = b"error other.dcm: damaged compressed DICOM (JPEG), part of the picture is lost (Corrupt JPEG data: " \
            b"premature end of data segment)\n"

    def meanwhile(*args, **kwargs):  # another thread's line lands while this file decodes
        os.write(2, other)
        return decode(*args, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", meanwhile)
    assert decode_image(intact, "intact.dcm").shape == (192, 256, 3)
    assert capfd.readouterr().err == other.decode()


def test_a_lossless_jpeg_saved_on_its_own_is_named_for_what_it_is_not_called_damaged(tmp_path):
    """A DICOM's JPEG Lossless frame saved as a .jpg is whole: OpenCV's 8-bit libjpeg cannot decode it, and the
    error said "damaged or cut-short JPEG"."""
    from pydicom.encaps import generate_frames

    compressed = gdcm_transcoded(dicom_bytes(RAMP.astype(np.uint16) * 16, BitsStored=12, HighBit=11),
                                 "JPEGLosslessProcess14_1", tmp_path)
    (frame,) = generate_frames(pydicom.dcmread(io.BytesIO(compressed)).PixelData, number_of_frames=1)
    with pytest.raises(ImageError, match=r"^cr.jpg: lossless JPEG, which medclf does not decode: save it as a "
                                         r"16-bit PNG or TIFF$"):
        decode_image(frame, "cr.jpg")


def test_a_compressed_dicom_without_a_decoder_says_in_one_line_what_would_read_it():
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless  # High-Throughput JPEG 2000: neither GDCM nor Pillow reads it

    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP.astype(np.uint16))))
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    dataset.PixelData = encapsulate([b"\xff\x4f" + bytes(64)])
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    with pytest.raises(ImageError, match=r"^ht.dcm: compressed DICOM \(High-Throughput JPEG 2000.*\) and no decoder "
                                         r"for it is installed: .*pylibjpeg") as refused:
        decode_image(out.getvalue(), "ht.dcm")
    assert "\n" not in str(refused.value)
    nema = pydicom.data.get_testdata_file("JPGExtended.dcm")  # NEMA's 12-bit JPEG Extended sample (NM1_JPLY)
    with pytest.raises(ImageError, match=r"JPGExtended.dcm: compressed DICOM \(JPEG Extended.*\) of 12-bit samples, "
                                         r"which GDCM and Pillow do not decode: pip install pylibjpeg"):
        read_image(nema)


def test_the_file_own_sigmoid_window_and_voi_lut_are_applied_as_the_standard_defines():
    """VOI LUT Function SIGMOID: y = 1 / (1 + exp(-4 (x - c) / w)) of the output range (PS3.3 C.11.2.1.3.1);
    a VOI LUT Sequence (here a table that inverts the 64 grey levels) wins over a window."""
    stored = RAMP.astype(np.uint16)
    sigmoid = decode_image(dicom_bytes(stored, WindowCenter=128, WindowWidth=100, VOILUTFunction="SIGMOID"),
                           "s.dcm", color="grey")[:, :, 0]
    expected = np.rint(255 / (1 + np.exp(-4 * (stored.astype(float) - 128) / 100)))
    assert np.abs(sigmoid.astype(int) - expected).max() <= 1
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUT Data
    inverted = decode_image(dicom_bytes(stored, VOILUTSequence=[lut], WindowCenter=128, WindowWidth=100),
                            "lut.dcm", color="grey")[:, :, 0]
    np.testing.assert_array_equal(inverted, 255 - stored)
    lut.LUTDescriptor = [4096, 0, 16]  # a 12-bit table declared 16 bits, as some vendors write: near black (0-15)
    lut.LUTData = list(range(4096))
    film = stored * 16
    shown = decode_image(dicom_bytes(film, VOILUTSequence=[lut], BitsStored=12, HighBit=11), "lut.dcm",
                         color="grey")[:, :, 0]
    np.testing.assert_array_equal(shown, np.rint(film / 4095 * 255).astype(np.uint8))


def test_an_enhanced_dicom_takes_rescale_and_window_from_its_first_frame_functional_groups():
    """Enhanced CT/MR/XA objects keep rescale and window in (shared or per-frame) functional groups."""
    stored = RAMP.astype(np.uint16) * 4
    classic = decode_image(dicom_bytes(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0.5,
                                       WindowWidth=1001), "classic.dcm", color="grey")
    rescale, window, frame = Dataset(), Dataset(), Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2, -1000, "HU"
    window.WindowCenter, window.WindowWidth = 0.5, 1001
    frame.PixelValueTransformationSequence, frame.FrameVOILUTSequence = [rescale], [window]
    frames = np.stack([stored, stored[:, ::-1]])
    enhanced = decode_image(dicom_bytes(frames, NumberOfFrames=2, SharedFunctionalGroupsSequence=[frame]),
                            "enhanced.dcm", color="grey")
    np.testing.assert_array_equal(enhanced, classic)


def test_a_dicom_without_pixels_says_what_it_is():
    """PACS exports hold structured reports and presentation states beside the images."""
    from pydicom.uid import EnhancedSRStorage

    data = dicom_bytes(RAMP.astype(np.uint16))
    report = pydicom.dcmread(io.BytesIO(data))
    del report.PixelData
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = EnhancedSRStorage
    out = io.BytesIO()
    report.save_as(out, enforce_file_format=True)
    with pytest.raises(ImageError, match=r"^sr.dcm: a DICOM object without an image \(Enhanced SR Storage\)$"):
        decode_image(out.getvalue(), "sr.dcm")


def test_a_cts_padding_is_left_out_of_the_range_shown_and_float_pixel_data_is_an_image():
    """Without a window, a CT's padding (-2000, outside the body) stretched the range and squeezed the body's
    contrast by a third; a Float Pixel Data object (a parametric map) was "a DICOM object without an image"."""
    body = RAMP.astype(np.int16) * 4 - 1024  # -1024 (air) .. -4
    padded = body.copy()
    padded[:, :8] = -2000
    stored = padded.astype(np.uint16)  # as the file holds it, PixelRepresentation 1 (signed)
    shown = decode_image(dicom_bytes(stored, PixelRepresentation=1, PixelPaddingValue=-2000), "ct.dcm", color="grey")
    assert shown[:, 8:].min() == 0 and shown[:, 8:].max() == 255 and (shown[:, :8] == 0).all()
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP.astype(np.uint16))))
    del dataset.PixelData
    dataset.BitsAllocated, dataset.FloatPixelData = 32, (RAMP / 255).astype(np.float32).tobytes()
    for name in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(dataset, name)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    floats = decode_image(out.getvalue(), "map.dcm", color="grey")[:, :, 0]  # over the range it holds
    np.testing.assert_array_equal(floats, np.rint(RAMP / RAMP.max() * 255).astype(np.uint8))
    masked = (RAMP / 255).astype(np.float32)
    masked[:, :4] = np.nan  # outside the map's mask: the whole image came out black
    dataset.FloatPixelData = masked.tobytes()
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    floats = decode_image(out.getvalue(), "map.dcm", color="grey")[:, :, 0]
    assert (floats[:, :4] == 0).all() and floats[:, 4:].max() == 255


def damaged_frame(pixels: np.ndarray, syntax: str, tmp_path, damage) -> bytes:
    """``pixels`` compressed by GDCM into ``syntax``, its one frame then passed through ``damage``."""
    from pydicom.encaps import encapsulate, generate_frames

    compressed = pydicom.dcmread(io.BytesIO(gdcm_transcoded(dicom_bytes(pixels), syntax, tmp_path)))
    (frame,) = generate_frames(compressed.PixelData, number_of_frames=1)
    compressed.PixelData = encapsulate([damage(frame)])
    out = io.BytesIO()
    compressed.save_as(out)
    return out.getvalue()


def without_four_bytes_of_siz(frame: bytes) -> bytes:
    at = frame.find(b"\xff\x51")  # JPEG 2000's image and tile size marker
    return frame[:at + 10] + frame[at + 14:]


def with_a_stray_byte_before_dqt(frame: bytes) -> bytes:
    at = frame.find(b"\xff\xdb")
    return frame[:at] + b"\x00" + frame[at:]


@pytest.mark.parametrize("syntax, pixels, damage", [
    ("JPEG2000Lossless", RAMP, without_four_bytes_of_siz),
    ("JPEGBaselineProcess1", RAMP, with_a_stray_byte_before_dqt),
    ("JPEGBaselineProcess1", np.dstack([RAMP, RAMP[::-1], RAMP]), with_a_stray_byte_before_dqt),
])
def test_a_damaged_frame_gdcm_aborts_on_is_one_files_error_not_the_end_of_the_process(syntax, pixels, damage,
                                                                                       tmp_path):
    """GDCM ended the whole process (an uncaught C++ exception: SIGABRT) on such frames: a batch and all its
    answers lost, no file named. Decoded here in a child process, which such a frame would kill."""
    path = tmp_path / "damaged.dcm"
    path.write_bytes(damaged_frame(pixels.astype(np.uint8), syntax, tmp_path, damage))
    code = ("import sys\nfrom medclf.runtime.preprocess import ImageError, read_image\ntry:\n"
            "    print(read_image(sys.argv[1]).shape)\nexcept ImageError as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-300:]
    assert done.stdout.startswith(f"{path}: damaged compressed DICOM") or done.stdout.startswith(f"{path}: unreadable")


def test_an_rgb_jpeg_dicom_keeps_its_colours_and_signed_or_deep_frames_their_values(tmp_path):
    """The standard's RGB JPEG frames hold R, G, B untransformed, which libjpeg reads as YCbCr without a marker
    (86 grey levels off when such frames went to it); a signed 8-bit grey frame went to it too (142 off); colour
    JPEG 2000 over 8 bits went to Pillow, which refuses it, where GDCM decodes it."""
    from PIL import Image
    from pydicom.encaps import encapsulate

    rgb = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8), (9, 9), 3)
    rgb[:, :40, 0] = 250
    encoded = io.BytesIO()  # components R, G, B themselves (no colour transform), and no JFIF or Adobe marker
    Image.frombytes("YCbCr", (128, 96), rgb.tobytes()).save(encoded, "JPEG", quality=95, subsampling=0)
    frame = encoded.getvalue()
    frame = frame[:2] + frame[4 + int.from_bytes(frame[4:6], "big"):]
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(rgb)))
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    assert np.abs(decode_image(out.getvalue(), "rgb.dcm").astype(int) - rgb).mean() < 2
    grey = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (96, 128), dtype=np.uint8), (9, 9), 3)
    signed = dicom_bytes((grey.astype(np.int16) - 128).astype(np.int8).view(np.uint8), PixelRepresentation=1)
    compressed = gdcm_transcoded(signed, "JPEGBaselineProcess1", tmp_path)
    shown, stored = (decode_image(data, "s.dcm", "grey").astype(int) for data in (compressed, signed))
    assert np.abs(shown - stored).mean() < 1
    deep = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 4095, (96, 128, 3)).astype(np.uint16), (9, 9), 3)
    plain = dicom_bytes(deep, BitsStored=12, HighBit=11)
    np.testing.assert_array_equal(decode_image(gdcm_transcoded(plain, "JPEG2000Lossless", tmp_path), "c.dcm"),
                                  decode_image(plain, "c.dcm"))


def test_damaged_and_absurd_dicoms_are_refused_with_one_line():
    data = dicom_bytes(RAMP.astype(np.uint16))
    with pytest.raises(ImageError, match=r"^cut.dcm: unreadable DICOM"):
        decode_image(data[: len(data) // 2], "cut.dcm")
    huge = dicom_bytes(np.zeros((2, 2), np.uint16), Rows=60000, Columns=60000)
    with pytest.raises(ImageError, match="over the 100,000,000-pixel limit"):
        decode_image(huge, "huge.dcm")


def test_dicoms_without_the_preamble_are_read_and_found_in_folders(tmp_path):
    """Older software writes DICOM without the 128-byte preamble and ``DICM``: from the meta header on, or the
    bare data set (ACR-NEMA style, implicit VR). Both were "not a readable image (unknown format)"."""
    from medclf.runtime.inputs import list_images

    stored = RAMP.astype(np.uint16) * 16
    whole = dicom_bytes(stored, BitsStored=12, HighBit=11)
    dataset = pydicom.dcmread(io.BytesIO(whole))
    dataset.file_meta, dataset.preamble = FileMetaDataset(), None
    bare = io.BytesIO()
    dataset.save_as(bare, implicit_vr=True, little_endian=True)
    expected = decode_image(whole, "scan.dcm", color="grey")
    for name, data in (("meta", whole[132:]), ("bare", bare.getvalue())):
        assert not data.startswith(b"\x00" * 128) and data[128:132] != b"DICM"
        np.testing.assert_array_equal(decode_image(data, name, color="grey"), expected)
        (tmp_path / name).write_bytes(data)
    assert [path.name for path in list_images(tmp_path)] == ["bare", "meta"]


def test_a_pacs_export_of_dicoms_without_extensions_is_found_in_its_folder(tmp_path):
    """PACS exports name slices IM0001 or by UID (``1.2.840....100``), with no extension; DICOMDIR is an index."""
    from medclf.runtime.inputs import list_images

    study = tmp_path / "study" / "series"
    study.mkdir(parents=True)
    slice_ = dicom_bytes(RAMP.astype(np.uint16))
    for name in ("IM0001", "1.2.840.113619.2.55.3.100", "scan.dcm"):
        (study / name).write_bytes(slice_)
    (study / "DICOMDIR").write_bytes(slice_)
    (study / "README").write_text("not an image")
    (study / "notes.txt").write_bytes(slice_)  # a known other extension is not opened
    os.mkfifo(study / "IM0002")  # opening a FIFO would block the listing
    found = sorted(path.name for path in list_images(tmp_path))
    assert found == ["1.2.840.113619.2.55.3.100", "IM0001", "scan.dcm"]
