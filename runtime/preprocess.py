"""Decoding and resizing: the one preprocessing path that training and serving share.

A model is only as good as the agreement between the pixels it was trained on and the pixels it is served.
So this module is the single place that turns file bytes into the uint8 NHWC arrays a medclf model takes:
training caches its datasets through :func:`load_image`, the runtime classifies through it, and the exported
ONNX file records the :class:`Preprocess` it was trained with (``medclf.preprocess`` metadata).

Normalisation (rescale, a backbone's ``preprocess_input``) is *not* here: it is a layer inside the model, so
the runtime does no float maths and nothing can drift.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from medclf import MAX_PIXELS  # set before cv2 loads: see medclf/__init__.py

from . import avif, tiff
from .inputs import IMAGE_EXTENSIONS, STDIN, folder_contents, list_images, piped_in

# OpenCV logs its decoders' complaints about a damaged file on stderr, several lines each (a cut TIFF: 2-6);
# the runtime reports each unusable file in one line of its own (ImageError), so OpenCV's log stays quiet.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

# Bumped whenever the same bytes may decode differently, so caches of decoded images are made again
# (2: damaged JPEGs and PNGs refused instead of decoded with grey fill; 3: images with a side under MIN_SIDE refused;
# 4: damaged compressed DICOMs refused, signed, 32-bit and float TIFFs scaled over the values they hold, a CT's
# padding left out of its range; 5: a TIFF's thumbnail page passed over, 16-bit and float 0-is-white TIFFs inverted,
# planar 16-bit ones refused, a PGM's stated depth, DICOM's Presentation LUT Shape INVERSE, AVIF's rotation; 6: 8-bit
# JPEG DICOM frames decoded as .jpg files are (RGB ones were 23 levels off), NaN left out of a float map's range,
# a PGM's depth found past CR-ended or long comments; 7: shrink_all's partial edge blocks, RGB JPEG DICOMs by
# Pillow, a VOI LUT declared deeper than its entries read over their depth).
DECODING_VERSION = 7
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"  # a JPEG's first two bytes: start of image
# Ancillary PNG chunks OpenCV reads (transparency, EXIF orientation, APNG's frames); it is given no others.
PNG_CHUNKS_READ = frozenset({b"tRNS", b"eXIf", b"acTL", b"fcTL", b"fdAT"})
MAX_FILE_BYTES = 1 << 30  # files larger than this are refused before reading them
# Images with a side shorter than this are refused: a 1x1 web beacon or a one-pixel strip, stretched to the model's
# input, is a flat colour the model would still put a confident label on (28x28 MedMNIST-sized images are fine).
MIN_SIDE = 8
MAX_SIDE = 1 << 20  # OpenCV's own limit on either side (CV_IO_MAX_IMAGE_WIDTH, _HEIGHT), whatever the pixel count
# A model's input, at most (a card saying 100000 had each image allocate 120 GB before failing, blamed on the image)
MAX_INPUT_SIDE = 8192
WRITTEN_AS = {"layout": "NHWC", "dtype": "uint8", "resize": "stretch"}  # what every Preprocess.to_json also says
BIT_DEPTHS = (8, 10, 12, 14, 16)  # what 16-bit files hold (significant_bits)
COLOR_DEPTHS = (np.uint8, np.uint16, np.float32)  # the depths OpenCV's cvtColor takes

# JPEG decoding at 1/2, 1/4, 1/8 scale, by the colour the model takes (OpenCV's reduced modes).
_REDUCED = {"rgb": {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8},
            "grey": {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                     8: cv2.IMREAD_REDUCED_GRAYSCALE_8}}
_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}
CROPS = ("centre", "stain")


class ImageError(ValueError):
    """An input that cannot be turned into a model input; ``str()`` is one line naming the file and why."""

    def __init__(self, source: str, reason: str) -> None:
        reason = " ".join(reason.split())  # libraries' messages can span lines (pydicom's list missing plugins)
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class Preprocess:
    """What a model expects: the data attached to the model, never re-guessed at serving time.

    ``height``/``width``: the model's input size; images are stretched to it (aspect not kept), as Keras'
    ``image_dataset_from_directory`` does. ``color``: ``"rgb"`` or ``"grey"``. ``interpolation``: the OpenCV
    filter, applied on float32 so it matches TensorFlow's bilinear resize to a hundredth of a grey level.
    ``crop_fraction`` < 1 first cuts a square window, that fraction of the shorter side, centred on the image
    (``crop="centre"``, as timm's ``crop_pct``) or on the stained nucleus of a Wright/Giemsa blood smear
    (``crop="stain"``), so the model looks at the cell rather than the red cells around it. ``clahe``
    equalises local contrast (CLAHE, on the lightness of colour images) after resizing, as radiograph
    pipelines do, so exposure differences between machines matter less. ``shrink_jpeg`` decodes a JPEG at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, :func:`jpeg_scale`) when the window the model looks at stays
    at least its input size: a 2400x2000 radiograph decodes and resizes ~6x faster, each pixel an average of
    the original's instead of bilinear resizing's sparse samples. ``shrink_all`` shrinks an image of any other
    format (PNG, TIFF, DICOM...) by the same rule, averaging each block of pixels (:func:`shrunk`), so a film
    gives the model the same pixels as JPEG or as PNG: without it a 96-px chest model trained on JPEGs called 10
    of 200 films otherwise when they came as PNGs of the very same pixels, and found 77 unlike its training
    images instead of 7. Both off in files written before they existed, so those models keep the pixels they
    were trained on.
    """

    height: int
    width: int
    color: str = "rgb"
    interpolation: str = "linear"
    crop: str = "centre"
    crop_fraction: float = 1.0
    clahe: bool = False
    shrink_jpeg: bool = False
    shrink_all: bool = False

    def __post_init__(self) -> None:
        if not (1 <= self.height <= MAX_INPUT_SIDE and 1 <= self.width <= MAX_INPUT_SIDE):
            raise ValueError(f"image size must be 1 to {MAX_INPUT_SIDE} pixels a side, got {self.height}x{self.width}")
        if self.color not in ("rgb", "grey"):
            raise ValueError(f"color must be 'rgb' or 'grey', got {self.color!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop not in CROPS or not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop must be one of {CROPS} with 0 < crop_fraction <= 1, got "
                             f"{self.crop!r}, {self.crop_fraction}")
        if self.crop == "stain" and self.color != "rgb":
            raise ValueError("crop='stain' finds the nucleus by its colour: it needs color='rgb'")

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """The per-image input shape, HWC."""
        return (self.height, self.width, self.channels)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), **WRITTEN_AS})

    @classmethod
    def from_json(cls, text: str) -> "Preprocess":
        """The preprocessing :meth:`to_json` wrote. A field it does not know is refused, not dropped: a
        ``"scale": 0.0039`` written by hand for a model trained on ``x / 255`` was ignored, and its export
        verified against the same unscaled pixels, agreeing 100% with a model that then served 44% of its calls."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing must be a JSON object, not {type(data).__name__}")
        if unknown := sorted(set(data) - {field.name for field in fields(cls)} - set(WRITTEN_AS)):
            known = ", ".join([field.name for field in fields(cls)] + list(WRITTEN_AS))
            raise ValueError(f"unknown preprocessing field {unknown[0]!r} (medclf's are {known}; "
                             "scaling and normalisation belong inside the model, as a Rescaling layer)")
        if written := {key: data[key] for key in WRITTEN_AS if key in data and data[key] != WRITTEN_AS[key]}:
            raise ValueError(f"medclf models take {WRITTEN_AS}, not {written}")
        flags = {name: data.get(name, False) for name in ("clahe", "shrink_jpeg", "shrink_all")}
        if not all(isinstance(flag, bool) for flag in flags.values()):  # bool("false") is True
            raise ValueError(f"clahe, shrink_jpeg and shrink_all must be JSON true or false, not {flags}")
        return cls(height=int(data["height"]), width=int(data["width"]), color=data.get("color", "rgb"),
                   interpolation=data.get("interpolation", "linear"), crop=data.get("crop", "centre"),
                   crop_fraction=float(data.get("crop_fraction", 1.0)), **flags)


