"""DICOM files as clinics store them, turned into the pixels a person would see on a viewer.

Optional: ``pip install 'medclf[dicom]'`` (pydicom, and GDCM for the compressed transfer syntaxes PACS use for
radiographs: JPEG Lossless, JPEG-LS, JPEG 2000). Grey images go through the modality LUT (rescale slope and
intercept), then the file's own VOI LUT or window — linear or sigmoid, applied by pydicom as the standard
defines them — or, when it has neither, the values' full range; MONOCHROME1 images, where high values are dark,
are inverted. Colour images are already display values: 8-bit ones pass through unchanged (a fundus photo
stored as DICOM gives the pixels its JPEG would). Multi-frame files give their first frame, and only that
frame is decoded; enhanced objects' rescale and window are read from that frame's functional groups.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable

import numpy as np

from .preprocess import MAX_PIXELS, ImageError

DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble
JPEG_8_BIT = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # JPEG Baseline, Extended (8-bit samples here)
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")  # lossless only, and lossy
# The colours of 8-bit JPEG frames decoded as .jpg files are (YBR: JFIF's YCbCr). Not RGB: the standard's RGB
# frames hold R, G, B untransformed, which libjpeg reads as YCbCr without a marker saying otherwise (86 grey levels
# off on average); Pillow, told by pydicom, reads them right.
JPEG_COLOURS = ("MONOCHROME1", "MONOCHROME2", "YBR_FULL_422", "YBR_FULL")
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")  # integer, and float images (parametric maps)
# The transfer syntax of a data set without a meta header, by (implicit VR, little endian) as pydicom read it
_UNCOMPRESSED = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
                 (False, False): "1.2.840.10008.1.2.2"}
# Enhanced objects' per-frame functional groups that hold what classic objects keep at the top level
FRAME_FUNCTIONAL_GROUPS = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
                           "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction")}

# pydicom warns on stderr about what vendors' files often get slightly wrong (a UID with a stray space, an
# unexpected VR). A file that decodes has nothing to report, and one that does not gets its one line.
warnings.filterwarnings("ignore", module=r"pydicom\.")


def optional_decoders() -> str:
    """Which optional DICOM decoders this Python has (pydicom, GDCM, pylibjpeg and its plugins), found without
    importing them: what a file decodes to — or whether it decodes — depends on them, so caches of decoded
    images are keyed by this too (installing the decoder a refusal named must read those files next time)."""
    import importlib.util

    names = ("pydicom", "gdcm", "pylibjpeg", "openjpeg", "libjpeg", "rle")
    return ",".join(name for name in names if importlib.util.find_spec(name) is not None)


def is_dicom(data: bytes) -> bool:
    """DICOM by its content: ``DICM`` after the 128-byte preamble — or, as older software and some exports write
    them, no preamble: the file starts at its meta header (element (0002,0000) or (0002,0001), explicit VR) or
    straight at its data set's first element of group 0008 (ACR-NEMA style)."""
    return data[128:132] == DICOM_MAGIC or _starts_at_an_element(data)


def _starts_at_an_element(data: bytes) -> bool:
    if len(data) < 8:
        return False
    group, element = struct.unpack_from("<HH", data)
    if group == 0x0002:
        return element <= 1 and data[4:6] in (b"UL", b"OB")
    explicit = data[4:6].isalpha() and data[4:6].isupper()  # a VR's two letters, or an implicit VR's length
    return group == 0x0008 and element < 0x0100 and (explicit or struct.unpack_from("<I", data, 4)[0] < 1024)


def decode_dicom(data: bytes, source: str) -> np.ndarray:
    """uint8 HW (grey) or HWC RGB, as :func:`medclf.runtime.preprocess.decode_image` continues from."""
    try:
        import pydicom
    except ImportError:
        raise ImageError(source, "a DICOM file, but pydicom is not installed (pip install 'medclf[dicom]')") from None
    dataset = None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != DICOM_MAGIC)  # force: no preamble
        if "TransferSyntaxUID" not in dataset.file_meta:  # a bare data set: encoded as pydicom found it to be
            dataset.file_meta.TransferSyntaxUID = _UNCOMPRESSED[dataset.original_encoding]
        if len(dataset) == 0:  # pydicom drops the whole dataset where the file ends inside an element
            raise ImageError(source, "truncated DICOM (the file ends inside its data: copy it again)")
        return _displayed(dataset, source)
    except ImageError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged or unsupported files, at any step
        raise ImageError(source, _unreadable(exc, dataset)) from None


