"""Decoding and resizing: every input a clinic has becomes the same uint8 RGB array, or one clear error."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from medclf.runtime.preprocess import (MAX_PIXELS, ImageError, Preprocess, decode_image, equalize, load_image, resize,
                                       significant_bits)
from medclf.runtime.stream import decoded


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def test_colour_png_decodes_to_rgb_order():
    bgr = np.zeros((8, 12, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    rgb = decode_image(encode(bgr))
    assert rgb.shape == (8, 12, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 200]


def test_grey_image_becomes_three_equal_channels():
    grey = np.arange(96, dtype=np.uint8).reshape(8, 12)
    rgb = decode_image(encode(grey))
    assert rgb.shape == (8, 12, 3)
    assert (rgb[..., 0] == grey).all() and (rgb[..., 1] == grey).all() and (rgb[..., 2] == grey).all()


def test_rgba_drops_alpha():
    bgra = np.full((8, 8, 4), 90, np.uint8)
    bgra[..., 3] = 0
    assert decode_image(encode(bgra)).shape == (8, 8, 3)


def test_16_bit_png_is_scaled_to_8_bits_over_the_full_range():
    wide = np.tile(np.array([0, 257, 65535], dtype=np.uint16), (8, 3))
    assert decode_image(encode(wide))[0, :3, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize("bits", [8, 10, 12, 14])
def test_16_bit_png_holding_fewer_bits_reads_over_their_range(bits):
    """A film saved as its raw detector values (0-4095 for 12 bits) reads as the same picture as its 8-bit
    version, not near black; the depth is the smallest of 8/10/12/14/16 bits that holds the brightest pixel."""
    picture = np.tile(np.arange(0, 256, 5, dtype=np.uint8), (8, 1))
    raw = np.rint(picture * (((1 << bits) - 1) / 255)).astype(np.uint16)
    assert significant_bits(raw) == bits
    assert np.abs(decode_image(encode(raw))[:, :, 0].astype(int) - picture).max() <= 1


def test_a_dark_16_bit_image_is_brightened_only_by_whole_depths():
    """Brightest pixel 3000: a 12-bit image (3000 of 4095 → 187), not stretched to its own peak."""
    raw = np.tile(np.array([0, 1500, 3000], np.uint16).repeat(3), (8, 1))
    assert significant_bits(raw) == 12
    assert decode_image(encode(raw))[0, ::3, 0].tolist() == [0, 93, 187]


def test_grey_models_get_one_channel():
    bgr = np.full((8, 10, 3), 128, np.uint8)
    assert decode_image(encode(bgr), color="grey").shape == (8, 10, 1)


def turned_clockwise(jpeg: bytes) -> bytes:
    """The JPEG with an EXIF tag saying "rotate 90° clockwise to view" (orientation 6)."""
    exif = (b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
            b"\x00\x00\x00\x00")
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    return jpeg[:2] + app1 + jpeg[2:]


def test_exif_orientation_is_applied():
    # An 8x16 (h x w) JPEG tagged "rotate 90° clockwise" must come out 16x8.
    assert decode_image(turned_clockwise(encode(np.zeros((8, 16, 3), np.uint8), ".jpg"))).shape[:2] == (16, 8)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is a text file, not a JPEG", "a text file, not an image"),
])
def test_bad_bytes_give_one_line_naming_the_file(data, reason):
    with pytest.raises(ImageError) as caught:
        decode_image(data, "scan 01.jpg")
    assert str(caught.value).startswith("scan 01.jpg: ")
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_truncated_jpeg_is_an_error_not_a_crash(blood_cell_images):
    data = blood_cell_images[0].read_bytes()
    with pytest.raises(ImageError, match="^cut.jpg: "):
        decode_image(data[: len(data) // 3], "cut.jpg")


def photo_png(blood_cell_images) -> bytes:
    return encode(cv2.imread(str(blood_cell_images[0])))


@pytest.mark.parametrize("damage, reason", [
    (lambda png: png[:len(png) // 2], "truncated PNG (the file ends inside its IDAT chunk)"),
    (lambda png: png[:-12], "truncated PNG (the file ends before its end chunk)"),
    (lambda png: png[:len(png) // 2] + bytes(200) + png[len(png) // 2 + 200:], "damaged PNG (its IDAT chunk fails"),
], ids=["cut", "no end", "zeroed"])
def test_a_damaged_png_is_refused_by_name_before_libpng_complains_anonymously(damage, reason, blood_cell_images,
                                                                              capfd):
    with pytest.raises(ImageError, match=r"^smear\.png: " + reason.replace("(", r"\(").replace(")", r"\)")):
        decode_image(damage(photo_png(blood_cell_images)), "smear.png")
    assert capfd.readouterr().err == ""


def test_pngs_with_every_depth_and_extra_chunks_still_decode(blood_cell_images):
    """The checksum walk accepts what encoders write: 16-bit, grey, alpha, text and trailing bytes after IEND."""
    from PIL import Image, PngImagePlugin

    image = cv2.imread(str(blood_cell_images[0]))
    for array in (image, image.astype(np.uint16) * 257, image[:, :, 0], np.dstack([image, image[:, :, :1]])):
        assert decode_image(encode(array)).shape == (240, 320, 3)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "slide 7")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", pnginfo=info)
    assert decode_image(buffer.getvalue() + b"trailing").shape == (240, 320, 3)


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    return (len(body).to_bytes(4, "big") + kind + body
            + (zlib.crc32(kind + body) if crc is None else crc).to_bytes(4, "big"))


def test_ancillary_chunks_libpng_would_warn_about_anonymously_are_not_passed_on(blood_cell_images, capfd):
    """A bad checksum on a text chunk, gamma after the image, an invalid sRGB intent: libpng prints one
    "libpng warning: ..." line per file on stderr, naming none. OpenCV ignores those chunks, so it does not
    get them; the pixels are those of the clean file, and transparency and EXIF orientation still count."""
    clean = photo_png(blood_cell_images)
    idat = clean.index(b"IDAT") - 4
    iend = clean.index(b"IEND") - 4
    noisy = (clean[:idat] + chunk(b"tEXt", b"Comment\x00slide 7", crc=1) + chunk(b"sRGB", b"\x09")
             + clean[idat:iend] + chunk(b"gAMA", (45455).to_bytes(4, "big")) + clean[iend:])
    assert (decode_image(noisy, "slide.png") == decode_image(clean)).all()
    assert capfd.readouterr().err == ""

    turned = clean[:idat] + chunk(b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
                                          b"\x00\x06\x00\x00\x00\x00\x00\x00") + clean[idat:]  # orientation 6
    assert decode_image(turned).shape == (320, 240, 3)
    from PIL import Image

    paletted, buffer = Image.open(blood_cell_images[0]).convert("P"), io.BytesIO()
    paletted.save(buffer, "PNG", transparency=3)  # a tRNS chunk
    assert b"tRNS" in buffer.getvalue()
    assert (decode_image(buffer.getvalue()) == np.asarray(paletted.convert("RGB"))).all()


def test_decompression_bomb_is_refused_before_decoding():
    header = encode(np.zeros((1, 1), np.uint8))
    huge = bytearray(header)
    huge[16:24] = (50_000).to_bytes(4, "big") + (50_000).to_bytes(4, "big")  # IHDR width, height
    assert 50_000 * 50_000 > MAX_PIXELS
    with pytest.raises(ImageError, match="pixel limit"):
        decode_image(bytes(huge), "bomb.png")


@pytest.mark.parametrize("setting, limit", [("1000", "1,000"), ("2KB", "2,048")])
def test_a_pixel_limit_the_user_set_is_the_one_medclf_checks_and_names(tmp_path, setting, limit):
    """OPENCV_IO_MAX_IMAGE_PIXELS set lower (a Jetson's memory) was OpenCV's alone: medclf's own PNG and JPEG
    checks, and every message, still said 100,000,000 (also for 2KB, which OpenCV reads as 2,048)."""
    done = run_on_scan(tmp_path, setting)
    assert done.returncode == 1 and f"image is 64x64 pixels, over the {limit}-pixel limit" in done.stderr


@pytest.mark.parametrize("setting", ["1K", "18446744073709551616"])
def test_a_pixel_limit_opencv_cannot_read_is_replaced_by_the_default_not_an_abort(tmp_path, setting):
    """OpenCV aborts the process as it loads on a setting it cannot read ("1K", " 1000", past 2**64 - 1): even
    --help died."""
    done = run_on_scan(tmp_path, setting)
    assert done.returncode == 0, done.stderr
    assert f"OPENCV_IO_MAX_IMAGE_PIXELS='{setting}' is no pixel count OpenCV reads (N, NKB or NMB); using 100000000" \
        in done.stderr


def run_on_scan(tmp_path, setting: str):
    import subprocess
    import sys

    image = tmp_path / "scan.png"
    cv2.imwrite(str(image), np.zeros((64, 64), np.uint8))
    return subprocess.run([sys.executable, "-m", "medclf.runtime.cli", str(image)], capture_output=True, text=True,
                          env=os.environ | {"OPENCV_IO_MAX_IMAGE_PIXELS": setting}, timeout=120)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 40_000), (300, 7)])
def test_an_image_with_a_side_under_8_pixels_is_refused_not_stretched_into_a_flat_guess(height, width):
    with pytest.raises(ImageError, match=rf"^pixel.png: image is {width}x{height} pixels: too small to classify"):
        decode_image(encode(np.full((height, width), 128, np.uint8)), "pixel.png")


def test_the_smallest_images_models_are_trained_on_still_decode():
    assert decode_image(encode(np.zeros((8, 8), np.uint8))).shape == (8, 8, 3)
    assert decode_image(encode(np.zeros((28, 28), np.uint8))).shape == (28, 28, 3)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match="nothere.jpg: No such file"):
        load_image(tmp_path / "nothere.jpg", Preprocess(8, 8))
    (tmp_path / "scan.jpg").symlink_to(tmp_path / "gone" / "scan.jpg")  # a dataset of links, copied without them
    with pytest.raises(ImageError, match=f"scan.jpg: a link to {tmp_path}/gone/scan.jpg, which does not exist$"):
        load_image(tmp_path / "scan.jpg", Preprocess(8, 8))


def as_unprivileged_user(task):
    """``task()`` run where file permissions apply: here, or, for root (whom they do not stop), in a forked
    child that drops to uid/gid 65534 ("nobody") first. Returns what ``task`` returned, or its error text."""
    if os.geteuid() != 0:
        return task()
    read, write = os.pipe()
    if (pid := os.fork()) == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps(task()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_an_unreadable_file_is_one_error_and_the_stream_goes_on(blood_cell_images):
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)  # traversable by the unprivileged user
        good, locked = folder / "good.jpeg", folder / "locked.jpeg"
        shutil.copyfile(blood_cell_images[0], good)
        shutil.copyfile(blood_cell_images[0], locked)
        good.chmod(0o644)
        locked.chmod(0o000)
        paths = [str(locked), str(good)]
        results = as_unprivileged_user(
            lambda: [[path, image is not None, error] for path, image, error in decoded(paths, Preprocess(32, 32))])
    finally:
        shutil.rmtree(folder)
    assert results == [[str(locked), False, "Permission denied"], [str(good), True, None]]


def test_resize_stretches_to_the_model_shape_in_uint8():
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = resize(image, Preprocess(96, 128))
    assert out.shape == (96, 128, 3) and out.dtype == np.uint8


def test_preprocess_round_trips_through_json():
    spec = Preprocess(160, 120, color="grey", crop="centre", crop_fraction=0.8, clahe=True, shrink_jpeg=True,
                      shrink_all=True)
    assert Preprocess.from_json(spec.to_json()) == spec


def test_models_exported_before_clahe_and_jpeg_shrinking_existed_load_without_them():
    old = Preprocess.from_json('{"height": 8, "width": 8}')
    assert old.clahe is False and old.shrink_jpeg is False and old.shrink_all is False


def test_clahe_spreads_a_low_contrast_radiograph_and_keeps_colour_hues(chest_xray):
    xray = next((chest_xray / "test" / "NORMAL").iterdir())
    flat = (load_image(xray, Preprocess(128, 128, color="grey")) // 4 + 100).astype(np.uint8)  # washed out
    equalized = equalize(flat)
    assert equalized.shape == flat.shape and equalized.std() > 1.5 * flat.std()
    colour = equalize(np.repeat(flat, 3, axis=2)).astype(int)
    assert np.abs(colour - colour[:, :, :1]).max() <= 2  # a grey picture stays grey (Lab rounding aside)
    on = load_image(xray, Preprocess(128, 128, color="grey", clahe=True))
    assert not np.array_equal(on, load_image(xray, Preprocess(128, 128, color="grey")))


@pytest.mark.parametrize("kwargs", [{"height": 0, "width": 5}, {"height": 5, "width": 5, "color": "cmyk"},
                                    {"height": 5, "width": 5, "interpolation": "area"}])
def test_invalid_preprocess_is_refused(kwargs):
    with pytest.raises(ValueError):
        Preprocess(**kwargs)


def test_stain_crop_centres_on_the_purple_nucleus():
    smear = np.full((240, 320, 3), (230, 200, 210), np.uint8)  # pale pink background, RGB
    smear[40:70, 250:290] = (120, 60, 170)  # a purple nucleus near the top right
    spec = Preprocess(64, 64, crop="stain", crop_fraction=0.5)
    from medclf.runtime.preprocess import crop, stain_centre

    assert stain_centre(smear) == (54, 269)  # median of rows 40-69, columns 250-289
    window = crop(smear, spec)
    assert window.shape == (120, 120, 3)
    assert (window == (120, 60, 170)).all(axis=2).sum() == 30 * 40  # the whole nucleus is inside
    assert resize(smear, spec).shape == (64, 64, 3)


def test_centre_crop_and_no_stain_fall_back_to_the_middle():
    from medclf.runtime.preprocess import crop, stain_centre

    plain = np.zeros((100, 200, 3), np.uint8)
    assert stain_centre(plain) == (50, 100)
    window = crop(np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3), Preprocess(8, 8, crop_fraction=0.5))
    assert window.shape == (50, 50, 3) and window[0, 0, 0] == (25 * 200 + 75) * 3


def test_stain_crop_needs_colour():
    with pytest.raises(ValueError, match="rgb"):
        Preprocess(8, 8, color="grey", crop="stain", crop_fraction=0.5)


@pytest.fixture(scope="module")
def big_radiograph(chest_xray) -> bytes:
    """A real film blown up to a camera-size 2400x2000 JPEG, as clinics export them."""
    film = cv2.imread(str(sorted((chest_xray / "test" / "NORMAL").iterdir())[0]))
    return encode(cv2.resize(film, (2400, 2000), interpolation=cv2.INTER_CUBIC), ".jpg")


@pytest.mark.parametrize("spec, scale", [
    (Preprocess(224, 224, shrink_jpeg=True), 8),  # 2000 // 8 = 250 ≥ 224
    (Preprocess(300, 224, shrink_jpeg=True), 4),  # the larger side of the input decides
    (Preprocess(224, 224, crop_fraction=0.4, shrink_jpeg=True), 2),  # an 800-pixel window: 400 ≥ 224, 200 < 224
    (Preprocess(1024, 1024, shrink_jpeg=True), 1),
    (Preprocess(224, 224), 1),  # models made before shrinking existed
])
def test_a_big_jpeg_is_decoded_only_as_large_as_the_models_window_needs(big_radiograph, spec, scale):
    from medclf.runtime.preprocess import jpeg_scale

    assert jpeg_scale(big_radiograph, spec) == scale
    assert jpeg_scale(encode(np.zeros((2000, 2400, 3), np.uint8)), spec) == 1  # PNG has no scaled decoding


def test_a_shrunk_decode_gives_the_model_nearly_the_pixels_of_a_full_one(big_radiograph, tmp_path):
    path = tmp_path / "film.jpg"
    path.write_bytes(big_radiograph)
    shrunk = load_image(path, Preprocess(224, 224, shrink_jpeg=True)).astype(np.int16)
    full = load_image(path, Preprocess(224, 224)).astype(np.int16)
    assert shrunk.shape == full.shape == (224, 224, 3)
    assert np.abs(shrunk - full).mean() < 2.0  # grey levels: an average of pixels vs bilinear samples


@pytest.mark.parametrize("color", ["rgb", "grey"])
def test_a_film_gives_the_model_the_same_pixels_as_png_or_dicom_as_it_does_as_jpeg(big_radiograph, tmp_path, color):
    """A PACS that exports PNG (or DICOM) serves a model trained on JPEGs: its films are shrunk by the JPEG's own
    scale, block-averaged, where bilinear resizing from the full size gave pixels up to 102 grey levels apart
    and a 96-px chest model called 10 of 200 films otherwise."""
    jpeg = tmp_path / "film.jpg"
    jpeg.write_bytes(big_radiograph)
    png = tmp_path / "film.png"
    png.write_bytes(encode(cv2.imdecode(np.frombuffer(big_radiograph, np.uint8), cv2.IMREAD_COLOR)))
    spec = Preprocess(96, 96, color=color, shrink_jpeg=True, shrink_all=True)
    served, trained_on = (load_image(path, spec).astype(np.int16) for path in (png, jpeg))
    assert np.abs(served - trained_on).max() <= 3 and np.abs(served - trained_on).mean() < 0.5
    before = load_image(png, dataclasses.replace(spec, shrink_all=False)).astype(np.int16)  # models made before
    assert np.abs(before - trained_on).max() > 10  # its files keep the pixels they were trained on
    film = cv2.imdecode(np.frombuffer(big_radiograph, np.uint8), cv2.IMREAD_COLOR)[:1001, :1003]  # no multiple of 8
    jpeg.write_bytes(encode(film, ".jpg"))
    png.write_bytes(encode(cv2.imdecode(np.frombuffer(jpeg.read_bytes(), np.uint8), cv2.IMREAD_COLOR)))
    served, trained_on = (load_image(path, spec).astype(np.int16) for path in (png, jpeg))
    assert np.abs(served - trained_on).max() <= 3  # was 40: the last partial block stretched the whole image


def test_a_shrunk_decode_still_turns_the_image_upright(big_radiograph):
    image = decode_image(turned_clockwise(big_radiograph), scale=8)
    assert image.shape[:2] == (300, 250)  # 2000x2400 → 250x300, turned
    grey = decode_image(big_radiograph, color="grey", scale=4)
    assert grey.shape == (500, 600, 1)


def reference_stain_centre(image: np.ndarray, min_pixels: int = 20) -> tuple[int, int]:
    """The stain centre's definition, in plain numpy: the median row and column of the bluish, not-pale pixels."""
    rgb = image.astype(np.int16)
    ys, xs = np.nonzero((rgb[..., 2] - rgb[..., 1] > 50) & (rgb[..., 0] < 200))
    if len(ys) < min_pixels:
        return image.shape[0] // 2, image.shape[1] // 2
    return int(np.median(ys)), int(np.median(xs))


def test_stain_centre_is_exactly_its_numpy_definition_on_random_images():
    from medclf.runtime.preprocess import stain_centre

    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = rng.integers(1, 60, 2)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        assert stain_centre(image, min_pixels=1) == reference_stain_centre(image, min_pixels=1)


def test_stain_centre_is_exactly_its_numpy_definition_on_real_smears(blood_cells):
    """The crop a trained blood-cell model saw must not move when the code that finds it gets faster."""
    from medclf.runtime.preprocess import read_image, stain_centre

    smears = sorted((blood_cells / "TEST").glob("*/*.jpeg"))[::5]
    assert len(smears) > 400
    for path in smears:
        image = read_image(path)
        assert stain_centre(image) == reference_stain_centre(image), path


@pytest.mark.parametrize("interpolation", ["linear", "cubic", "nearest"])
def test_resizing_rounds_half_to_even_and_clips_like_numpy(blood_cell_images, interpolation):
    """Resizing works in float (to match TensorFlow's); its return to uint8 is exactly numpy's rint-and-clip,
    including the overshoot of cubic filtering past 0 and 255 on sharp edges."""
    from medclf.runtime.preprocess import read_image

    spec = Preprocess(203, 97, interpolation=interpolation)
    edges = np.zeros((40, 40, 3), np.uint8)
    edges[::2] = 255  # stripes: cubic filtering rings below 0 and above 255 here
    for image in [read_image(path) for path in blood_cell_images] + [edges]:
        flags = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}[interpolation]
        floats = cv2.resize(image.astype(np.float32), (97, 203), interpolation=flags)
        assert np.array_equal(resize(image, spec), np.clip(np.rint(floats), 0, 255).astype(np.uint8))


