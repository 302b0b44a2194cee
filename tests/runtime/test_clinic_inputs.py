"""The files clinics have: CMYK JPEG, BMP, TIFF (8/16-bit), and DICOM with its modality LUT, window and
MONOCHROME1 — each decoded to what a person would see, or refused with one line naming the file."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import ImageError, decode_image, read_image

pydicom = pytest.importorskip("pydicom", reason="pydicom (medclf[dicom]) is not installed")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

RAMP = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))  # 32x64, dark left → bright right


def dicom_bytes(pixels: np.ndarray, **tags) -> bytes:
    """A minimal valid DICOM file (Secondary Capture, explicit little endian) holding ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


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


def test_colour_and_multi_frame_dicoms(tmp_path):
    """An 8-bit colour DICOM (a fundus photo from a camera's PACS link) gives exactly the pixels its JPEG
    would — not stretched to the full range; a multi-frame file its first frame."""
    dim = np.dstack([RAMP, RAMP[:, ::-1], np.full_like(RAMP, 90)]) // 2 + 20  # 20..146: a dim photo
    np.testing.assert_array_equal(decode_image(dicom_bytes(dim), "colour.dcm"), dim)
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


def gdcm_transcoded(data: bytes, syntax: str, tmp_path) -> bytes:
    """``data`` recompressed by GDCM (a real encoder, as a PACS would store it) into transfer syntax ``syntax``."""
    gdcm = pytest.importorskip("gdcm", reason="GDCM (medclf[dicom]) is not installed")
    source, target = tmp_path / f"{syntax}.in.dcm", tmp_path / f"{syntax}.dcm"
    source.write_bytes(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return target.read_bytes()


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
