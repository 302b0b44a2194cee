"""DICOM files as clinics store them, turned into the grey pixels a person would see on a viewer.

Optional: ``pip install 'medclf[dicom]'`` (pydicom). Stored values become physical ones through the modality
LUT (rescale slope and intercept), the file's own window (centre/width) picks the range shown — or the full
range when it has none — and MONOCHROME1 images, where high values are dark, are inverted. Multi-frame files
give their first frame; colour (RGB) DICOMs pass through as colour.
"""

from __future__ import annotations

import io

import numpy as np

from .preprocess import MAX_PIXELS, ImageError

DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble


def is_dicom(data: bytes) -> bool:
    return data[128:132] == DICOM_MAGIC


def decode_dicom(data: bytes, source: str) -> np.ndarray:
    """uint8 HW (grey) or HWC RGB, as :func:`medclf.runtime.preprocess.decode_image` continues from."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise ImageError(source, "a DICOM file, but pydicom is not installed (pip install 'medclf[dicom]')") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        if rows * columns > MAX_PIXELS:
            raise ImageError(source, f"image is {columns}x{rows} pixels, over the {MAX_PIXELS:,}-pixel limit")
        pixels = dataset.pixel_array
    except ImageError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged or unsupported files
        raise ImageError(source, f"unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # colour: already display values
        return _scale(pixels.astype(np.float64), pixels.min(), pixels.max())
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    low, high = _window(dataset, values)
    grey = _scale(values, low, high)
    return 255 - grey if dataset.get("PhotometricInterpretation") == "MONOCHROME1" else grey


def _window(dataset, values: np.ndarray) -> tuple[float, float]:
    """The range to show: the file's first window (DICOM's linear VOI function), else the values' own range."""
    from pydicom.multival import MultiValue

    centre, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if centre is not None and width is not None:
        centre, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (centre, width))
        if width > 1:
            return centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    return float(values.min()), float(values.max())


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint(np.clip((values - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