def decode_image(data: bytes, source: str = "<bytes>", color: str = "rgb", scale: int = 1) -> np.ndarray:
    """Decode image bytes to uint8 HWC RGB (or HW1 grey), whatever the file's depth and channels.

    EXIF orientation is applied; alpha is dropped; 16-bit images are scaled to 8 bits over the range of the
    bit depth they hold (:func:`significant_bits`);
    DICOM goes through its modality LUT and window (:mod:`medclf.runtime.dicom`). ``scale`` 2, 4 or 8 decodes
    a JPEG at that fraction of its size (:func:`jpeg_scale` says when that is safe).
    """
    if not data:
        raise ImageError(source, "empty file")
    try:
        image = _decode(data, source, color, scale)
    except ImageError:
        raise
    except Exception as exc:  # a decoder library failing in a way nobody foresaw: this file's error, not the batch's
        raise ImageError(source, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    height, width = (side * scale for side in image.shape[:2])
    if min(height, width) < MIN_SIDE:
        raise ImageError(source, f"image is {width}x{height} pixels: too small to classify (a side under {MIN_SIDE})")
    return image


def _decode(data: bytes, source: str, color: str, scale: int) -> np.ndarray:
    from .dicom import decode_dicom, is_dicom  # here, not at the top: these modules import this one
    from .jpeg import decode_jpeg

    if is_dicom(data):
        return _to_8_bits(_rgb_to_bgr(decode_dicom(data, source)), color)
    _refuse_huge(data, source)
    if data[:2] == JPEG_SOI and (image := decode_jpeg(data, source, color, scale)) is not None:
        return image
    if data[:8] == PNG_SIGNATURE:
        data = checked_png(data, source)
    buffer = np.frombuffer(data, dtype=np.uint8)
    flags = _REDUCED[color].get(scale, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)  # keeps 16-bit; EXIF applied
    page, index = _tiff_page(data, source) if tiff.is_tiff(data) else (None, 0)
    try:
        image = cv2.imdecode(buffer, flags) if not index else _decoded_page(buffer, flags, index)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):  # OpenCV read the header of a format medclf does not parse
            raise ImageError(source, f"image is over the {MAX_PIXELS:,}-pixel limit (its header says so)") from None
        if "CV_IO_MAX_IMAGE_WIDTH" in str(exc) or "CV_IO_MAX_IMAGE_HEIGHT" in str(exc):
            raise ImageError(source, f"image has a side over OpenCV's {MAX_SIDE:,}-pixel limit (its header says so)"
                             ) from None
        if "size.width > 0" in str(exc) or "size.height > 0" in str(exc):  # a size past 2^31: read as negative
            raise ImageError(source, "damaged header (the image size it states is impossible)") from None
        raise ImageError(source, f"cannot decode image ({exc.err or exc})") from None
    if image is None:
        from .sniff import unreadable_reason  # only for files that fail

        raise ImageError(source, unreadable_reason(data))
    if avif.is_heif(data):  # OpenCV decodes the stored pixels; the file says how they are to be turned
        image = avif.shown_as_meant(image, data)
    if page is not None and tiff.zero_is_white(page):
        image = _inverted(image, page.bits)
    if (maxval := _netpbm_maxval(data)) and maxval != np.iinfo(image.dtype).max:  # its depth, said: not guessed
        return _to_color(np.rint(np.minimum(image, maxval) * (255 / maxval)).astype(np.uint8), color)
    if image.dtype not in COLOR_DEPTHS:  # 32-bit integer or 64-bit float TIFFs: OpenCV converts colours of these only
        image = _to_uint8(image)
    return _to_8_bits(image, color)