def _displayed(dataset, source: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, pixel_array

    if not any(tag in dataset for tag in PIXEL_TAGS):  # a PACS export holds reports, presentation states...
        kind = dataset.get("SOPClassUID")
        raise ImageError(source, f"a DICOM object without an image ({kind.name if kind else 'no SOP class'})")
    _first_frame_values(dataset)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if rows * columns > MAX_PIXELS:
        raise ImageError(source, f"image is {columns}x{rows} pixels, over the {MAX_PIXELS:,}-pixel limit")
    index = 0 if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else None
    syntax = dataset.file_meta.TransferSyntaxUID  # decode_dicom gives a bare data set the one pydicom read
    if syntax.is_compressed:
        pixels = _compressed_frame(dataset, index, source)
    else:
        pixels = pixel_array(dataset, index=index)
    if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":  # indices into the file's colour table
        return _palette_rgb(pixels, dataset)
    if pixels.ndim == 3:  # colour: already display values
        return pixels if pixels.dtype == np.uint8 else _scale(pixels, 0, 2 ** int(dataset.BitsStored) - 1)
    values = apply_modality_lut(pixels, dataset)  # integers stay integers: a VOI LUT indexes with them
    shown, low, high = _voi(values, dataset, pixels)
    grey = _scale(shown, low, high)
    return 255 - grey if _white_is_low(dataset) else grey


def _compressed_frame(dataset, index: int | None, source: str) -> np.ndarray:
    """The first frame of a compressed file, decoded where a damaged frame cannot take the process down: GDCM
    aborts the whole process (a C++ exception nothing catches) on some damaged JPEG and JPEG 2000 frames — a
    batch's answers lost, no file named. 8-bit JPEG frames go through the runtime's own JPEG decoder (which
    refuses lost data by name), JPEG 2000 and RGB JPEG frames through Pillow (which raises, or for a cut JPEG
    frame says nothing); GDCM decodes the rest (lossless JPEG, JPEG-LS, colour JPEG 2000 over 8 bits), its
    libjpeg's warnings listened for."""
    from pydicom.pixels import pixel_array

    syntax = dataset.file_meta.TransferSyntaxUID
    colours, samples = dataset.get("PhotometricInterpretation"), int(dataset.get("SamplesPerPixel", 1))
    if syntax in JPEG_8_BIT and int(dataset.BitsStored) <= 8 and not int(dataset.get("PixelRepresentation", 0)) \
            and colours in JPEG_COLOURS:
        return _jpeg_frame(dataset, index, source)
    if syntax in JPEG_8_BIT and colours == "RGB":  # untransformed R, G, B, which libjpeg takes for YCbCr
        plugin = "pillow"
    elif syntax in JPEG_2000 and _pillow_reads_jpeg_2000() and (samples == 1 or int(dataset.BitsStored) <= 8):
        plugin = "pillow"  # (not colour of more than 8 bits, which Pillow cannot decode and GDCM can)
    else:
        plugin = ""
    pixels, said = _with_stderr_caught(lambda: pixel_array(dataset, index=index, decoding_plugin=plugin))
    _refuse_lost_data(said, source, syntax)
    return pixels


def _jpeg_frame(dataset, index: int | None, source: str) -> np.ndarray:
    """An 8-bit JPEG frame as pydicom gives it (grey HW, or RGB), decoded as a .jpg file is; the size its
    header states (a bigger picture inside was decoded whole before it failed)."""
    import cv2
    from pydicom.encaps import get_frame

    from .jpeg import decode_jpeg

    frame = get_frame(dataset.PixelData, index or 0, number_of_frames=int(dataset.get("NumberOfFrames", 1) or 1))
    grey = int(dataset.SamplesPerPixel) == 1
    try:
        pixels = decode_jpeg(frame, source, "grey" if grey else "rgb")
    except ImageError as exc:  # "damaged JPEG, part of the picture is lost (...)": said of the DICOM
        said = f"damaged compressed DICOM ({_syntax_name(dataset)})"
        raise ImageError(source, exc.reason.replace("damaged JPEG", said, 1)) from None
    if pixels is None:  # what TurboJPEG leaves to OpenCV (stray bytes it will not pass)
        decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
        if decoded is None:
            raise ImageError(source, f"damaged compressed DICOM ({_syntax_name(dataset)}): its JPEG frame cannot be "
                                     "decoded")
        pixels = decoded if grey else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    pixels = pixels[:, :, 0] if grey and pixels.ndim == 3 else pixels
    if pixels.shape[:2] != (int(dataset.Rows), int(dataset.Columns)):
        raise ImageError(source, f"damaged compressed DICOM: its picture is {pixels.shape[1]}x{pixels.shape[0]} "
                                 f"pixels, its header says {dataset.Columns}x{dataset.Rows}")
    return pixels


def _syntax_name(dataset) -> str:
    return dataset.file_meta.TransferSyntaxUID.name


@functools.cache
def _pillow_reads_jpeg_2000() -> bool:
    try:
        from PIL import features
    except ImportError:
        return False
    return bool(features.check("jpg_2000"))


def _white_is_low(dataset) -> bool:
    """Whether the lowest values are shown white: MONOCHROME1, or a Presentation LUT Shape of INVERSE (PS3.3
    C.11.6; what a MONOCHROME1 file's shape must say, so it is inverted once)."""
    return dataset.get("PhotometricInterpretation") == "MONOCHROME1" or dataset.get("PresentationLUTShape") == "INVERSE"


_STDERR = threading.Lock()  # fd 2 is the process's: one decoding listens to it at a time
# How libjpeg's warnings begin (jerror.h): only such lines are the decoder's, not another thread's that mention it
LIBJPEG_WARNINGS = ("Corrupt JPEG data:", "Premature end of JPEG file", "Inconsistent progression sequence")


def _with_stderr_caught(decode: Callable[[], np.ndarray]) -> tuple[np.ndarray, str]:
    """``decode()``'s pixels, and what was printed on stderr meanwhile. GDCM's libjpeg decodes a JPEG frame whose
    data is cut short or garbled, fills the rest and only warns there ("Corrupt JPEG data: premature end of data
    segment"), naming no file."""
    with _STDERR, tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        terminal = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            pixels = decode()
        finally:
            os.dup2(terminal, 2)
            os.close(terminal)
        caught.seek(0)
        return pixels, caught.read().decode(errors="replace")


def _refuse_lost_data(said: str, source: str, syntax) -> None:
    """An ImageError where libjpeg's own warnings (its lines, as it words them) mean part of the picture is lost
    (the signs :mod:`.jpeg` refuses a .jpg for). Whatever else was printed meanwhile — another thread's line,
    medclf-run's error lines for other files — goes on to stderr either way."""
    from .jpeg import LOST_DATA

    lines = said.splitlines(keepends=True)
    lost = [line for line in lines if line.startswith(LIBJPEG_WARNINGS) and any(sign in line.lower()
                                                                                for sign in LOST_DATA)]
    if others := "".join(line for line in lines if line not in lost):
        sys.stderr.write(others)
    if lost:
        raise ImageError(source, f"damaged compressed DICOM ({syntax.name}), part of the picture is lost "
                                 f"({lost[0].strip()})")


def _palette_rgb(indices: np.ndarray, dataset) -> np.ndarray:
    """A PALETTE COLOR image (ultrasound, nuclear medicine, secondary captures) as its colours: the stored values
    index the file's red, green and blue tables, of 8 or 16 bits each (their descriptors' third value)."""
    from pydicom.pixels import apply_color_lut

    bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    return _scale(apply_color_lut(indices, dataset), 0, 2 ** bits - 1)


def _first_frame_values(dataset) -> None:
    """Enhanced (multi-frame) objects keep their rescale and window per frame, in functional groups; pydicom's
    LUT functions read them at the top level, so the first frame's values are copied there."""
    frames = [dataset[groups].value[0] for groups in ("PerFrameFunctionalGroupsSequence",
                                                       "SharedFunctionalGroupsSequence") if dataset.get(groups)]
    for frame in frames:
        for sequence, names in FRAME_FUNCTIONAL_GROUPS.items():
            values = frame[sequence].value[0] if frame.get(sequence) else {}
            for name in names:
                if name in values and name not in dataset:
                    setattr(dataset, name, values[name].value)


def _voi(values: np.ndarray, dataset, stored: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The values as the file says to show them, and the range they are shown in: its first VOI LUT (range
    0 to 2^bits - 1, the LUT's declared output) or window through pydicom (range: where the window function
    sends -inf and +inf), else the values' own range — without a CT's padding (``stored`` values equal to the
    file's PixelPaddingValue, which squeezed the body's contrast). A window pydicom refuses (width under 1)
    counts as none."""
    from pydicom.pixels import apply_voi_lut

    try:
        if "VOILUTSequence" in dataset:
            return apply_voi_lut(values, dataset), 0.0, float(2 ** _lut_bits(dataset) - 1)
        if "WindowCenter" in dataset and "WindowWidth" in dataset:
            with np.errstate(over="ignore"):  # the sigmoid's exp at ±inf: exactly its two ends
                low, high = apply_voi_lut(np.array([-np.inf, np.inf]), dataset)
            return apply_voi_lut(values.astype(np.float64), dataset), float(low), float(high)
    except (ValueError, TypeError, IndexError, AttributeError):
        pass
    shown = values
    if "PixelPaddingValue" in dataset:  # a CT's outside-the-body fill, far below air: not part of the range
        shown = values[stored != dataset.PixelPaddingValue]
    if not shown.size:
        shown = values
    if shown.dtype.kind == "f":  # a parametric map's NaN background is no part of the range (it was all of it)
        if not (shown := shown[np.isfinite(shown)]).size:
            return values, 0.0, 0.0
    return values, float(shown.min()), float(shown.max())


def _lut_bits(dataset) -> int:
    """The depth a VOI LUT's output holds: as its descriptor says, unless its entries stay far below that (a
    12-bit table declared 16 bits, as some vendors write: the film came out near black, 0-15 of 255; dcmtk's
    --ignore-voi-lut-depth) — then the depth of its largest entry, as a 16-bit PNG's is read."""
    from pydicom.pixels import apply_voi_lut

    from .preprocess import significant_bits

    count, first, declared = (int(value) for value in dataset.VOILUTSequence[0].LUTDescriptor)
    entries = apply_voi_lut(np.arange(first, first + (count or 65536)), dataset)  # its whole table
    return min(declared, significant_bits(entries)) if entries.size and entries.min() >= 0 else declared


def _unreadable(exc: Exception, dataset) -> str:
    """A compressed file without a decoder says what would read it (pydicom's list of plugins and the packages
    each needs); anything else gives pydicom's reason. :class:`ImageError` makes it one line."""
    message = str(exc)
    if "missing dependencies:" in message and dataset is not None:
        needs = "; ".join(line.strip() for line in message.split("missing dependencies:", 1)[1].splitlines()
                          if line.strip())
        hint = " (pip install 'medclf[dicom]' brings GDCM)" if "gdcm" in needs else ""
        return (f"compressed DICOM ({_syntax_name(dataset)}) and no decoder for it is "
                f"installed: {needs}{hint}")
    if "for samples with 12-bit precision" in message and dataset is not None:  # pydicom's GDCM plugin declines
        return (f"compressed DICOM ({_syntax_name(dataset)}) of 12-bit samples, which GDCM "
                "and Pillow do not decode: pip install pylibjpeg pylibjpeg-libjpeg (GPL-3.0), or store it "
                "uncompressed (gdcmconv --raw)")
    message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", message)  # Pillow names its buffer so
    return f"unreadable DICOM ({type(exc).__name__}: {message})"


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low`` → 0, ``high`` → 255, linearly (``low`` above ``high`` inverts: a decreasing VOI LUT)."""
    if high == low:
        return np.zeros(values.shape, np.uint8)
    scaled = np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    return np.rint(np.nan_to_num(scaled, nan=0.0) * 255).astype(np.uint8)  # NaN (outside a map's mask): black