def test_a_glob_that_matched_nothing_and_an_empty_path_say_so():
    for path, reason in (("", "an empty path"), ("/no/such/scans/*.dcm", "no file matches this pattern"),
                         ("/no/such/scan.dcm", "No such file or directory")):
        with pytest.raises(ImageError, match=f"^{re.escape(path)}: {reason}$"):
            load_image(path, Preprocess(8, 8))


def test_a_deep_grey_film_is_brought_to_8_bits_before_it_is_made_colour():
    """A 16-bit grey film for an RGB model was made three channels, then divided in float64: 25x its decoded
    size at the peak (5.4 GB for 10,000 x 10,000 pixels, 4 decoding threads at once on a Jetson). Counted with
    tracemalloc, which sees numpy's arrays (OpenCV's own are not counted): bytes per pixel at the peak."""
    import tracemalloc

    film = (np.arange(1000 * 1000, dtype=np.uint32).reshape(1000, 1000) % 4096).astype(np.uint16)  # 12 bits held
    data = encode(film)
    tracemalloc.start()
    try:
        image = decode_image(data, "film.png", "rgb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(image[..., 0], np.rint(film / (4095 / 255)).astype(np.uint8))
    assert (image[..., 0] == image[..., 2]).all()
    assert peak / film.size < 10  # was 48: two float64 copies of three channels