def _tiff_page(data: bytes, source: str) -> tuple[tiff.Page | None, int]:
    """The TIFF page to classify (see :mod:`.tiff`) and its index; refused where OpenCV would misread it."""
    found = tiff.shown_page(data)
    if found is None:
        return None, 0
    index, page = found
    if tiff.planes_unreadable(page):
        raise ImageError(source, f"{page.bits}-bit TIFF stored one plane per colour, which OpenCV misreads: "
                                 "save it with the colours interleaved (tifffile: planarconfig='contig')")
    return page, index


def _decoded_page(buffer: np.ndarray, flags: int, index: int) -> np.ndarray | None:
    ok, pages = cv2.imdecodemulti(buffer, flags, None, (index, index + 1))  # that page alone
    return pages[0] if ok and pages else None


def _netpbm_maxval(data: bytes) -> int | None:
    """The largest value a grey or colour PGM/PPM/PNM's header says it holds (4095: a 12-bit film), or None for
    other files. Comments (``# ...``) may stand between the header's numbers."""
    if data[:2] not in (b"P2", b"P3", b"P5", b"P6"):
        return None
    header = re.sub(rb"#[^\r\n]*", b" ", data[2:65536]).split(maxsplit=3)  # comments end at CR too, and run long
    return int(header[2]) if len(header) > 3 and header[2].isdigit() and 0 < int(header[2]) < 1 << 16 else None


def _inverted(image: np.ndarray, bits: int) -> np.ndarray:
    """A grey image whose 0 is white, as one whose 0 is black: over its bit depth, a float 0-1 image over that,
    other values over the range they hold."""
    if np.issubdtype(image.dtype, np.unsignedinteger):  # a 12-bit film in 16 bits: over 12, as it is read
        held = significant_bits(image) if image.dtype == np.uint16 else min(bits, 8 * image.itemsize)
        return (((1 << held) - 1) - image.astype(np.int64)).astype(image.dtype)
    low, high = np.nanmin(image), np.nanmax(image)
    if np.issubdtype(image.dtype, np.floating) and low >= 0 and high <= 1:
        return 1 - image
    return (low + high - image.astype(np.float64)).astype(image.dtype)


def checked_png(data: bytes, source: str) -> bytes:
    """``data`` as OpenCV should get it, once the PNG is known whole: refused, naming the file, when it is cut
    short or its image chunks fail their checksum (libpng would refuse it too, but first print "libpng error:
    IDAT: CRC error" on stderr, naming no file); and without the ancillary chunks OpenCV ignores — colour
    profiles, gamma, text, resolution — which libpng still checks, warning as anonymously about any that is
    damaged, invalid or out of place ("libpng warning: iCCP: known incorrect sRGB profile", common in files
    saved by older image editors: one line per file on a folder of thousands). The pixels are the same."""
    view, position = memoryview(data), 8
    kept = [view[:8]]
    while position + 12 <= len(data):
        length = int.from_bytes(view[position:position + 4], "big")
        kind, end = bytes(view[position + 4:position + 8]), position + 12 + length
        name = kind.decode("latin-1")
        if end > len(data):
            raise ImageError(source, f"truncated PNG (the file ends inside its {name} chunk)")
        if kind[:1].isupper() and zlib.crc32(view[position + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            raise ImageError(source, f"damaged PNG (its {name} chunk fails its checksum)")
        if kind[:1].isupper() or kind in PNG_CHUNKS_READ:
            kept.append(view[position:end])
        if kind == b"IEND":
            return data if sum(map(len, kept)) == end else b"".join(kept)
        position = end
    raise ImageError(source, "truncated PNG (the file ends before its end chunk)")


def jpeg_scale(data: bytes, preprocess: Preprocess) -> int:
    """1, 2, 4 or 8: the largest JPEG decoding scale that still leaves the model's window (the crop, or the
    whole image) at least as large as its input on both sides, whichever way EXIF turns the image."""
    size = _declared_size(data) if preprocess.shrink_jpeg and data[:2] == JPEG_SOI else None
    return 1 if size is None else _shrink_scale(size, preprocess)


def _shrink_scale(size: tuple[int, int], preprocess: Preprocess) -> int:
    """8, 4, 2 or 1: the largest that leaves the window over an image of ``size`` at least the model's input."""
    window = preprocess.crop_fraction * min(size)
    return next((scale for scale in (8, 4, 2) if window // scale >= max(preprocess.height, preprocess.width)), 1)


def shrunk(image: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """An image decoded at its own size, shrunk as a JPEG of that size is decoded (``shrink_all``): by the same
    2, 4 or 8, to the same size (rounded up, as libjpeg does), each pixel the average of its block — which is
    what libjpeg's DCT scaling computes, where bilinear resizing from the full size samples a few pixels."""
    if not (preprocess.shrink_jpeg and preprocess.shrink_all):
        return image
    height, width, channels = image.shape
    if (scale := _shrink_scale((height, width), preprocess)) == 1:
        return image
    bottom, right = -height % scale, -width % scale  # a partial block at an edge: its edge pixels repeated, as a
    if bottom or right:  # JPEG encoder fills its last blocks (else INTER_AREA stretched: up to 116 levels off)
        image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REPLICATE)
    smaller = cv2.resize(image, (image.shape[1] // scale, image.shape[0] // scale), interpolation=cv2.INTER_AREA)
    return smaller.reshape(smaller.shape[0], smaller.shape[1], channels)  # OpenCV drops a grey image's axis


def resize(image: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Crop (if the model asks), resize and equalise (if it asks) one decoded HWC uint8 image to the model's
    input shape."""
    image = crop(image, preprocess)
    target = (preprocess.width, preprocess.height)
    if image.shape[:2] != (preprocess.height, preprocess.width):
        interpolation = _INTERPOLATIONS[preprocess.interpolation]
        resized = cv2.resize(image.astype(np.float32), target, interpolation=interpolation)
        image = cv2.add(resized, 0.0, dtype=cv2.CV_8U)  # round half to even and clip to 0-255, as np.rint + clip
    image = image.reshape(preprocess.shape)
    return equalize(image) if preprocess.clahe else image


def equalize(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on an HWC uint8 image: on grey directly, on the L channel of Lab for colour (hues unchanged)."""
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    if image.shape[2] == 1:
        return clahe.apply(image[:, :, 0])[:, :, None]
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = clahe.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def crop(image: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """The square window the model looks at; the whole image when ``crop_fraction`` is 1."""
    if preprocess.crop_fraction >= 1.0:
        return image
    height, width = image.shape[:2]
    side = max(1, round(preprocess.crop_fraction * min(height, width)))
    cy, cx = stain_centre(image) if preprocess.crop == "stain" else (height // 2, width // 2)
    top = min(max(cy - side // 2, 0), height - side)
    left = min(max(cx - side // 2, 0), width - side)
    return image[top:top + side, left:left + side]


def stain_centre(image: np.ndarray, min_pixels: int = 20) -> tuple[int, int]:
    """(row, column) of the stained nucleus: the median of pixels far bluer than green and not pale red.

    In Wright/Giemsa smears that is the white cell's nucleus (purple), not the pink red cells or the light
    background; the median ignores a stray platelet. No such pixels: the image centre. Written with OpenCV,
    which releases the GIL, and medians read off per-row and per-column counts: 5x faster than the numpy
    ``np.median(np.nonzero(mask))`` it equals, and it was half of a blood-smear image's decoding time.
    """
    red, green, blue = cv2.split(image)
    bluish = cv2.threshold(cv2.subtract(blue, green), 50, 1, cv2.THRESH_BINARY)[1]  # blue - green > 50
    not_pale = cv2.threshold(red, 199, 1, cv2.THRESH_BINARY_INV)[1]  # red < 200
    mask = cv2.bitwise_and(bluish, not_pale)
    rows = cv2.reduce(mask, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    count = int(rows.sum())
    if count < min_pixels:
        return image.shape[0] // 2, image.shape[1] // 2
    columns = cv2.reduce(mask, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    return _median_position(rows, count), _median_position(columns, count)


def _median_position(counts: np.ndarray, total: int) -> int:
    """int(np.median(positions)) for ``counts[i]`` pixels at position i: the middle one or two of them."""
    low, high = np.searchsorted(np.cumsum(counts), [(total - 1) // 2, total // 2], side="right")
    return int(low + high) // 2


def read_image(path: str | os.PathLike[str], color: str = "rgb") -> np.ndarray:
    """Read and decode one file at its own size, HWC uint8; an unreadable file is an :class:`ImageError`."""
    return decode_image(read_bytes(path), str(path), color)


def load_image(path: str | os.PathLike[str], preprocess: Preprocess) -> np.ndarray:
    """Read, decode and resize one file: the model input for one image, HWC uint8 (RGB, or grey)."""
    return image_from_bytes(read_bytes(path), preprocess, str(path))


def image_from_bytes(data: bytes, preprocess: Preprocess, source: str = "<bytes>") -> np.ndarray:
    """A file's bytes (an upload, a DICOMweb instance) → the model input, exactly as :func:`load_image` makes it
    from a file: ``decode_image`` + ``resize`` alone skip a large JPEG's scaled decoding and answer otherwise
    (0.11 of probability on an upscaled smear). ``source`` names it in an :class:`ImageError`."""
    scale = jpeg_scale(data, preprocess)
    image = decode_image(data, source, preprocess.color, scale)
    return resize(shrunk(image, preprocess) if scale == 1 else image, preprocess)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes; only regular files are opened (a FIFO or device would block or never end), and none
    over MAX_FILE_BYTES — or, for ``-`` (:data:`~.inputs.STDIN`), what was piped in. Failures are
    :class:`ImageError`."""
    try:
        if str(path) == STDIN:
            if len(data := piped_in(MAX_FILE_BYTES)) > MAX_FILE_BYTES:
                raise ImageError(STDIN, f"more than {MAX_FILE_BYTES:,} bytes piped in, over the limit")
            return data
        if "\0" in os.fspath(path):  # no file has such a name: a worklist read in an encoding it is not in
            raise ImageError(str(path), "not a usable file name (it holds a NUL byte)")
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(str(path), _folder_said(path))
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(str(path), "not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(str(path), f"file is {info.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(str(path), _missing(str(path)) or exc.strerror or str(exc)) from None
    except OSError as exc:
        raise ImageError(str(path), exc.strerror or str(exc)) from None


def _folder_said(path: str | os.PathLike[str]) -> str:
    """Why a folder given as an input was not classified: it holds no image, or cannot even be listed."""
    try:
        os.listdir(path)
    except OSError as exc:
        return f"a folder that cannot be listed ({exc.strerror or exc})"
    if images := list_images(path):  # given to Classifier.classify, which takes files (medclf-run lists folders)
        return f"a folder of {len(images)} image{'s' if len(images) > 1 else ''}, not an image: list its files " \
            "(medclf.runtime.inputs.expand_inputs lists them as medclf-run does)"
    return f"no image in this folder ({folder_contents(path)}; medclf reads {' '.join(sorted(IMAGE_EXTENSIONS))} " \
        "and DICOM)"


def _missing(path: str) -> str | None:
    """Why ``path`` names no file when the system's "No such file or directory" says less: it is empty, a glob
    that matched nothing (passed on as given), or a link whose file is gone (a dataset copied without it)."""
    import glob  # here, not at the top: only a missing file needs it

    if not path:
        return "an empty path"
    if os.path.islink(path):
        return f"a link to {os.readlink(path)}, which does not exist"
    if not glob.has_magic(path):
        return None
    if matches := glob.glob(path, recursive=True):  # given to Classifier.classify, which takes files
        return f"a pattern matching {len(matches)} file{'s' if len(matches) > 1 else ''}, not a file: expand it " \
            "(medclf.runtime.inputs.expand_inputs expands patterns as medclf-run does)"
    return "no file matches this pattern"


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV decodes to BGR and :func:`_to_color` expects that; DICOM colour comes as RGB."""
    return image[:, :, ::-1] if image.ndim == 3 else image


def _to_color(image: np.ndarray, color: str) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if color == "grey":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image[:, :, None]
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _to_8_bits(image: np.ndarray, color: str) -> np.ndarray:
    """A decoded BGR or grey image of any depth as the model's uint8 ``color``: the depth reduced before
    channels are added (a 16-bit grey film made RGB first took 25x its decoded size at the peak: 5.4 GB for
    10,000 x 10,000 pixels), except where colour becomes grey, whose weights see the full depth as ever. Either
    order gives the same pixels otherwise: scaling is per value, over the whole image's range."""
    if image.ndim == 3 and image.shape[2] == 4:  # alpha: no part of the picture, nor of its range
        image = image[:, :, :3]
    if color == "grey" and image.ndim == 3 and image.shape[2] == 3:
        return _to_uint8(_to_color(image, color))
    return _to_color(_to_uint8(image), color)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """8 bits from any depth: unsigned 16-bit values — and wider or signed ones within that range, as a film's
    raw values are often saved — over the bit depth they hold (:func:`significant_bits`); floats in 0-1 (the
    usual float image) times 255; other values over the range they hold (a CT slice's negative units, a float
    TIFF of raw values), as a DICOM without a window is shown."""
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
        if image.min() >= 0 and image.max() <= 1:
            return np.rint(image * 255.0).astype(np.uint8)
    elif image.min() >= 0 and image.max() < 1 << 16:  # float32: a quarter of float64's memory, the same bytes out
        scaled = image.astype(np.float32) / np.float32(((1 << significant_bits(image)) - 1) / 255.0)  # 16 bits: / 257
        return np.rint(scaled, out=scaled).astype(np.uint8)
    low, high = float(image.min()), float(image.max())
    if high == low:
        return np.zeros(image.shape, np.uint8)
    return np.rint((image.astype(np.float64) - low) / (high - low) * 255).astype(np.uint8)


def significant_bits(image: np.ndarray) -> int:
    """The bit depth a 16-bit image holds: the smallest of 8, 10, 12, 14 and 16 bits whose range takes its
    brightest value. X-ray detectors store 10 to 14 bits, and a film saved as its raw values
    (``cv2.imwrite("film.png", dataset.pixel_array)``) keeps them in the low bits with nothing saying so: 0-4095
    of 65535, near black read as 16-bit. An image scaled to 16 bits reaches past 2^14 and reads as 16-bit.
    The depths are few and far apart so that the films of one source read alike: a 12-bit film reads as
    10-bit only if nothing in it is brighter than a quarter of its range."""
    peak = int(image.max())
    return next((bits for bits in BIT_DEPTHS if peak < 1 << bits), 16)


def _refuse_huge(data: bytes, source: str) -> None:
    """Read the declared size from the header where cheap (PNG, JPEG) and refuse absurd ones before decoding."""
    size = _declared_size(data)
    if size and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(source, f"image is {size[1]}x{size[0]} pixels, over the {MAX_PIXELS:,}-pixel limit")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG IHDR, a JPEG SOF marker or an AVIF's ``ispe``; None for other formats or damaged
    headers."""
    if avif.is_heif(data):
        return avif.declared_size(data)
    if data[:8] == PNG_SIGNATURE and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] != JPEG_SOI:
        return None
    for marker, start, _ in jpeg_segments(data):
        if is_start_of_frame(marker):  # its payload: precision, height, width
            if start + 5 >= len(data):
                return None
            return int.from_bytes(data[start + 1:start + 3], "big"), int.from_bytes(data[start + 3:start + 5], "big")
    return None


def is_start_of_frame(marker: int) -> bool:
    """Whether a JPEG marker starts a frame (SOF0-SOF15): DHT, JPG and DAC share the range and do not."""
    return 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, payload start, declared length)`` of each segment of a JPEG's marker chain, in order, until a
    byte that is not a marker (the compressed data, or a damaged header); ``0xFF`` fill bytes before a marker,
    which the standard allows, are passed over (read as a marker, they hid the frame's size from the
    pixel-limit check). Callers read what they need from ``data``; the declared length counts its own two
    bytes."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        while data[position + 1] == 0xFF and position + 5 <= len(data):  # fill bytes a marker may follow
            position += 1
        length = int.from_bytes(data[position + 2:position + 4], "big")
        yield data[position + 1], position + 4, length
        position += 2 + length
